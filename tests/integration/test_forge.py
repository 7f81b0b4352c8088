"""The forge entry points through doit and the console script: `pikaci ci-plan`,
`doit ci:plan`, `ci:branch`, `ci:nightly`, and the filters a staged run records."""

from __future__ import annotations

import textwrap
from pathlib import Path

import orjson
import pytest

from pikaci.forge.manifest import MANIFEST_PATH, staged_command
from tests.fixtures.projects import LaneSpec, executed_tasks
from tests.fixtures.support import git

PROJECT_MANIFEST = """\
version = 1
nightly_schedule_utc = "08:00"

[[branch.lanes]]
id = "alpha"
title = "check-alpha"
staged_linux_target = "alpha"
paths = ["src/alpha/**", "ci/forge-lanes.toml"]

[[branch.lanes]]
id = "beta"
title = "check-beta"
staged_linux_target = "beta"
paths = ["src/beta/**", "ci/forge-lanes.toml"]

[[branch.lanes]]
id = "docs"
title = "check-docs"
entrypoint = "docs check"
command = ["sh", "-c", "echo docs-lane-ran >> MARKER"]
paths = ["**/*.md", "ci/forge-lanes.toml"]

[[nightly.lanes]]
id = "nightly_beta"
title = "nightly-beta"
staged_linux_target = "beta"

[[nightly.lanes]]
id = "nightly_cmd"
title = "nightly-cmd"
entrypoint = "nightly"
command = ["sh", "-c", "echo nightly-lane-ran >> MARKER"]
"""


@pytest.fixture
def forge_project(make_project, tmp_path):
    project = make_project(
        [
            LaneSpec("a1", "echo lane-a1", target="alpha"),
            LaneSpec("a2", "echo lane-a2", target="alpha"),
            LaneSpec("b1", "echo lane-b1", target="beta"),
        ],
        # notes are outside the targets' snapshots: a notes change leaves lanes reusable
        excludes={"alpha": ["/notes"], "beta": ["/notes"]},
    )
    marker = tmp_path / "marker.txt"
    project.write(MANIFEST_PATH, PROJECT_MANIFEST.replace("MARKER", str(marker)))
    project.write(".gitignore", "/.pikaci/\n")
    project.commit("manifest")
    git(project.root, "checkout", "-q", "-b", "feature")
    project.write("src/alpha/main.txt", "alpha\n")
    project.commit("alpha work")
    return project, marker


def test_ci_plan_text_and_json(forge_project):
    project, _ = forge_project
    text = project.pikaci("ci-plan", "--base", "main")
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines() == [
        "SELECTED alpha (target:alpha): src/alpha/main.txt matches src/alpha/**",
        "SKIPPED beta (target:beta): no changed path matches (patterns: src/beta/**, "
        "ci/forge-lanes.toml)",
        "SKIPPED docs (sh -c 'echo docs-lane-ran >> "
        + str(Path(project.root).parent / "marker.txt")
        + "'): no changed path matches (patterns: **/*.md, ci/forge-lanes.toml)",
    ]
    data = orjson.loads(project.pikaci("ci-plan", "--base", "main", "--json").stdout)
    assert data["changes"]["paths"] == ["src/alpha/main.txt"]
    assert [(lane["id"], lane["selected"]) for lane in data["lanes"]] == [
        ("alpha", True),
        ("beta", False),
        ("docs", False),
    ]
    assert data["lanes"][0]["matched_pattern"] == "src/alpha/**"
    assert data["lanes"][0]["command"] == list(staged_command("alpha"))
    nightly = orjson.loads(project.pikaci("ci-plan", "--nightly", "--json").stdout)
    assert [lane["id"] for lane in nightly["lanes"]] == ["nightly_beta", "nightly_cmd"]
    clean = project.pikaci("ci-plan")
    assert clean.stdout.count("SELECTED") == 3 and "no change information" in clean.stdout
    bad = project.pikaci("ci-plan", "--base", "nope")
    assert bad.returncode == 1
    assert bad.stderr == "pikaci: error: base `nope` does not name a commit\n"
    doit_plan = project.doit("ci:plan", "--base", "main")
    assert doit_plan.returncode == 0, doit_plan.stderr
    assert "SELECTED alpha (target:alpha)" in doit_plan.stdout


