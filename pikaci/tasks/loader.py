"""doit's loader for a pikaci catalog, and the one way pikaci runs doit.

`CatalogLoader` (a doit `TaskLoader2`) gives every entry point the same tasks and config:
`declare()` hands them to a repository's `dodo.py`, `run_doit()` runs `DoitMain` with the loader
directly for the `pikaci` console script and for `ci:branch`'s nested run.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from doit.cmd_base import TaskLoader2
from doit.doit_cmd import DoitMain
from doit.exceptions import InvalidTask
from doit.loader import generate_tasks, get_module
from doit.task import Task

from pikaci.catalog import Catalog, CatalogError
from pikaci.model import RunRecord
from pikaci.plan import target_task
from pikaci.run.session import RunSession
from pikaci.settings import Settings, settings_from_environment
from pikaci.store import resolve_state_root
from pikaci.tasks.common import TaskDict
from pikaci.tasks.forge import forge_tasks, is_ci_task
from pikaci.tasks.lanes import LaneGraph, group_tasks
from pikaci.tasks.maintenance import MAINTENANCE_TASKS, maintenance_tasks
from pikaci.tasks.reporter import reporter_for


class DodoFileError(Exception):
    """A dodo file that declares no catalog; the message is one line."""


class CatalogLoader(TaskLoader2):  # type: ignore[misc]
    def __init__(self, catalog: Catalog, settings: Settings) -> None:
        super().__init__()
        self.catalog = catalog
        self.session = RunSession(catalog, settings)
        self._task_dicts: Optional[List[TaskDict]] = None
        self._problem: Optional[str] = None

    def setup(self, opt_values: Dict[str, Any]) -> None:
        pass

    def load_doit_config(self) -> Dict[str, Any]:
        state_root = self.session.state.root
        try:
            state_root.mkdir(parents=True, exist_ok=True)
            if not os.access(state_root, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        except OSError as exc:
            # reported when doit asks for the tasks: one line instead of a traceback
            self._problem = f"state root {state_root}: {exc.strerror or exc}"
        dep_file = self.session.settings.dep_file or self.session.state.dep_file
        return {
            "backend": "sqlite3",
            # doit opens the dep file before it loads the tasks that report the problem
            "dep_file": ":memory:" if self._problem else str(dep_file),
            "reporter": reporter_for(self.session),
            "par_type": "thread",
            # a default only: `doit run -n N` wins
            "num_process": self._num_process(sys.argv[1:]),
            "default_tasks": self._default_tasks(),
        }

    def _num_process(self, argv: Sequence[str]) -> int:
        """PIKACI_MAX_CONCURRENT_EXECUTES, or 0 (doit's main thread) when every task the command
        line names must run there: the server and the forge's runs own the process (signal
        handlers, a nested run). doit hands the loader no task names before this point, so they
        are read from the command line: the words that name a task of this catalog."""
        if self._problem is None:
            try:
                known = {_task_name(item) for item in self.task_dicts()}
            except InvalidTask:
                known = set()
            named = [word for word in argv if word in known]
            if named and all(_in_foreground(name) for name in named):
                return 0
        return self.session.settings.max_concurrent

    def _default_tasks(self) -> Optional[List[str]]:
        """Every task but the housekeeping ones, in order: what plain `doit` would otherwise
        run."""
        try:
            dicts = self.task_dicts()
        except InvalidTask:
            return None  # loading the tasks reports the problem
        names = (_task_name(item) for item in dicts)
        return [name for name in names if name not in MAINTENANCE_TASKS and not is_ci_task(name)]

    def task_dicts(self) -> List[TaskDict]:
        """The tasks, built once: the config's default tasks and doit's task load both need them.

        Copies, one level deep: doit pops and rewrites keys of the dicts it is handed.
        """
        if self._problem is not None:
            raise InvalidTask(self._problem)
        if self._task_dicts is None:
            try:
                self.catalog.validate()
            except CatalogError as exc:
                raise InvalidTask(str(exc)) from None
            settings = self.session.settings
            self._task_dicts = [
                *group_tasks(self.catalog),
                *maintenance_tasks(settings, self.catalog),
                *forge_tasks(self.catalog, settings, self._run_targets),
                *LaneGraph(self.catalog, self.session).tasks(),
            ]
        return [
            {key: list(value) if isinstance(value, list) else value for key, value in item.items()}
            for item in self._task_dicts
        ]

    def load_tasks(self, cmd: Any, pos_args: List[str]) -> List[Task]:
        # doit wants a generator here, not any iterator
        dicts = (item for item in self.task_dicts())
        tasks: List[Task] = generate_tasks("pikaci", dicts)
        return tasks

    def _run_targets(self, targets: Sequence[str], changed_files: Sequence[str] = ()) -> int:
        """`doit run --continue target:<id>...` in a nested doit over the same catalog, state
        root and dep file (one run record for all of them, recording `changed_files`); doit's
        exit code."""
        names = [target_task(target) for target in targets]
        settings = dataclasses.replace(self.session.settings, changed_files=tuple(changed_files))
        return run_doit(self.catalog, settings, ["run", "--continue", *names])[0]


def run_doit(
    catalog: Catalog, settings: Settings, doit_args: List[str]
) -> Tuple[int, Optional[RunRecord]]:
    """Run doit over the catalog; (doit's exit code, the closed run record or None)."""
    loader = CatalogLoader(catalog, settings)
    try:
        code: int = DoitMain(loader).run(doit_args)
    finally:
        final = loader.session.finish()  # no-op when the reporter already closed the run
    return code, final


def _task_name(item: TaskDict) -> str:
    return item["basename"] if item.get("name") is None else f"{item['basename']}:{item['name']}"


def _in_foreground(task: str) -> bool:
    """Tasks that must run on doit's main thread: housekeeping (`serve` handles signals) and
    the forge's `ci:*`, which run a whole run of their own."""
    return task.split(":", 1)[0] in MAINTENANCE_TASKS or is_ci_task(task)


def load_catalog(dodo: str) -> Catalog:
    """The `CATALOG` of a repository's dodo file, loaded by doit's own loader (a load of the
    repository's file by path, not an import of a module)."""
    path = Path(dodo).absolute()
    if not path.is_file():
        raise DodoFileError(f"{dodo}: no such file (run from the repository root or pass -f)")
    module = get_module(str(path))
    catalog = getattr(module, "CATALOG", None)
    if not isinstance(catalog, Catalog):
        raise DodoFileError(f"{dodo}: defines no `CATALOG` (a pikaci.catalog.Catalog)")
    return catalog


def declare(catalog: Catalog, dodo_file: str) -> Tuple[Dict[str, Any], Callable[[], Any]]:
    """For a repository's `dodo.py`: `DOIT_CONFIG, task_pikaci = declare(CATALOG, __file__)`."""
    source_root = Path(dodo_file).resolve().parent
    problem: Optional[str] = None
    try:
        settings = settings_from_environment(source_root)
    except ValueError as exc:
        # reported when doit asks for the tasks: an import-time error would be a traceback
        problem = str(exc)
        # only what the error report needs: the state root, no builder, defaults elsewhere
        settings = Settings(source_root, resolve_state_root(None, os.environ, source_root))
    loader = CatalogLoader(catalog, settings)

    def task_pikaci() -> Iterator[TaskDict]:
        if problem is not None:
            raise InvalidTask(problem)
        yield from loader.task_dicts()

    task_pikaci.__doc__ = "pikaci lanes"
    return loader.load_doit_config(), task_pikaci
