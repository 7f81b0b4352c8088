"""Shared fixtures: throwaway repositories with their own dodo.py, driven as subprocesses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import orjson
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DOIT = [sys.executable, "-m", "doit"]
PIKACI = [sys.executable, "-m", "pikaci.cli.main"]


@dataclass
class LaneSpec:
    id: str
    command: str
    timeout_secs: int = 60
    target: str = "main"
    env: Dict[str, str] = field(default_factory=dict)
    placement: str = "local"
    runtime: str = "host_process"
    network: bool = False
    run_as_root: bool = False


def render_dodo(lanes: Sequence[LaneSpec], excludes: Optional[Dict[str, List[str]]] = None) -> str:
    targets: Dict[str, List[LaneSpec]] = {}
    for lane in lanes:
        targets.setdefault(lane.target, []).append(lane)
    blocks = []
    for target_id, target_lanes in targets.items():
        lane_src = ",\n".join(
            f"        Lane(id={lane.id!r}, command={lane.command!r}, "
            f"execution=Execution({lane.placement!r}, {lane.runtime!r}), "
            f"timeout_secs={lane.timeout_secs!r}, env={lane.env!r}, "
            f"network={lane.network!r}, run_as_root={lane.run_as_root!r})"
            for lane in target_lanes
        )
        exclude = tuple((excludes or {}).get(target_id, ()))
        blocks.append(
            f"    Target(id={target_id!r}, description='target {target_id}', "
            f"snapshot_excludes={exclude!r}, lanes=[\n{lane_src}\n    ])"
        )
    return textwrap.dedent(
        """\
        from pikaci.catalog import Catalog, Execution, Lane, Target
        from pikaci.graph import declare

        CATALOG = Catalog(targets=[
        {targets}
        ])
        DOIT_CONFIG, task_pikaci = declare(CATALOG, __file__)
        """
    ).format(targets=",\n".join(blocks))


@dataclass
class Project:
    root: Path
    state_root: Path

    @property
    def env(self) -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIKACI_")}
        env["PIKACI_STATE_ROOT"] = str(self.state_root)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        return env

    def run(
        self, argv: Sequence[str], timeout: float = 120, env: Optional[Dict[str, str]] = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv),
            cwd=self.root,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def doit(self, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return self.run([*DOIT, *args], **kwargs)  # type: ignore[arg-type]

    def pikaci(self, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return self.run([*PIKACI, *args], **kwargs)  # type: ignore[arg-type]

    def write(self, relpath: str, content: str, mode: int = 0o644) -> Path:
        path = self.root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        path.chmod(mode)
        return path

    def commit(self, message: str = "change") -> None:
        git(self.root, "add", "-A")
        git(self.root, "commit", "-q", "-m", message)

    def run_ids(self) -> List[str]:
        """Run ids in creation order (ids made in the same second sort by their random part)."""
        runs = self.state_root / "runs"
        if not runs.is_dir():
            return []
        # dot names are runs still being created (or abandoned while being created)
        ids = [
            p.name
            for p in runs.iterdir()
            if not p.name.startswith(".") and (p / "run.json").is_file()
        ]
        return sorted(ids, key=lambda run_id: (self.run_record(run_id)["created_at"], run_id))

    def run_record(self, run_id: str) -> Dict[str, object]:
        data = orjson.loads((self.state_root / "runs" / run_id / "run.json").read_bytes())
        assert isinstance(data, dict)
        return data

    def latest_run(self) -> Dict[str, object]:
        ids = self.run_ids()
        assert ids, "no run recorded"
        return self.run_record(ids[-1])

    def job_dir(self, run_id: str, job_id: str) -> Path:
        return self.state_root / "runs" / run_id / "jobs" / job_id


def new_repository(root: Path, state_root: Path, files: Dict[str, str]) -> Project:
    """A committed git repository holding `files` plus `src/hello.txt`."""
    root.mkdir(exist_ok=True)
    project = Project(root=root, state_root=state_root)
    for relpath, content in {**files, "src/hello.txt": "hello\n"}.items():
        project.write(relpath, content)
    git(root, "init", "-q", "-b", "main")
    project.commit("initial")
    return project


def require_component(condition: bool, reason: str) -> None:
    """Skip on a developer machine; in CI (CI=true) a missing real component is a failure."""
    if condition:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=pikaci-test", "-c", "user.email=test@localhost", *args],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


@pytest.fixture
def make_project(tmp_path: Path):  # type: ignore[no-untyped-def]
    """make_project(lanes, excludes=None) -> Project: a committed git repo with a dodo.py."""

    def factory(
        lanes: Sequence[LaneSpec], excludes: Optional[Dict[str, List[str]]] = None
    ) -> Project:
        return new_repository(
            tmp_path / "repo",
            tmp_path / "state",
            {
                "dodo.py": render_dodo(lanes, excludes),
            },
        )

    return factory


def executed_tasks(stdout: str) -> List[str]:
    """doit's `.  <task>` lines: the tasks that actually ran."""
    return [line[3:].split()[0] for line in stdout.splitlines() if line.startswith(".  ")]


