"""Nix on a builder: remote builds against an uploaded snapshot, batched validity queries,
payload manifests read over SSH, and closure copies with `nix copy --to ssh://…`.

The builder's store is `Builder.nix_store`: empty for its default store, or an absolute path
for a chroot store, whose files live under `<path>/nix/store` while store paths keep their
`/nix/store/…` names. `physical_path` maps one to the other for anything that reads files.

Round trips: a remote build is one (plus one to read and check the manifest); "which of these
paths does the builder lack" is one, whatever the number of paths; a closure copy is that query
plus nix's own connection for the paths that are missing.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Callable, Dict, List, Sequence, Tuple

import orjson

from pikaci.builder.transport import Builder, RemoteCommandError, Transport
from pikaci.payloads import nix
from pikaci.payloads.manifest import (
    MANIFEST_RELATIVE_PATH,
    ManifestError,
    PayloadManifest,
    parse_manifest,
)

Log = Callable[[str], None]
RESULT_MARKER = "__pikaci_nix_result__"
COPY_ATTEMPTS = 3
COPY_BACKOFF_SECS = 1.0
# nix copy failures worth another attempt: the connection, not the store
_CONNECTION_SIGNS = (
    "end-of-file",
    "end of file",
    "broken pipe",
    "connection reset",
    "connection closed",
    "connection refused",
    "cannot connect",
    "failed to start ssh",
    "unexpected eof",
)


class BuilderNixError(Exception):
    """One line: what was being done on which builder, and nix's own message."""


@dataclass(frozen=True)
class UploadStats:
    paths: int  # store paths copied (0: the builder had them all)
    bytes: int  # their NAR size
    seconds: float
    total_paths: int  # the closure that had to be present


def store_args(builder: Builder) -> List[str]:
    return ["--store", builder.nix_store] if builder.nix_store else []


def physical_path(builder: Builder, store_path: str) -> str:
    """Where the files of `store_path` are on the builder."""
    return f"{builder.nix_store}{store_path}" if builder.nix_store else store_path


def copy_uri(builder: Builder) -> str:
    uri = f"ssh://{builder.host}"
    return f"{uri}?remote-store={builder.nix_store}" if builder.nix_store else uri


def remote_build(
    transport: Transport,
    installable_args: Sequence[str],
    root_link: str,
    label: str,
    log: Log,
) -> List[str]:
    """`nix build` on the builder; returns the output paths. `root_link` (under the work dir)
    becomes the build's GC root there, so the builder's own GC keeps the payload."""
    builder = transport.builder
    what = " ".join(installable_args)
    argv = [
        "nix",
        *nix.NIX_FEATURES,
        *store_args(builder),
        "build",
        "--json",
        "--out-link",
        root_link,
        *installable_args,
    ]
    script = "\n".join(
        [
            f"mkdir -p {shlex.quote(str(PurePosixPath(root_link).parent))}",
            "out=$(mktemp) && trap 'rm -f \"$out\"' EXIT",
            # nix's messages stream back as they come; its JSON result follows a marker
            f'{shlex.join(argv)} 2>&1 >"$out" </dev/null || exit "$?"',
            f'echo {RESULT_MARKER}; cat "$out"',
        ]
    )
    try:
        result = transport.run(label, script, on_line=log)
    except RemoteCommandError as exc:
        raise BuilderNixError(
            f"nix build of `{what}` on {builder.host} failed: "
            f"{nix.summarize_error(exc.output_tail.splitlines(), exc.exit_code)}"
        ) from None
    _, _, body = result.text.partition(RESULT_MARKER + "\n")
    try:
        entries = orjson.loads(body.strip().splitlines()[-1])
        paths = [str(path) for entry in entries for path in entry["outputs"].values()]
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, IndexError):
        raise BuilderNixError(
            f"nix build of `{what}` on {builder.host} printed unexpected output: {body[:200]!r}"
        ) from None
    if not paths or not all(path.startswith("/nix/store/") for path in paths):
        raise BuilderNixError(f"nix build of `{what}` on {builder.host} gave no store path")
    return paths


