"""doit reporter: doit's console output plus pikaci's run records.

It opens a run when the selected tasks include lanes, records lanes that doit finds up to date
as reused, times the snapshot (prepare) tasks, accounts for lanes doit never reached, and
closes the run when doit completes, also after an error or an interrupt.
"""

from __future__ import annotations

import sys
from typing import Any, Dict, List, Set, Tuple

from doit.exceptions import InvalidTask
from doit.reporter import ConsoleReporter
from doit.task import Task

from pikaci.catalog import Lane, Target
from pikaci.plan import execute_task, node_of_task, split_task
from pikaci.run.consumer_check import ConsumerError
from pikaci.run.session import RunSession
from pikaci.tasks.uptodate import reuse_decision_of
from pikaci.timestamps import now_timestamp


def reporter_for(session: RunSession) -> type:
    """doit instantiates reporters itself; bind the session through a subclass."""
    return type("PikaciReporter", (PikaciReporter,), {"session": session})


class PikaciReporter(ConsoleReporter):  # type: ignore[misc]
    session: RunSession

    def __init__(self, outstream: Any, options: Dict[str, Any]) -> None:
        settings = self.session.settings
        if (settings.output != "human" or settings.results_only_stdout) and outstream is sys.stdout:
            outstream = sys.stderr  # stdout carries the JSON, or the result lines alone
        super().__init__(outstream, options)
        self._started: Dict[str, str] = {}

    # -- run boundaries --------------------------------------------------------------------

    def initialize(self, tasks: Dict[str, Task], selected_tasks: List[str]) -> None:
        super().initialize(tasks, selected_tasks)
        planned = self._planned_lanes(tasks, selected_tasks)
        if not planned:
            return
        try:
            run_id = self.session.begin(planned)
        except OSError as exc:
            raise InvalidTask(
                f"cannot write run records under {self.session.state.root}: {exc}"
            ) from None
        except ConsumerError as exc:
            raise InvalidTask(str(exc)) from None
        self.write(f"pikaci: run {run_id} ({len(planned)} lane(s))\n")

    def complete_run(self) -> None:
        super().complete_run()
        self.session.finish()
        self.session.exit_if_interrupted()

    def _planned_lanes(
        self, tasks: Dict[str, Task], selected: List[str]
    ) -> List[Tuple[Target, Lane]]:
        seen: Set[str] = set()
        stack = list(selected)
        while stack:
            name = stack.pop()
            if name in seen or name not in tasks:
                continue
            seen.add(name)
            task = tasks[name]
            stack.extend(task.task_dep)
            stack.extend(task.setup_tasks)
        planned = []
        for target, lane in self.session.catalog.iter_lanes():
            if execute_task(lane.id) in seen:
                planned.append((target, lane))
        return planned

    # -- task events -----------------------------------------------------------------------

    def execute_task(self, task: Task) -> None:
        super().execute_task(task)
        if node_of_task(task.name) is not None:
            self._started[task.name] = now_timestamp()

    def add_success(self, task: Task) -> None:
        super().add_success(task)
        started = self._started.pop(task.name, None)
        node = node_of_task(task.name)
        if started is not None and node is not None:
            self.session.prepare_finished(node, started, now_timestamp(), None)

    def add_failure(self, task: Task, fail: Any) -> None:
        super().add_failure(task, fail)
        message = _first_line(fail)
        node = node_of_task(task.name)
        if node is not None:
            # also when it failed before running (an error in its up-to-date check)
            started = self._started.pop(task.name, None) or now_timestamp()
            self.session.prepare_finished(node, started, now_timestamp(), message)
        kind, ident = split_task(task.name)
        if kind in ("execute", "collect", "lane") and not task.executed:
            found = self.session.catalog.lane(ident)
            if found is not None and self.session.run is not None:
                target, lane = found
                self.session.job_failed(
                    target, lane, self.session.unmet_reason(target) or f"not run: {message}"
                )

    def skip_uptodate(self, task: Task) -> None:
        kind, ident = split_task(task.name)
        if kind != "execute":
            super().skip_uptodate(task)
            return
        found = self.session.catalog.lane(ident)
        decision = reuse_decision_of(task)
        note = ""
        passed = decision.passed_run if decision is not None else None
        recorded = (
            found is not None
            and decision is not None
            and passed is not None
            and self.session.job_reused(*found, decision.inputs, passed)
        )
        if recorded:
            note = f"  (reused: passed in run {passed})"
        self.write(f"-- {task.title()}{note}\n")


def _first_line(fail: Any) -> str:
    try:
        text = str(fail.get_msg()).strip()
    except Exception:
        text = str(fail)
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(fail).__name__