def reused_tasks(stdout: str) -> List[str]:
    return [line[3:].split()[0] for line in stdout.splitlines() if line.startswith("-- ")]


STAGED_FLAKE = """\
{
  outputs = { self }:
    let
      LIBRARY
      inputs = builtins.path { path = ./src; name = "payload-inputs"; };
    in {
      ci.x86_64-linux = rec {
        deps = ci.stagedPayload {
          name = "TAG-deps";
          role = "workspaceDeps";
          src = inputs;
          build = ''mkdir -p "$out/share"; cp -r "$src" "$out/share/inputs"'';
        };
        build = ci.stagedPayload {
          name = "TAG-build";
          role = "workspaceBuild";
          src = inputs;
          inputs = { inherit deps; };
          build = ''mkdir -p "$out/share"; cat "$src"/*.txt > "$out/share/all.txt"'';
          wrappers = WRAPPERS;
        };
      } // EXTRA;
    };
}
"""


def nix_string(text: str) -> str:
    """A Nix indented string literal holding `text` verbatim."""
    return "''" + text.replace("''", "'''").replace("${", "''${") + "''"


# builders run on the host shell (needs an unsandboxed store)...
HOST_SHELL_LIBRARY = "ci = import ./nix/ci/lib.nix { };"
# ...or on a busybox carried in the repository, which builds anywhere, sandboxed chroot
# stores included
HERMETIC_LIBRARY = (
    'bb = builtins.path { path = ./nix/busybox; name = "busybox-static"; };\n'
    '      ci = import ./nix/ci/lib.nix { shell = "${bb}/bin/sh"; hostPath = "${bb}/bin"; };'
)
BUSYBOX = Path("/bin/busybox")


def render_staged_flake(
    tag: str, wrappers: Dict[str, str], extra: str = "{ }", hermetic: bool = False
) -> str:
    body = " ".join(f"{name} = {nix_string(text)};" for name, text in sorted(wrappers.items()))
    library = HERMETIC_LIBRARY if hermetic else HOST_SHELL_LIBRARY
    return (
        STAGED_FLAKE.replace("LIBRARY", library)
        .replace("TAG", tag)
        .replace("WRAPPERS", "{ " + body + " }")
        .replace("EXTRA", extra)
    )


def render_staged_dodo(
    targets: Dict[str, Sequence[LaneSpec]],
    excludes: Sequence[str] = (),
    realize: Optional[str] = None,
) -> str:
    blocks = []
    for target_id, lanes in targets.items():
        lane_src = ",\n".join(
            f"        Lane(id={lane.id!r}, command={lane.command!r}, "
            f"execution=Execution({lane.placement!r}, {lane.runtime!r}), "
            f"timeout_secs={lane.timeout_secs!r}, env={lane.env!r}, "
            f"network={lane.network!r}, run_as_root={lane.run_as_root!r})"
            for lane in lanes
        )
        blocks.append(
            f"    Target(id={target_id!r}, snapshot_excludes={tuple(excludes)!r}, "
            "payloads=StagedPayloads(id='shared', deps=Installable('ci.x86_64-linux.deps'), "
            f"build=Installable('ci.x86_64-linux.build'), realize={realize!r}), "
            f"lanes=[\n{lane_src}\n    ])"
        )
    return (
        "from pikaci.catalog import Catalog, Execution, Installable, Lane, StagedPayloads, "
        "Target\n"
        "from pikaci.graph import declare\n\n"
        "CATALOG = Catalog(targets=[\n" + ",\n".join(blocks) + "\n])\n"
        "DOIT_CONFIG, task_pikaci = declare(CATALOG, __file__)\n"
    )


