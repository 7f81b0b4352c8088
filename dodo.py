"""This repository's own pikaci catalog. Declarations only; pikaci implements the rest.

doit list --all            every task (lanes are `lane:<id>`, targets `target:<id>`)
doit run lane:demo         the demo lane (also what plain `doit` runs)
doit run target:pikaci     the repository's own checks
doit check_invariants      invariants/invariants.toml, decided by scripts/check_invariants.py
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict

from pikaci.catalog import (
    PLACEMENT_LOCAL,
    RUNTIME_BUBBLEWRAP,
    RUNTIME_HOST_PROCESS,
    Catalog,
    Execution,
    Installable,
    Lane,
    StagedPayloads,
    Target,
)
from pikaci.graph import declare

LOCAL_HOST = Execution(placement=PLACEMENT_LOCAL, runtime=RUNTIME_HOST_PROCESS)
LOCAL_SANDBOX = Execution(placement=PLACEMENT_LOCAL, runtime=RUNTIME_BUBBLEWRAP)
# the lint and test lanes use the interpreter that has the project's tools installed
TOOLS_PYTHON = '"${PIKACI_TOOLS_PYTHON:-$PIKACI_SOURCE_ROOT/.venv/bin/python}"'
SNAPSHOT_EXCLUDES = (
    "/.venv*",
    "__pycache__",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    "/bench/results",
)

CATALOG = Catalog(
    targets=[
        Target(
            id="demo",
            description="the demo: nix-built staged payloads run in the local sandbox",
            snapshot_excludes=SNAPSHOT_EXCLUDES,
            payloads=StagedPayloads(
                id="demo",
                deps=Installable("ci.x86_64-linux.demoWorkspaceDeps"),
                build=Installable("ci.x86_64-linux.demoWorkspaceBuild"),
            ),
            lanes=[
                Lane(
                    id="demo",
                    description="check the snapshot against the payload built from it",
                    command="/staged/linux-rust/workspace-build/bin/run-demo",
                    execution=LOCAL_SANDBOX,
                    timeout_secs=300,
                ),
            ],
        ),
        Target(
            id="pikaci",
            description="pikaci's own checks",
            snapshot_excludes=SNAPSHOT_EXCLUDES,
            lanes=[
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
        ),
    ]
)

_CONFIG, task_pikaci = declare(CATALOG, __file__)
DOIT_CONFIG = {**_CONFIG, "default_tasks": ["lane:demo"]}


def task_check_invariants() -> Dict[str, Any]:
    """check invariants/invariants.toml (never run by plain `doit`)"""
    root = Path(__file__).resolve().parent
    script = root / "scripts" / "check_invariants.py"
    return {
        "actions": [[sys.executable, str(script), "--root", str(root)]],
        "verbosity": 2,
        "uptodate": [False],
    }