def test_ci_branch_runs_exactly_the_selected_targets(forge_project):
    project, marker = forge_project
    listed = project.doit("list")
    assert "ci:branch" in listed.stdout
    result = project.doit("ci:branch", "--base", "main")
    assert result.returncode == 0, result.stdout + result.stderr
    ran = executed_tasks(result.stdout)
    assert sorted(t for t in ran if t.startswith("lane:")) == ["lane:a1", "lane:a2"]
    assert "SKIPPED beta" in result.stdout and not marker.exists()
    record = project.latest_run()
    assert record["status"] == "passed"
    assert sorted(job["id"] for job in record["jobs"]) == ["a1", "a2"]
    assert record["changed_files"] == ["src/alpha/main.txt"]  # the change set it selected by

    # a markdown change selects the command lane too; alpha is reused, beta still skipped
    project.write("notes/today.md", "n\n")
    project.commit("notes")
    second = project.doit("ci:branch", "--base", "main")
    assert second.returncode == 0, second.stdout + second.stderr
    assert not [t for t in executed_tasks(second.stdout) if t.startswith("execute:")]
    assert marker.read_text() == "docs-lane-ran\n"
    assert "execute:b1" not in second.stdout
    assert project.latest_run()["changed_files"] == ["notes/today.md", "src/alpha/main.txt"]
    # a run doit starts by itself has no change set to record
    assert project.doit("run", "target:alpha").returncode == 0
    assert project.latest_run()["changed_files"] == []

    # plain `doit` never runs the ci tasks
    plain = project.doit("run")
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert "ci:" not in " ".join(executed_tasks(plain.stdout))


def test_ci_nightly_and_failures(forge_project, tmp_path):
    project, marker = forge_project
    nightly = project.doit("ci:nightly")
    assert nightly.returncode == 0, nightly.stdout + nightly.stderr
    ran = executed_tasks(nightly.stdout)
    assert [t for t in ran if t.startswith("lane:")] == ["lane:b1"]
    assert marker.read_text() == "nightly-lane-ran\n"

    manifest = project.root / MANIFEST_PATH
    manifest.write_text(
        PROJECT_MANIFEST.replace("MARKER", str(marker)).replace(
            'staged_linux_target = "beta"\npaths', 'staged_linux_target = "gamma"\npaths'
        )
    )
    unknown = project.doit("ci:branch", "--base", "main", "--worktree")
    assert unknown.returncode != 0
    assert "branch lane `beta`: key `staged_linux_target`: `gamma` is not a target" in (
        unknown.stdout + unknown.stderr
    )

    manifest.write_text(PROJECT_MANIFEST.replace("echo docs-lane-ran >> MARKER", "exit 4"))
    failing = project.doit("ci:branch", "--worktree")  # the manifest changed: every lane
    assert failing.returncode != 0
    assert "ci/forge-lanes.toml changed: every branch lane" in failing.stdout
    assert "lane docs: exited with 4" in failing.stdout + failing.stderr
    # the manifest is part of every snapshot, so every target's lanes run again
    lanes = [t for t in executed_tasks(failing.stdout) if t.startswith("lane:")]
    assert sorted(lanes) == ["lane:a1", "lane:a2", "lane:b1"]


def test_a_staged_run_records_its_targets_filters_from_the_manifest(make_staged_project):
    lane = LaneSpec("show", "true", runtime="bubblewrap")
    project = make_staged_project({"run-show": "true"}, {"main": [lane]})
    project.write(
        "ci/forge-lanes.toml",
        textwrap.dedent(
            """\
            version = 1
            nightly_schedule_utc = "08:00"

            [[branch.lanes]]
            id = "main_lane"
            staged_linux_target = "main"
            paths = ["src/**", "flake.nix"]
            """
        ),
    )
    project.commit("manifest")
    done = project.doit("run", "lane:show")
    assert done.returncode == 0, done.stdout + done.stderr
    assert project.latest_run()["filters"] == ["src/**", "flake.nix"]

    # a manifest without the target's lane: the run goes on, the problem is reported
    project.write("ci/forge-lanes.toml", 'version = 1\nnightly_schedule_utc = "08:00"\n')
    project.commit("manifest without the lane")
    again = project.doit("run", "lane:show")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "missing forge lane manifest entry for `main`" in again.stderr
    assert project.latest_run()["filters"] == []
