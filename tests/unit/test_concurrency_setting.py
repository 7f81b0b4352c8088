"""How many tasks a run executes at once: PIKACI_MAX_CONCURRENT_EXECUTES as doit's default
`num_process`, and the main thread for the tasks that own the process (`serve`, `ci:*`)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import pytest

from pikaci.catalog import Catalog, Execution, Lane, Target
from pikaci.settings import settings_from_environment
from pikaci.tasks.loader import CatalogLoader, _in_foreground

CATALOG = Catalog(
    targets=[
        Target(
            id="main",
            lanes=[Lane(id="a", command="true", execution=Execution("local", "host_process"))],
        )
    ]
)


def loader(tmp_path: Path, env: Dict[str, str]) -> CatalogLoader:
    environ = {"PIKACI_STATE_ROOT": str(tmp_path / "state"), **env}
    return CatalogLoader(CATALOG, settings_from_environment(tmp_path, environ=environ))


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, 2),
        ({"PIKACI_MAX_CONCURRENT_EXECUTES": "5"}, 5),
        ({"PIKACI_MAX_CONCURRENT_EXECUTES": " 1 "}, 1),
    ],
)
def test_the_setting_is_doits_default(tmp_path: Path, env: Dict[str, str], expected: int) -> None:
    assert loader(tmp_path, env)._num_process(["run", "lane:a"]) == expected


@pytest.mark.parametrize("raw", ["0", "65", "two", "-1", "1.5"])
def test_a_bad_setting_names_the_variable(tmp_path: Path, raw: str) -> None:
    with pytest.raises(ValueError, match="PIKACI_MAX_CONCURRENT_EXECUTES: expected a whole number"):
        loader(tmp_path, {"PIKACI_MAX_CONCURRENT_EXECUTES": raw})


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["serve", "--port", "0", "--no-auth"], 0),
        (["run", "gc_remote", "--keep-runs", "3"], 0),
        (["serve", "lane:a"], 2),  # a lane among them: lanes run at once
        (["lane:a"], 2),
        ([], 2),  # the default tasks are lanes
        (["-f", "dodo.py", "list"], 2),
    ],
)
def test_tasks_that_own_the_process_run_on_the_main_thread(
    tmp_path: Path, argv: List[str], expected: int
) -> None:
    assert loader(tmp_path, {})._num_process(argv) == expected


def test_the_forges_runs_are_foreground_tasks() -> None:
    assert _in_foreground("ci:branch") and _in_foreground("ci") and _in_foreground("serve")
    assert not _in_foreground("lane:a") and not _in_foreground("target:main")