@pytest.fixture
def make_staged_project(tmp_path: Path):  # type: ignore[no-untyped-def]
    """make_staged_project(wrappers, targets, excludes=(), extra_nix="{ }") -> Project.

    A committed repository whose flake builds two staged payloads with the project's own
    nixpkgs-free helper: `deps` (a copy of src/) and `build` (the wrappers), shared by every
    target under payload id `shared`. Lanes run the wrappers from the build payload's mount.
    """
    counter = iter(range(1000))

    def factory(
        wrappers: Dict[str, str],
        targets: Dict[str, Sequence[LaneSpec]],
        excludes: Sequence[str] = (),
        extra_nix: str = "{ }",
        realize: Optional[str] = None,
        hermetic: bool = False,
    ) -> Project:
        # a unique tag keeps these derivations apart from other tests' in the shared store
        tag = f"t{abs(hash(str(tmp_path))) % 10**8}"
        root = tmp_path / f"repo{next(counter)}"
        if hermetic:
            require_component(BUSYBOX.is_file(), "busybox-static is not installed")
            (root / "nix" / "busybox" / "bin").mkdir(parents=True)
            shutil.copy2(BUSYBOX, root / "nix" / "busybox" / "bin" / "busybox")
            (root / "nix" / "busybox" / "bin" / "sh").symlink_to("busybox")
        return new_repository(
            root,
            tmp_path / "state",
            {
                "flake.nix": render_staged_flake(tag, wrappers, extra_nix, hermetic),
                "flake.lock": '{"nodes": {"root": {}}, "root": "root", "version": 7}\n',
                "nix/ci/lib.nix": (REPO_ROOT / "nix" / "ci" / "lib.nix").read_text(),
                "dodo.py": render_staged_dodo(targets, excludes, realize),
            },
        )

    return factory


@pytest.fixture
def nix_counter(tmp_path: Path) -> Path:
    """A directory to put first on PATH: `nix`, `nix-store` and `nix-build` that log each call
    to `<dir>/calls` and then run the real tool."""
    import shutil as _shutil

    bindir = tmp_path / "counting-bin"
    bindir.mkdir()
    for tool in ("nix", "nix-store", "nix-build", "nix-instantiate"):
        real = _shutil.which(tool)
        assert real, f"{tool} is not installed"
        script = bindir / tool
        script.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{bindir}/calls"\nexec {real} "$@"\n')
        script.chmod(0o755)
    return bindir


def nix_calls(bindir: Path) -> List[str]:
    calls = bindir / "calls"
    return calls.read_text().splitlines() if calls.exists() else []


def interrupt_when_printed(
    project: Project,
    env: Dict[str, str],
    task: str,
    marker: str,
    timeout: float = 60,
    before_signal: Callable[[], None] = lambda: None,
) -> int:
    """`doit run <task>`, SIGINT once a stdout line contains `marker` (and `before_signal` has
    looked around); the exit status."""
    import signal

    proc = subprocess.Popen(
        [*DOIT, "run", task],
        cwd=project.root,
        env={**project.env, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if marker in line:
            break
    before_signal()
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=timeout)
    return proc.returncode


def wait_for(condition: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    """Poll `condition` until it holds or `timeout` seconds pass; its last value."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


def in_thread(call: Callable[[], object]) -> Tuple[threading.Thread, Dict[str, Any]]:
    """Start `call` on a daemon thread; its outcome lands in the dict (`result` or `error`)."""
    outcome: Dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = call()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome
