"""The README's demo: this repository's own catalog, from a fresh copy of its tracked files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.fixtures.projects import executed_tasks
from tests.fixtures.support import REPO_ROOT, git


@pytest.fixture
def fresh_clone(tmp_path: Path) -> Path:
    clone = tmp_path / "pikaci"
    subprocess.run(["git", "clone", "-q", str(REPO_ROOT), str(clone)], check=True)
    # the working tree's uncommitted edits too, so the test checks what is being changed
    for line in git(REPO_ROOT, "ls-files", "-m", "-o", "--exclude-standard").splitlines():
        source = REPO_ROOT / line
        if source.is_file():
            (clone / line).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, clone / line)
    return clone


def test_demo_lane_runs_then_is_reused(fresh_clone: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIKACI_")}
    command = [sys.executable, "-m", "doit", "run", "lane:demo"]

    first = subprocess.run(command, cwd=fresh_clone, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout + first.stderr
    assert executed_tasks(first.stdout) == [
        "snapshot:demo",
        "build:demo:deps",
        "build:demo:build",
        "execute:demo",
        "collect:demo",
        "lane:demo",
    ]
    assert "[demo] demo passed" in first.stdout
    bundle_lines = [line for line in first.stderr.splitlines() if "run bundle: " in line]
    assert len(bundle_lines) == 1
    bundle = Path(bundle_lines[0].split("run bundle: ", 1)[1])
    assert bundle.parent == fresh_clone / ".pikaci" / "runs"
    artifacts = bundle / "jobs" / "demo" / "artifacts"
    summary = orjson.loads((artifacts / "summary.json").read_bytes())
    assert summary == {"python_modules": summary["python_modules"], "guest_user": "pikaci"}
    assert summary["python_modules"] > 10
    assert "byte-compiled" in (artifacts / "guest.log").read_text()
    result = orjson.loads((artifacts / "result.json").read_bytes())
    assert result["status"] == "completed" and result["message"] == "test passed"

    second = subprocess.run(command, cwd=fresh_clone, env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stdout + second.stderr
    assert executed_tasks(second.stdout) == []
    assert f"reused: passed in run {bundle.name}" in second.stdout