def missing_paths(transport: Transport, paths: Sequence[str], label: str) -> List[str]:
    """The paths the builder's store lacks, in one round trip."""
    if not paths:
        return []
    for path in paths:
        if not path.startswith("/nix/store/") or "\n" in path:
            raise BuilderNixError(f"{label}: not a store path: {path!r}")
    argv = ["nix-store", *store_args(transport.builder), "--check-validity", "--print-invalid"]
    # the path list goes over stdin: no argument-length limit, whatever the closure size
    script = f"xargs {shlex.join(argv)}"
    result = transport.run(label, script, stdin=("\n".join(paths) + "\n").encode())
    invalid = {line.strip() for line in result.text.splitlines() if line.strip()}
    return [path for path in paths if path in invalid]


def read_remote_manifest(
    transport: Transport, store_path: str, output: str, label: str
) -> PayloadManifest:
    """The payload manifest of a store path on the builder, with every mount source checked
    to exist inside the output (one round trip for the manifest, one for the sources)."""
    builder = transport.builder
    root = physical_path(builder, store_path)
    manifest_path = f"{root}/{MANIFEST_RELATIVE_PATH}"
    result = transport.run(
        label, f"cat {shlex.quote(manifest_path)} 2>/dev/null || echo missing", check=False
    )
    if result.text.strip() == "missing":
        raise ManifestError(output, f"missing payload manifest for staged output {store_path}")
    try:
        data = orjson.loads(result.stdout)
    except orjson.JSONDecodeError as exc:
        raise ManifestError(output, f"invalid JSON in {MANIFEST_RELATIVE_PATH}: {exc}") from None
    manifest = parse_manifest(data, output)
    if manifest.mounts:
        # resolved on the builder: every source must exist and stay inside the output
        lines = [
            f"r=$(realpath -e {shlex.quote(root)})",
            'check() { p=$(realpath -e "$2" 2>/dev/null) || { echo "missing $1"; return; }; '
            'case "$p/" in "$r"/*) ;; *) echo "outside $1 $p";; esac; }',
        ]
        for index, mount in enumerate(manifest.mounts):
            relative = mount.relative_path
            source = root if relative in ("", ".") else f"{root}/{relative}"
            lines.append(f"check {index} {shlex.quote(source)}")
        script = "\n".join(lines)
        problems = transport.run(f"{label} (mount sources)", script).text.splitlines()
        for line in (p.strip() for p in problems):
            words = line.split(" ", 2)
            if words[0] not in ("missing", "outside") or not words[1].isdigit():
                continue
            name = manifest.mounts[int(words[1])].name
            if words[0] == "missing":
                raise ManifestError(
                    output, f"mount `{name}`: source does not exist under the output root"
                )
            raise ManifestError(
                output, f"mount `{name}`: source resolves to {words[2]}, outside the output root"
            )
    return manifest


