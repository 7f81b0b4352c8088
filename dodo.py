"""This repository's own pikaci catalog. Declarations only; pikaci implements the rest.

doit list --all            every task (lanes are `lane:<id>`, targets `target:<id>`)
doit run lane:demo         the demo lane (also what plain `doit` runs)
doit run target:pikaci     every lane of this repository
"""

from __future__ import annotations

from pikaci.catalog import PLACEMENT_LOCAL, RUNTIME_HOST_PROCESS, Catalog, Execution, Lane, Target
from pikaci.graph import declare

LOCAL_HOST = Execution(placement=PLACEMENT_LOCAL, runtime=RUNTIME_HOST_PROCESS)
# the lint and test lanes use the interpreter that has the project's tools installed
TOOLS_PYTHON = '"${PIKACI_TOOLS_PYTHON:-$PIKACI_SOURCE_ROOT/.venv/bin/python}"'

CATALOG = Catalog(
    targets=[
        Target(
            id="pikaci",
            description="pikaci's own lanes",
            snapshot_excludes=(
                "/.venv*",
                "__pycache__",
                ".mypy_cache",
                ".pytest_cache",
                ".ruff_cache",
                "/bench/results",
            ),
            lanes=[
                Lane(
                    id="demo",
                    description="byte-compile the package and summarise the snapshot",
                    command="./scripts/demo-lane.sh",
                    execution=LOCAL_HOST,
                    timeout_secs=300,
                ),
                Lane(
                    id="lint",
                    description="ruff and mypy over the tree",
                    command=f"{TOOLS_PYTHON} -m ruff check . && {TOOLS_PYTHON} -m ruff format "
                    f"--check . && {TOOLS_PYTHON} -m mypy",
                    execution=LOCAL_HOST,
                    timeout_secs=600,
                ),
                Lane(
                    id="unit-tests",
                    description="the fast unit tests",
                    command=f"{TOOLS_PYTHON} -m pytest -q -m 'not slow' -p no:cacheprovider",
                    execution=LOCAL_HOST,
                    timeout_secs=900,
                ),
            ],
        )
    ]
)

_CONFIG, task_pikaci = declare(CATALOG, __file__)
DOIT_CONFIG = {**_CONFIG, "default_tasks": ["lane:demo"]}
