"""Pinned git sources for Nix expressions built without flakes (`nix/pins.json`).

Each pin follows a ref (branch, tag or a fixed revision) of a git URL and records what
`nix-prefetch-git` prints for the revision it resolved to, so an expression can say
`fetchgit { inherit (pins.<name>) url rev sha256; }`:

    {"version": 1, "pins": {"<name>": {"ref": "main", "url": ..., "rev": ..., "date": ...,
     "path": ..., "sha256": <base32>, "hash": "sha256-<base64>", "fetchLFS": false,
     "fetchSubmodules": false, "deepClone": false, "leaveDotGit": false}}}

The hash is computed by `nix-prefetch-git` when it is on PATH; otherwise by git and Nix the
same way: the revision's tree checked out without `.git` (no export attributes, no LFS, no
submodules) and hashed as a NAR with `nix hash path`, so both give the same `sha256`. A pin
is up to date while its ref still resolves to the pinned revision; updating refetches only
pins whose ref moved.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import orjson

from pikaci.ids import ID_RULE, is_safe_id
from pikaci.payloads.nix import NIX_FEATURES
from pikaci.store import atomic_write_bytes

PINS_PATH = Path("nix") / "pins.json"
PINS_VERSION = 1
PREFETCH_PROGRAM = "nix-prefetch-git"
DEFAULT_REF = "HEAD"
COMMAND_TIMEOUT_SECS = 1800
_REV = re.compile(r"^[0-9a-f]{40}$")
# the fields nix-prefetch-git prints, in its order; a pin adds `ref`
PREFETCH_FIELDS = (
    "url",
    "rev",
    "date",
    "path",
    "sha256",
    "hash",
    "fetchLFS",
    "fetchSubmodules",
    "deepClone",
    "leaveDotGit",
)


class PinError(Exception):
    """A bad pins file, name, URL or ref, or a git/nix failure; one line."""


@dataclass(frozen=True)
class PinStatus:
    name: str
    pinned: str
    current: str

    @property
    def moved(self) -> bool:
        return self.pinned != self.current

    def line(self) -> str:
        if self.moved:
            return f"{self.name}: moved {self.pinned[:12]} -> {self.current[:12]}"
        return f"{self.name}: up to date at {self.pinned[:12]}"


# -- the pins file ----------------------------------------------------------------------------


def load_pins(path: Path) -> Dict[str, Dict[str, Any]]:
    """The pins of `path` ({} when it does not exist); PinError naming the file and field."""
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except orjson.JSONDecodeError as exc:
        raise PinError(f"{path}: invalid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("version") != PINS_VERSION:
        raise PinError(f'{path}: expected an object with "version": {PINS_VERSION}')
    pins = data.get("pins")
    if not isinstance(pins, dict):
        raise PinError(f"{path}: field `pins`: expected an object")
    for name, pin in pins.items():
        where = f"{path}: pin `{name}`"
        if not is_safe_id(name):
            raise PinError(f"{where}: a pin name is {ID_RULE}")
        if not isinstance(pin, dict):
            raise PinError(f"{where}: expected an object")
        for key in ("url", "ref", "rev", "sha256"):
            if not isinstance(pin.get(key), str) or not pin[key]:
                raise PinError(f"{where}: field `{key}`: expected a non-empty string")
        if not _REV.fullmatch(pin["rev"]):
            raise PinError(f"{where}: field `rev`: expected 40 hex digits, got {pin['rev']!r}")
    return pins


def save_pins(path: Path, pins: Mapping[str, Mapping[str, Any]]) -> None:
    data = {"version": PINS_VERSION, "pins": {name: dict(pins[name]) for name in sorted(pins)}}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")


# -- git and nix ------------------------------------------------------------------------------


def _run(argv: Sequence[str], what: str, extra_env: Optional[Mapping[str, str]] = None) -> str:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", **(extra_env or {})}  # never a prompt
    try:
        done = subprocess.run(
            list(argv),
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_SECS,
            check=False,
        )
    except FileNotFoundError:
        raise PinError(f"{what}: `{argv[0]}` not found on PATH") from None
    except subprocess.TimeoutExpired:
        raise PinError(f"{what}: `{argv[0]}` took longer than {COMMAND_TIMEOUT_SECS}s") from None
    if done.returncode != 0:
        detail = " ".join(done.stderr.split())[-300:]
        raise PinError(f"{what} failed: {detail}")
    return done.stdout


def resolve_ref(url: str, ref: str) -> str:
    """The revision `ref` names at `url` now (a full revision names itself)."""
    if _REV.fullmatch(ref):
        return ref
    listed = _run(["git", "ls-remote", "--", url, ref], f"git ls-remote {url} {ref}")
    found: Dict[str, str] = {}
    for line in listed.splitlines():
        rev, _, name = line.partition("\t")
        found[name] = rev
    # a branch, then a tag (its commit, when annotated), then whatever matched (HEAD)
    for name in (f"refs/heads/{ref}", f"refs/tags/{ref}^{{}}", f"refs/tags/{ref}", ref):
        if name in found:
            return found[name]
    raise PinError(f"ref `{ref}` not found at {url}")


def prefetch(url: str, rev: str) -> Dict[str, Any]:
    """nix-prefetch-git's record of `rev` of `url` (computed without it when it is absent)."""
    if shutil.which(PREFETCH_PROGRAM) is not None:
        out = _run([PREFETCH_PROGRAM, "--url", url, "--rev", rev, "--quiet"], PREFETCH_PROGRAM)
        try:
            printed = orjson.loads(out)
        except orjson.JSONDecodeError:
            raise PinError(f"{PREFETCH_PROGRAM}: printed no JSON for {url} {rev}") from None
        if not isinstance(printed, dict) or printed.get("rev") != rev:
            raise PinError(f"{PREFETCH_PROGRAM}: answered for another revision than {rev}")
        return {key: printed.get(key) for key in PREFETCH_FIELDS if key in printed}
    return _prefetch_with_git(url, rev)