def copy_closure(
    transport: Transport,
    paths: Sequence[str],
    ssh_options: Sequence[str],
    label: str,
    log: Log,
    attempts: int = COPY_ATTEMPTS,
) -> UploadStats:
    """Make the builder hold the closure of local `paths`: one query, then `nix copy` of what is
    missing, retried when the connection (not the store) fails."""
    started = time.monotonic()
    builder = transport.builder
    closure = nix.closure(paths, log)
    missing = missing_paths(transport, closure, f"{label}: query the builder")
    if not missing:
        log(f"{label}: {builder.host} already has all {len(closure)} path(s)")
        return UploadStats(0, 0, time.monotonic() - started, len(closure))
    sizes = _nar_sizes(missing, log)
    argv = ["nix", *nix.NIX_FEATURES, "copy", "--to", copy_uri(builder), *missing]
    env = {**os.environ, "NIX_SSHOPTS": " ".join(ssh_options)}
    reason = ""
    for attempt in range(attempts):
        if attempt:
            delay = COPY_BACKOFF_SECS * (2 ** (attempt - 1))
            log(
                f"{label}: nix copy failed ({reason}); retry {attempt}/{attempts - 1} in {delay:g}s"
            )
            time.sleep(delay)
        code, _, err = _run_env(argv, env, log)
        if code == 0:
            seconds = time.monotonic() - started
            total = sum(sizes.values())
            log(
                f"{label}: copied {len(missing)} of {len(closure)} path(s), {total} bytes, "
                f"in {seconds:.2f}s"
            )
            return UploadStats(len(missing), total, seconds, len(closure))
        reason = nix.summarize_error(err, code)
        if not _looks_like_connection(err):
            break
    raise BuilderNixError(
        f"{label}: nix copy to {builder.host} failed after {attempt + 1} attempt(s): {reason}"
    )


def _nar_sizes(paths: Sequence[str], log: Log) -> Dict[str, int]:
    code, out, err = nix.run_logged(["nix", *nix.NIX_FEATURES, "path-info", "--json", *paths], log)
    if code != 0:
        raise BuilderNixError(f"nix path-info failed: {nix.summarize_error(err, code)}")
    try:
        entries = orjson.loads(out)
        return {str(e["path"]): int(e.get("narSize", 0)) for e in entries}
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        raise BuilderNixError(f"nix path-info printed unexpected JSON: {out[:200]!r}") from None


def _run_env(argv: Sequence[str], env: Dict[str, str], log: Log) -> Tuple[int, bytes, List[str]]:
    log(f"$ NIX_SSHOPTS={shlex.quote(env['NIX_SSHOPTS'])} {shlex.join(argv)}")
    proc = subprocess.run(list(argv), env=env, capture_output=True, check=False)
    lines = proc.stderr.decode("utf-8", "replace").splitlines()
    for line in lines:
        log(line)
    return proc.returncode, proc.stdout, lines


def _looks_like_connection(stderr_lines: Sequence[str]) -> bool:
    text = "\n".join(stderr_lines).lower()
    return any(sign in text for sign in _CONNECTION_SIGNS)


def ssh_options_for(transport: Transport) -> List[str]:
    """NIX_SSHOPTS words that make nix's ssh reuse the transport's connection and settings."""
    builder = transport.builder
    words: List[str] = []
    if builder.ssh_config is not None:
        words += ["-F", str(builder.ssh_config)]
    words += [
        "-o",
        f"ControlPath={transport.control_path}",
        "-o",
        "BatchMode=yes",
        "-o",
        f"ConnectTimeout={builder.connect_timeout_secs}",
    ]
    for word in words:
        if any(c.isspace() for c in word):
            raise BuilderNixError(f"NIX_SSHOPTS cannot carry {word!r}: it contains whitespace")
    return words


def add_roots(transport: Transport, roots: Sequence[Tuple[str, str]], label: str) -> str:
    """Indirect GC roots `(link, store path)` in the builder's store, one round trip; "" when
    all were made, else what nix said (the caller decides whether that is fatal)."""
    builder = transport.builder
    lines = ["set -u", "failed=0"]
    for link, path in roots:
        if not path.startswith("/nix/store/") or "\n" in path or "\n" in link:
            raise BuilderNixError(f"{label}: not a store path: {path!r}")
        argv = ["nix-store", *store_args(builder), "--add-root", link, "--realise", path]
        lines.append(f"mkdir -p {shlex.quote(str(PurePosixPath(link).parent))}")
        lines.append(f"{shlex.join(argv)} >/dev/null || failed=1")
    lines.append('exit "$failed"')
    result = transport.run(label, "\n".join(lines), check=False)
    return "" if result.exit_code == 0 else (result.text.strip().splitlines() or ["failed"])[-1]
