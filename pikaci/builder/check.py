"""`pikaci builder check`: is the builder ready for the lanes the catalog sends it?

It connects as a run does (the same transport, settings and shared connection) and checks, in
one round trip after the login, everything a `remote_ssh` lane needs there, one line each with
what to do when it fails:

- ssh: the login itself (host key, key-only login, host name; see PERMANENT_SSH_FAILURES);
- tools: the POSIX tools the wrapper and the runtimes use;
- work dir: PIKACI_BUILDER_WORK_DIR exists or can be made, and is writable;
- python3: >= 3.9 on PATH (host-process lanes run under pikaci's reaper; sandbox lanes run the
  guest runner with it);
- bwrap: bubblewrap on PATH, and a sandbox with user namespaces actually starts;
- nix: `nix store ping` against the configured store (a single-user Nix refuses a second
  user: the daemon socket's permission);
- incus, incus project, incus profile, incus pool, incus image: the client may talk to the
  daemon (sudo or the `incus-admin` group), and the configured project, profile, storage pool
  and image alias exist.

Each check belongs to the runtimes that need it; `ready` is true when every check that a
runtime the catalog uses on the builder needs has passed (all of them when there is no
catalog)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Set, TextIO

import orjson

from pikaci.builder.connect import connect
from pikaci.builder.protocol import TransportError
from pikaci.builder.transport import Builder, Transport
from pikaci.catalog import (
    PLACEMENT_REMOTE_SSH,
    REALIZE_COPY,
    REALIZE_ON_BUILDER,
    RUNTIME_BUBBLEWRAP,
    RUNTIME_HOST_PROCESS,
    RUNTIME_INCUS,
    Catalog,
)
from pikaci.incus.config import IncusSettings, incus_settings_from_environment
from pikaci.payloads.builder_nix import store_args
from pikaci.payloads.nix import NIX_FEATURES

RUNTIME_HOST = RUNTIME_HOST_PROCESS
RUNTIME_SANDBOX = RUNTIME_BUBBLEWRAP
NEEDS_NIX = "nix"  # staged payloads built on, or copied to, the builder
EVERYTHING = (RUNTIME_HOST, RUNTIME_SANDBOX, RUNTIME_INCUS, NEEDS_NIX)
TOOLS = ("sh", "bash", "timeout", "flock", "tar", "setsid", "mkfifo", "realpath", "sha256sum")
MIN_PYTHON = (3, 9)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    hint: str = ""
    needed_by: Sequence[str] = ()

    def line(self) -> str:
        mark = "ok  " if self.ok else "FAIL"
        fix = f" (fix: {self.hint})" if not self.ok and self.hint else ""
        return f"{mark} {self.name}: {self.detail}{fix}"

    def to_dict(self) -> Dict[str, object]:
        return {
            "name": self.name,
            "ok": self.ok,
            "detail": self.detail,
            "hint": self.hint,
            "needed_by": list(self.needed_by),
        }


@dataclass
class Report:
    host: str
    needed: List[str]
    checks: List[Check] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return all(
            check.ok
            for check in self.checks
            if not check.needed_by or set(check.needed_by) & set(self.needed)
        )

    def to_dict(self) -> Dict[str, object]:
        return {
            "builder": self.host,
            "needed": self.needed,
            "ready": self.ready,
            "checks": [check.to_dict() for check in self.checks],
        }


def needed_runtimes(catalog: Optional[Catalog]) -> List[str]:
    """What the catalog's `remote_ssh` lanes need on the builder; everything without one."""
    if catalog is None:
        return list(EVERYTHING)
    needed: Set[str] = set()
    for target, lane in catalog.iter_lanes():
        if lane.execution.placement != PLACEMENT_REMOTE_SSH:
            continue
        needed.add(lane.execution.runtime)
        if target.payloads is not None and target.realization in (
            REALIZE_ON_BUILDER,
            REALIZE_COPY,
        ):
            needed.add(NEEDS_NIX)
    return sorted(needed)


# -- the remote script ----------------------------------------------------------------------
# each probe prints one line: `<name>\t<ok|fail>\t<detail>`


def probe_script(builder: Builder, incus_settings: IncusSettings) -> str:
    settings = incus_settings
    values = {
        "work": builder.remote_work_dir,
        "tools": " ".join(TOOLS),
        "min_major": str(MIN_PYTHON[0]),
        "min_minor": str(MIN_PYTHON[1]),
        "nix_ping": shlex.join(["nix", *NIX_FEATURES, "store", "ping", *store_args(builder)]),
        "incus": " ".join(settings.program),  # words without spaces: split on purpose below
        "project": settings.project,
        "profile": settings.profiles[-1],
        "pool": settings.storage_pool,
        "alias": settings.image_alias,
        "alias_json": '"name":' + json_string(settings.image_alias),
    }
    assigned = [f"{name}={shlex.quote(value)}" for name, value in values.items()]
    return "\n".join([*assigned, _PROBES])