def _prefetch_with_git(url: str, rev: str) -> Dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pikaci-pin-") as scratch:
        repo, tree = Path(scratch) / "repo.git", Path(scratch) / _checkout_name(url)
        git = ["git", "--git-dir", str(repo)]
        _run(["git", "init", "-q", "--bare", str(repo)], "git init")
        try:  # most servers hand out a revision by id; otherwise every ref is fetched
            _run([*git, "fetch", "-q", "--depth", "1", "--", url, rev], f"git fetch {url}")
        except PinError:
            _run([*git, "fetch", "-q", "--", url, "+refs/*:refs/pinned/*"], f"git fetch {url}")
        if _run([*git, "cat-file", "-t", rev], f"git cat-file {rev}").strip() != "commit":
            raise PinError(f"{rev} is not a commit of {url}")
        date = _run([*git, "log", "-1", "--format=%cI", rev], "git log").strip()
        env_index = {"GIT_INDEX_FILE": str(Path(scratch) / "index")}
        checkout = ["-c", "core.autocrlf=false", "-c", "core.symlinks=true"]
        _run([*git, *checkout, "read-tree", rev], "git read-tree", env_index)
        tree.mkdir()
        _run(
            [*git, "--work-tree", str(tree), *checkout, "checkout-index", "-a", "-f"],
            "git checkout-index",
            env_index,
        )
        nix_hash = ["nix", *NIX_FEATURES, "hash", "path", "--type", "sha256"]
        sha256 = _run([*nix_hash, "--base32", str(tree)], "nix hash path").strip()
        sri = _run([*nix_hash, "--sri", str(tree)], "nix hash path").strip()
    return {
        "url": url,
        "rev": rev,
        "date": date,
        "path": None,  # nix-prefetch-git's store path: not added to the store here
        "sha256": sha256,
        "hash": sri,
        "fetchLFS": False,
        "fetchSubmodules": False,
        "deepClone": False,
        "leaveDotGit": False,
    }


def _checkout_name(url: str) -> str:
    """nix-prefetch-git names the checkout after the repository (the name is not hashed)."""
    base = url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git") if url else ""
    return re.sub(r"[^A-Za-z0-9._+-]", "-", base) or "source"


# -- operations -------------------------------------------------------------------------------


def add_pin(path: Path, name: str, url: str, ref: str, say: Callable[[str], None]) -> None:
    if not is_safe_id(name):
        raise PinError(f"pin name {name!r}: a pin name is {ID_RULE}")
    if not url:
        raise PinError("URL: expected a git URL")
    pins = load_pins(path)
    if name in pins:
        raise PinError(f"{path}: pin `{name}` exists (`pikaci pin update {name}` refreshes it)")
    rev = resolve_ref(url, ref)
    say(f"{name}: {url} {ref} -> {rev[:12]}, hashing")
    pins[name] = {"ref": ref, **prefetch(url, rev)}
    save_pins(path, pins)
    say(f"{name}: pinned {rev[:12]} sha256 {pins[name]['sha256']}")


def check_pins(path: Path, names: Sequence[str] = ()) -> List[PinStatus]:
    pins = load_pins(path)
    unknown = [name for name in names if name not in pins]
    if unknown:
        raise PinError(f"{path}: no pin named {', '.join(unknown)}")
    chosen = list(names) or sorted(pins)
    return [
        PinStatus(name, pins[name]["rev"], resolve_ref(pins[name]["url"], pins[name]["ref"]))
        for name in chosen
    ]


def update_pins(path: Path, names: Sequence[str], say: Callable[[str], None]) -> List[PinStatus]:
    """Refetch the pins whose ref moved; the file is rewritten only when one did."""
    statuses = check_pins(path, names)
    pins = load_pins(path)
    for status in statuses:
        if not status.moved:
            say(status.line())
            continue
        pin = pins[status.name]
        say(f"{status.line()}, hashing")
        pins[status.name] = {"ref": pin["ref"], **prefetch(pin["url"], status.current)}
    if any(status.moved for status in statuses):
        save_pins(path, pins)
    return statuses


def pins_up_to_date(path: Path) -> bool:
    """doit's up-to-date check of `pin_sources`: no pin's ref moved (an error is not)."""
    try:
        return not any(status.moved for status in check_pins(path))
    except PinError:
        return False
