"""Edge cases of runs and reuse that users hit: each pins a fixed defect."""

from __future__ import annotations

import os

import orjson

from tests.fixtures.projects import LaneSpec, executed_tasks, reused_tasks


def test_rerun_of_a_run_spanning_targets_uses_each_targets_snapshot(make_project):
    project = make_project(
        [
            LaneSpec("a", "test -e src/hello.txt", target="main"),
            LaneSpec("c", "test ! -e src/hello.txt", target="other"),
        ],
        excludes={"other": ["/src"]},
    )
    first = project.pikaci("run", "a", "c")
    assert first.returncode == 0, first.stdout + first.stderr
    old = project.run_ids()[-1]
    jobs = {job["id"]: job for job in project.run_record(old)["jobs"]}  # type: ignore[union-attr]
    assert jobs["a"]["snapshot_dir"] != jobs["c"]["snapshot_dir"]
    rerun = project.pikaci("rerun", old)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr


def test_gc_keeps_snapshots_when_the_state_root_is_reached_through_a_symlink(
    make_project, tmp_path
):
    project = make_project([LaneSpec("a", "true")])
    real = tmp_path / "real-state"
    real.mkdir()
    link = tmp_path / "link-state"
    link.symlink_to(real)
    project.state_root = link
    assert project.pikaci("run", "a").returncode == 0
    gc = project.pikaci("gc", "--keep-runs", "10")
    assert gc.stdout.splitlines()[-1] == "removed_snapshots=0"
    assert project.pikaci("rerun", project.run_ids()[-1]).returncode == 0


def test_a_lane_whose_passing_run_was_collected_runs_again(make_project):
    project = make_project([LaneSpec("a", "echo ran")])
    assert project.doit("run", "lane:a").returncode == 0
    reused = project.doit("run", "lane:a")
    assert "execute:a" in reused_tasks(reused.stdout)
    assert project.pikaci("gc", "--keep-runs", "0").returncode == 0  # the evidence is gone
    again = project.doit("run", "lane:a")
    assert "execute:a" in executed_tasks(again.stdout)  # no reuse of vanished evidence
    logs = project.pikaci("logs", project.run_ids()[-1])
    assert logs.returncode == 0 and "ran" in logs.stdout


def test_an_executable_bit_change_is_not_reused(make_project):
    project = make_project([LaneSpec("script", "./run.sh")])
    project.write("run.sh", "#!/bin/sh\necho script-ok\n", mode=0o755)
    project.commit("script")
    assert project.doit("run", "lane:script").returncode == 0
    (project.root / "run.sh").chmod(0o644)
    project.commit("not executable")
    broken = project.doit("run", "lane:script")
    assert "execute:script" in executed_tasks(broken.stdout)
    assert broken.returncode == 1  # permission denied, as in a fresh clone


def test_forgetting_collect_of_a_reused_lane_does_not_touch_its_records(make_project):
    project = make_project([LaneSpec("a", "echo ran")])
    assert project.doit("run", "lane:a").returncode == 0
    executed_in = project.run_ids()[-1]
    assert project.doit("forget", "collect:a").returncode == 0
    result = project.pikaci("run", "a")
    assert result.returncode == 0, result.stdout + result.stderr
    (job,) = project.latest_run()["jobs"]  # type: ignore[misc]
    assert job["status"] == "passed" and job["reused_from_run"] == executed_in
    own_dir = project.job_dir(project.run_ids()[-1], "a")
    assert sorted(p.name for p in own_dir.iterdir()) == ["status.json"]


def test_jsonl_reports_jobs_settled_when_the_run_closes(make_project):
    project = make_project([LaneSpec("a", "true"), LaneSpec("b", "false")])
    result = project.doit("run", "execute:a", env={"PIKACI_OUTPUT": "jsonl"})
    assert result.returncode == 0, result.stderr
    events = [orjson.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    kinds = [(e["event"], e.get("job", {}).get("id")) for e in events]
    assert kinds == [
        ("run_started", None),
        ("job_started", "a"),
        ("job_finished", "a"),
        ("run_finished", None),
    ]
    assert events[2]["job"]["status"] == "passed"


def test_keep_going_after_a_failed_snapshot_names_the_prepare_node(make_project):
    project = make_project(
        [LaneSpec("a", "true", target="main"), LaneSpec("b", "true", target="other")],
        excludes={"main": ["/src/pipe"]},
    )
    os.mkfifo(project.root / "src" / "pipe")  # fails `other`'s snapshot, not `main`'s
    result = project.doit("run", "--continue", "target:main", "target:other")
    assert result.returncode != 0
    jobs = {job["id"]: job for job in project.latest_run()["jobs"]}  # type: ignore[union-attr]
    assert jobs["a"]["status"] == "passed"
    assert jobs["b"]["status"] == "failed"
    assert jobs["b"]["message"].startswith("prepare node `snapshot-other` failed before execute:")
    assert "pipe" in jobs["b"]["message"]


def test_pikaci_exits_non_zero_when_doit_reports_an_error(make_project):
    project = make_project([LaneSpec("a", "true")])
    os.mkfifo(project.root / "src" / "pipe")
    result = project.pikaci("run", "a")
    assert result.returncode == 1
    assert project.latest_run()["status"] == "failed"
    assert "Traceback" not in result.stdout + result.stderr


def test_unusable_state_root_is_a_one_line_error(make_project, tmp_path):
    project = make_project([LaneSpec("a", "true")])
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    project.state_root = blocker / "state"
    for argv in (("list",), ("gc",), ("run", "a")):
        result = project.pikaci(*argv)
        assert result.returncode == 1, argv
        assert "Traceback" not in result.stderr, argv
        lines = result.stderr.strip().splitlines()
        assert lines and lines[-1].startswith(("pikaci: error: ", "ERROR: ")), (argv, lines)


def test_reused_lane_record_points_at_the_executing_runs_logs(make_project):
    project = make_project([LaneSpec("a", "echo evidence")])
    assert project.doit("run", "lane:a").returncode == 0
    executed_in = project.run_ids()[-1]
    assert project.doit("run", "lane:a").returncode == 0
    reused_in = project.run_ids()[-1]
    logs = project.pikaci("logs", reused_in, "--kind", "host")
    assert "evidence" in logs.stdout
    meta = orjson.loads(project.pikaci("logs", reused_in, "--metadata-json").stdout)
    assert f"/runs/{executed_in}/" in meta["jobs"][0]["host_log_path"]
    assert "execute:a" in reused_tasks(project.doit("run", "lane:a").stdout)