_PROBES = r"""
say() { printf '%s\t%s\t%s\n' "$1" "$2" "$(printf '%s' "$3" | tr '\n\t' '  ' | cut -c1-300)"; }
probe() { # NAME DETAIL COMMAND...: ok with DETAIL when the command succeeds, else what it said
  name=$1 detail=$2
  shift 2
  if out=$("$@" 2>&1 >/dev/null); then say "$name" ok "$detail"; else say "$name" fail "$out"; fi
}
missing=
for t in $tools; do command -v "$t" >/dev/null 2>&1 || missing="$missing $t"; done
if [ -z "$missing" ]; then say tools ok "all found"; else say tools fail "missing:$missing"; fi
if mkdir -p "$work" 2>/dev/null && t=$(mktemp "$work/.check-XXXXXX" 2>/dev/null); then
  rm -f "$t"
  say 'work dir' ok "$work"
else
  say 'work dir' fail "$work is not writable by $(id -un)"
fi
if ! command -v python3 >/dev/null 2>&1; then
  say python3 fail "no python3 on PATH"
elif v=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])') &&
  python3 -c "import sys; sys.exit(sys.version_info[:2] < ($min_major, $min_minor))"; then
  say python3 ok "$(command -v python3) $v"
else
  say python3 fail "$(command -v python3) is Python $v, older than $min_major.$min_minor"
fi
if ! command -v bwrap >/dev/null 2>&1; then
  say bwrap fail "no bwrap on PATH"
else
  probe bwrap "$(command -v bwrap), user namespaces work" \
    bwrap --ro-bind / / --unshare-user --unshare-pid --dev /dev --proc /proc true
fi
if out=$(eval "$nix_ping" 2>&1); then say nix ok "$out"; else say nix fail "$out"; fi
probe incus "the daemon answers" $incus info
probe 'incus project' "$project" $incus project show "$project"
probe 'incus profile' "$profile" $incus profile show --project "$project" "$profile"
probe 'incus pool' "$pool" $incus storage show "$pool"
if $incus image list --project "$project" "$alias" --format json 2>/dev/null |
  grep -qF "$alias_json"; then
  say 'incus image' ok "$alias"
else
  say 'incus image' fail "no image in project $project carries the alias $alias"
fi
"""


def json_string(text: str) -> str:
    """`text` as it appears quoted in Incus's compact JSON (no spaces after colons)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


HINTS: Mapping[str, str] = {
    "tools": "install them on the builder (Debian: coreutils, util-linux, tar, bash)",
    "work dir": "create it for the login user, or set PIKACI_BUILDER_WORK_DIR to a directory "
    "it owns",
    "python3": "install Python >= 3.9 on the builder (Debian 12: apt-get install python3)",
    "bwrap": "apt-get install bubblewrap; user namespaces must be allowed "
    "(sysctl kernel.unprivileged_userns_clone=1)",
    "nix": "run the nix daemon and add the login user to nix-users, or use a store of its own: "
    "PIKACI_BUILDER_NIX_STORE=/absolute/path",
    "incus": "add the login user to incus-admin and set PIKACI_INCUS_SUDO=0 (then "
    "`pikaci builder reset`), or allow it `sudo incus` without a password",
    "incus project": "incus project create <name>, or set PIKACI_INCUS_PROJECT",
    "incus profile": "incus profile create <name>, or set PIKACI_INCUS_PROFILE=default",
    "incus pool": "create it (docs/incus-builder.md: a btrfs pool), or set "
    "PIKACI_INCUS_STORAGE_POOL",
    "incus image": "import the guest image: pikaci incus-image <image> --remote, or set "
    "PIKACI_INCUS_IMAGE_ALIAS",
}
NEEDED_BY: Mapping[str, Sequence[str]] = {
    "tools": EVERYTHING,
    "work dir": EVERYTHING,
    "python3": (RUNTIME_HOST, RUNTIME_SANDBOX),
    "bwrap": (RUNTIME_SANDBOX,),
    "nix": (NEEDS_NIX,),
    "incus": (RUNTIME_INCUS,),
    "incus project": (RUNTIME_INCUS,),
    "incus profile": (RUNTIME_INCUS,),
    "incus pool": (RUNTIME_INCUS,),
    "incus image": (RUNTIME_INCUS,),
}


def parse_probes(output: str) -> List[Check]:
    checks = []
    for line in output.splitlines():
        parts = line.split("\t", 2)
        if len(parts) != 3 or parts[0] not in HINTS or parts[1] not in ("ok", "fail"):
            continue  # a line of the login's own (motd, a profile's echo)
        name, state, detail = parts
        ok = state == "ok"
        checks.append(Check(name, ok, detail.strip(), HINTS[name], NEEDED_BY[name]))
    return checks


def check_builder(
    transport: Transport,
    incus_settings: IncusSettings,
    catalog: Optional[Catalog],
    log: Callable[[str], None] = lambda line: None,
) -> Report:
    builder = transport.builder
    report = Report(builder.host, needed_runtimes(catalog))
    try:
        done = transport.run("builder check", probe_script(builder, incus_settings), check=False)
    except TransportError as exc:
        report.checks.append(Check("ssh", False, str(exc), "", EVERYTHING))
        return report
    report.checks.append(Check("ssh", True, f"logged in to {builder.host}", "", EVERYTHING))
    probes = parse_probes(done.text)
    if not probes:
        report.checks.append(
            Check(
                "builder",
                False,
                f"the checks did not run: {done.text.strip()[-300:]}",
                "",
                EVERYTHING,
            )
        )
    report.checks.extend(probes)
    return report


def write_report(report: Report, as_json: bool, out: TextIO) -> None:
    if as_json:
        out.write(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    needed = ", ".join(report.needed) or "nothing (no remote_ssh lane)"
    out.write(f"builder {report.host}, needed by the catalog: {needed}\n")
    for item in report.checks:
        out.write(item.line() + "\n")
    out.write(f"builder {report.host} is {'ready' if report.ready else 'NOT ready'}\n")


def check_command(
    builder: Builder, env: Mapping[str, str], catalog: Optional[Catalog], as_json: bool, out: TextIO
) -> Report:
    """What `pikaci builder check` and `doit builder_check` do; the report, also written."""
    settings = incus_settings_from_environment(env, sudo_default=True)
    report = check_builder(connect(builder, lambda line: None), settings, catalog)
    write_report(report, as_json, out)
    return report
