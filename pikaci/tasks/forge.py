"""doit entry points over `ci/forge-lanes.toml`: `ci:branch`, `ci:nightly` and `ci:plan`.

They exist when the source root has the manifest, belong to no target and run only when named
(never by plain `doit`). `ci:branch` selects branch lanes from the changed paths, prints the
plan, then runs the selected lanes: a staged lane runs its catalog target (`target:<id>`) in a
nested doit over the same catalog, state root and dep file (one run record for all of them, so
an unchanged lane is reused as usual); a command lane runs its argv in the source root with a
timeout. Every selected lane runs even when an earlier one fails; the task fails if any did.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence

from doit.exceptions import TaskError, TaskFailed

from pikaci.catalog import Catalog
from pikaci.forge.changes import ChangeSetError
from pikaci.forge.manifest import (
    BRANCH,
    MANIFEST_PATH,
    NIGHTLY,
    ForgeLane,
    ForgeManifestError,
)
from pikaci.forge.selection import BASE, NIGHTLY_SWITCH, WORKTREE, compute_plan
from pikaci.options import JSON
from pikaci.process import kill_process_group
from pikaci.settings import Settings
from pikaci.tasks.common import TaskDict

CI_BASENAME = "ci"
COMMAND_TIMEOUT_SECS = 3 * 3600


def is_ci_task(name: str) -> bool:
    return name == CI_BASENAME or name.startswith(f"{CI_BASENAME}:")


RunTargets = Callable[[Sequence[str], Sequence[str]], int]  # (targets, changed files) -> exit


def forge_tasks(
    catalog: Catalog, settings: Settings, run_targets: RunTargets
) -> Iterator[TaskDict]:
    """The `ci:*` tasks, when the source root has a manifest (read when a task runs, so a
    broken manifest fails those tasks and leaves every other one alone)."""
    if not (settings.source_root / MANIFEST_PATH).is_file():
        return
    runner = _ForgeRunner(catalog, settings, run_targets)
    yield {
        "basename": CI_BASENAME,
        "name": None,
        "doc": f"forge lanes of {MANIFEST_PATH}: ci:branch --base REF, ci:nightly, ci:plan",
    }
    yield {
        "basename": CI_BASENAME,
        "name": BRANCH,
        "doc": "run the branch lanes the changes since --base select (see ci:plan)",
        "params": [BASE.param(), WORKTREE.param()],
        "actions": [runner.branch],
        "uptodate": [False],
        "verbosity": 2,
    }
    yield {
        "basename": CI_BASENAME,
        "name": NIGHTLY,
        "doc": "run every nightly lane",
        "actions": [runner.nightly],
        "uptodate": [False],
        "verbosity": 2,
    }
    yield {
        "basename": CI_BASENAME,
        "name": "plan",
        "doc": "print which lanes ci:branch (or --nightly) would run and why; --json",
        "params": [BASE.param(), WORKTREE.param(), NIGHTLY_SWITCH.param(), JSON.param()],
        "actions": [runner.plan],
        "uptodate": [False],
        "verbosity": 2,
    }


class _ForgeRunner:
    def __init__(self, catalog: Catalog, settings: Settings, run_targets: RunTargets) -> None:
        self.catalog = catalog
        self.settings = settings
        self.run_targets = run_targets

    @property
    def root(self) -> Path:
        return self.settings.source_root

    def plan(self, base: str, worktree: bool, nightly: bool, json: bool) -> Any:
        kind = NIGHTLY if nightly else BRANCH
        try:
            plan = compute_plan(self.root, kind, base, worktree)
        except (ForgeManifestError, ChangeSetError) as exc:
            return TaskError(f"ci:plan: {exc}")
        print(plan.render(json), end="")
        return None

    def branch(self, base: str, worktree: bool) -> Any:
        return self._run(BRANCH, base, worktree)

    def nightly(self) -> Any:
        return self._run(NIGHTLY, "", False)

    def _run(self, kind: str, base: str, worktree: bool) -> Any:
        task = f"{CI_BASENAME}:{kind}"
        try:
            plan = compute_plan(self.root, kind, base, worktree)
        except (ForgeManifestError, ChangeSetError) as exc:
            return TaskError(f"{task}: {exc}")
        changes = plan.changes
        if changes is not None:
            print(f"[ci] changes: {changes.source} ({len(changes.paths)} path(s))")
        print(plan.render(False), end="", flush=True)
        lanes = plan.selected
        problem = self._unknown_target(lanes)
        if problem is not None:
            return TaskError(f"{task}: {problem}")
        failures: List[str] = []
        targets = [lane.staged_linux_target for lane in lanes if lane.staged_linux_target]
        if targets:
            known = changes is not None and changes.known
            code = self.run_targets(targets, changes.paths if changes is not None and known else ())
            if code != 0:
                failures.append(f"target(s) {', '.join(targets)} failed (doit exit {code})")
        for lane in lanes:
            if lane.staged_linux_target is None:
                failure = self._run_command(lane)
                if failure is not None:
                    failures.append(failure)
        if failures:
            return TaskFailed(f"{task}: " + "; ".join(failures))
        skipped = len(plan.selections) - len(lanes)
        print(f"[ci] {task}: {len(lanes)} lane(s) passed, {skipped} skipped")
        return None

    def _unknown_target(self, lanes: Sequence[ForgeLane]) -> Optional[str]:
        for lane in lanes:
            target = lane.staged_linux_target
            if target is not None and self.catalog.target(target) is None:
                return (
                    f"{MANIFEST_PATH}: {lane.kind} lane `{lane.id}`: key `staged_linux_target`: "
                    f"`{target}` is not a target of the catalog"
                )
        return None

    def _run_command(self, lane: ForgeLane) -> Optional[str]:
        """Run a command lane in the source root (its own process group); a failure or None."""
        print(f"[ci] lane {lane.id}: {lane.entrypoint}", flush=True)
        try:
            proc = subprocess.Popen(
                list(lane.command), cwd=self.root, stdin=subprocess.DEVNULL, start_new_session=True
            )
        except OSError as exc:
            return f"lane {lane.id}: cannot start {lane.command[0]}: {exc.strerror or exc}"
        try:
            code = proc.wait(timeout=COMMAND_TIMEOUT_SECS)
        except subprocess.TimeoutExpired:
            kill_process_group(proc.pid, reap=proc.poll)
            proc.wait()
            return f"lane {lane.id}: timed out after {COMMAND_TIMEOUT_SECS}s"
        except BaseException:
            kill_process_group(proc.pid, reap=proc.poll)
            proc.wait()
            raise
        if code != 0:
            return f"lane {lane.id}: exited with {code}"
        print(f"[ci] lane {lane.id}: passed", flush=True)
        return None
