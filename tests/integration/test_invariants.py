"""`doit check_invariants` on temporary copies of this repository: the task passes on an
unchanged copy, fails with the id of each invariant broken on purpose and only with it, and
fails on a bad spec (the checker script itself: `tests/unit/test_invariants.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict

import pytest

from tests.fixtures.invariants import (
    BREAKS,
    MUST_IDS,
    copy_repository,
    doit_check,
    edit,
    script,
    statuses,
)


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, str]:
    """The statuses of an unchanged copy: a break must change its own id and nothing else."""
    root = copy_repository(tmp_path_factory.mktemp("unbroken") / "repo")
    return statuses(script(root).stdout)


def test_doit_check_invariants_passes(repo_copy: Path) -> None:
    result = doit_check(repo_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert statuses(result.stdout) == {
        "PIKACI-001": "UNCHECKED",
        **dict.fromkeys(MUST_IDS, "PASS"),
    }


@pytest.mark.parametrize(
    ("invariant", "breaker"), BREAKS, ids=[f"{i}-{b.__name__}" for i, b in BREAKS]
)
def test_a_broken_invariant_fails_with_its_id(
    repo_copy: Path, unbroken: Dict[str, str], invariant: str, breaker: Callable[[Path], None]
) -> None:
    # compared with the unchanged copy rather than with all PASS, so that an invariant the
    # tree does not meet yet (test_this_repository_passes says which) hides no other break
    assert unbroken[invariant] == "PASS", unbroken
    assert unbroken["PIKACI-001"] == "UNCHECKED"
    breaker(repo_copy)
    result = doit_check(repo_copy)
    assert result.returncode == 1, result.stdout + result.stderr
    found = statuses(result.stdout)
    assert found == {**unbroken, invariant: "FAIL"}, result.stdout
    # the failure names where: an evidence line with a path (and a line where there is one)
    block = result.stdout.split(f"FAIL {invariant}: ", 1)[1].split("\n")
    assert block[1].startswith("  evidence: ")


def test_doit_fails_on_a_bad_spec(repo_copy: Path) -> None:
    edit(repo_copy, "invariants/invariants.toml", "version = 1\n", "version = 3\n")
    result = doit_check(repo_copy)
    assert result.returncode != 0
    assert "unsupported invariants spec version" in result.stdout + result.stderr
