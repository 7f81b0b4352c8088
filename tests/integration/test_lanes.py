"""Local host-process lanes driven through doit and the console script, end to end."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import orjson
import pytest

from tests.fixtures.projects import LaneSpec, executed_tasks, reused_tasks
from tests.fixtures.support import DOIT


def test_lane_runs_then_is_reused(make_project):
    project = make_project(
        [LaneSpec("hello", 'echo "hi from $PIKACI_JOB_ID"; echo out > "$ARTIFACTS/out.txt"')]
    )
    first = project.doit("run", "lane:hello")
    assert first.returncode == 0, first.stderr
    assert executed_tasks(first.stdout) == [
        "snapshot:main",
        "execute:hello",
        "collect:hello",
        "lane:hello",
    ]
    assert "[hello] hi from hello" in first.stdout
    run_id = project.run_ids()[-1]
    assert f"run bundle: {project.state_root / 'runs' / run_id}" in first.stderr
    job_dir = project.job_dir(run_id, "hello")
    assert (job_dir / "artifacts" / "out.txt").read_text() == "out\n"
    assert "hi from hello" in (job_dir / "host.log").read_text()
    result = orjson.loads((job_dir / "artifacts" / "result.json").read_bytes())
    assert result["status"] == "completed" and result["exit_code"] == 0

    second = project.doit("run", "lane:hello")
    assert second.returncode == 0, second.stderr
    assert executed_tasks(second.stdout) == []
    assert f"reused: passed in run {run_id}" in second.stdout
    record = project.latest_run()
    assert record["run_id"] != run_id and record["status"] == "passed"
    (job,) = record["jobs"]  # type: ignore[misc]
    assert job["reused_from_run"] == run_id
    assert job["status"] == "passed"
    assert run_id in job["message"]


def test_failing_lane_records_output_and_only_it_reruns_after_fix(make_project, tmp_path):
    flag = tmp_path / "broken"
    flag.write_text("")
    project = make_project(
        [
            LaneSpec("good", "echo fine"),
            LaneSpec(
                "flaky",
                'if [ -e "$FLAG" ]; then echo "boom: dependency missing"; exit 3; fi; echo ok',
                env={"FLAG": str(flag)},
            ),
        ]
    )
    failed = project.doit("run", "--continue", "target:main")
    assert failed.returncode != 0
    record = project.latest_run()
    assert record["status"] == "failed"
    jobs = {job["id"]: job for job in record["jobs"]}  # type: ignore[union-attr]
    assert jobs["good"]["status"] == "passed"
    assert jobs["flaky"]["status"] == "failed"
    assert jobs["flaky"]["exit_code"] == 3
    assert jobs["flaky"]["message"] == "host-local command exited with 3"
    host_log = Path(jobs["flaky"]["host_log_path"]).read_text()
    assert "boom: dependency missing" in host_log
    assert "lane flaky failed: host-local command exited with 3" in failed.stdout

    flag.unlink()  # the fix lies outside the snapshot, so `good` keeps its identity
    fixed = project.doit("run", "target:main")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "execute:flaky" in executed_tasks(fixed.stdout)
    assert "execute:good" not in executed_tasks(fixed.stdout)
    assert "execute:good" in reused_tasks(fixed.stdout)


def test_failed_lane_always_reruns(make_project):
    project = make_project([LaneSpec("bad", "echo nope; exit 1")])
    for _ in range(2):
        result = project.doit("run", "lane:bad")
        assert result.returncode == 1
        assert "execute:bad" in executed_tasks(result.stdout)


def test_source_change_reruns_and_forget_forces(make_project):
    project = make_project([LaneSpec("cat", "cat src/hello.txt")])
    assert project.doit("run", "lane:cat").returncode == 0
    assert executed_tasks(project.doit("run", "lane:cat").stdout) == []

    project.write("src/hello.txt", "changed\n")
    changed = project.doit("run", "lane:cat")
    assert "execute:cat" in executed_tasks(changed.stdout)
    assert "[cat] changed" in changed.stdout

    assert project.doit("forget", "lane:cat").returncode == 0
    forced = project.doit("run", "lane:cat")
    assert executed_tasks(forced.stdout) == ["execute:cat", "collect:cat", "lane:cat"]


def test_excluded_paths_do_not_change_identity(make_project):
    project = make_project([LaneSpec("ls", "ls")], excludes={"main": ["/scratch", "*.log"]})
    assert project.doit("run", "lane:ls").returncode == 0
    project.write("scratch/notes.txt", "x")
    project.write("src/debug.log", "x")
    project.write("src/target/out.bin", "x")  # `target` is skipped at every depth
    again = project.doit("run", "lane:ls")
    assert "execute:ls" in reused_tasks(again.stdout)


def test_timeout_kills_the_whole_process_group(make_project, tmp_path):
    pidfile = tmp_path / "child.pid"
    project = make_project(
        [
            LaneSpec(
                "sleepy",
                f"(sleep 300 & echo $! > {pidfile}; wait) ; echo never",
                timeout_secs=1,
            )
        ]
    )
    started = time.monotonic()
    result = project.doit("run", "lane:sleepy")
    assert time.monotonic() - started < 30
    assert result.returncode == 1
    job = project.latest_run()["jobs"][0]  # type: ignore[index]
    assert job["status"] == "failed"
    assert job["message"] == "timed out after 1s"
    assert job["exit_code"] == 124
    child = int(pidfile.read_text())
    assert not Path(f"/proc/{child}").exists() or "Z" in _proc_state(child)


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return "Z"


def test_jsonl_events_and_json_output(make_project):
    project = make_project([LaneSpec("one", "echo 1")])
    jsonl = project.pikaci("run", "one", "--output", "jsonl")
    assert jsonl.returncode == 0, jsonl.stderr
    events = [orjson.loads(line) for line in jsonl.stdout.splitlines() if line.strip()]
    assert [e["event"] for e in events] == [
        "run_started",
        "job_started",
        "job_finished",
        "run_finished",
    ]
    started = events[0]
    assert set(started) == {
        "event",
        "run_id",
        "created_at",
        "rerun_of",
        "target_id",
        "target_description",
    }
    assert started["rerun_of"] is None  # optional fields are present as null
    assert events[2]["job"]["status"] == "passed"
    assert events[3]["run"]["status"] == "passed"
    assert "[one] 1" in jsonl.stderr  # console output never pollutes the event stream

    as_json = project.pikaci("run", "one", "--output", "json")
    assert as_json.returncode == 0
    record = orjson.loads(as_json.stdout)
    assert record["jobs"][0]["reused_from_run"] == started["run_id"]


def test_console_script_exit_codes_and_unknown_job(make_project):
    project = make_project([LaneSpec("ok", "true"), LaneSpec("ko", "false", target="other")])
    assert project.pikaci("run", "main").returncode == 0
    assert project.pikaci("run", "lane:ko").returncode == 1
    unknown = project.pikaci("run", "nope")
    assert unknown.returncode == 1
    assert "unknown job `nope`" in unknown.stderr
    assert "Traceback" not in unknown.stderr


def test_concurrent_doit_processes_keep_both_records_and_results(make_project):
    project = make_project([LaneSpec("a", "sleep 1; echo a"), LaneSpec("b", "sleep 1; echo b")])
    procs = [
        subprocess.Popen(
            [*DOIT, "run", f"lane:{lane}"],
            cwd=project.root,
            env=project.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for lane in ("a", "b")
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, out + err
    runs = [project.run_record(run_id) for run_id in project.run_ids()]
    assert sorted(run["jobs"][0]["id"] for run in runs) == ["a", "b"]  # type: ignore[index]
    assert all(run["status"] == "passed" for run in runs)
    both = project.doit("run", "lane:a", "lane:b")
    assert executed_tasks(both.stdout) == []
    assert {"execute:a", "execute:b"} <= set(reused_tasks(both.stdout))


def test_parallel_threads_run_lanes_together(make_project):
    project = make_project([LaneSpec(f"p{i}", "sleep 1") for i in range(3)])
    started = time.monotonic()
    result = project.doit("run", "-n", "3", "-P", "thread", "target:main")
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert elapsed < 2.8, f"3 one-second lanes took {elapsed:.1f}s with -n 3"
    record = project.latest_run()
    assert [job["status"] for job in record["jobs"]] == ["passed"] * 3  # type: ignore[union-attr]


def test_doit_list_info_and_clean(make_project):
    project = make_project([LaneSpec("x", "true")])
    listing = project.doit("list", "--all")
    assert listing.returncode == 0
    names = {line.split()[0] for line in listing.stdout.splitlines() if line.strip()}
    assert {"lane:x", "execute:x", "collect:x", "snapshot:main", "target:main"} <= names
    assert not (project.state_root / "runs").exists()  # listing creates no run

    assert project.doit("run", "lane:x").returncode == 0
    info = project.doit("info", "execute:x")
    assert info.returncode == 0
    assert "up-to-date" in info.stdout
    project.write("src/new.txt", "n")
    # info evaluates without running anything: the snapshot is what is out of date ...
    info = project.doit("info", "snapshot:main")
    assert "status     : run" in info.stdout
    assert "source_fingerprint_unchanged(main:" in info.stdout
    # ... and once the new snapshot exists, the lane says why it will run
    assert project.doit("run", "snapshot:main").returncode == 0
    info = project.doit("info", "execute:x")
    assert "lane_inputs_unchanged(x: inputs changed" in info.stdout

    workspace = project.state_root / "cache" / "host-local" / "lane-x" / "workspace"
    assert workspace.is_dir()
    assert project.doit("clean", "execute:x").returncode == 0
    assert not workspace.exists()
    snapshots = project.state_root / "cache" / "snapshots" / "by-target" / "main"
    assert snapshots.is_symlink()
    assert project.doit("clean", "snapshot:main").returncode == 0
    assert not snapshots.exists()
    rebuilt = project.doit("run", "lane:x")
    assert "snapshot:main" in executed_tasks(rebuilt.stdout)


@pytest.mark.parametrize(
    ("lane_src", "expected"),
    [
        (
            "Lane(id='l', command='true', execution=Execution('remote_ssh', 'tart'))",
            "lane `l`: placement `remote_ssh` with runtime `tart` is not supported",
        ),
        (
            "Lane(id='l', command='true', execution=Execution('local', 'host_process'), "
            "timeout_secs=0)",
            "lane `l`: field `timeout_secs` must be a positive integer of at most 2592000 (30 days), got 0",
        ),
        (
            "Lane(id='bad id', command='true', execution=Execution('local', 'host_process'))",
            "invalid id 'bad id'",
        ),
        (
            "Lane(id='l', command='', execution=Execution('local', 'host_process'))",
            "lane `l`: field `command` must be a non-empty string",
        ),
    ],
)
def test_bad_catalog_is_one_line_error(make_project, lane_src, expected):
    project = make_project([LaneSpec("placeholder", "true")])
    project.write(
        "dodo.py",
        "from pikaci.catalog import Catalog, Execution, Lane, Target\n"
        "from pikaci.graph import declare\n"
        f"CATALOG = Catalog(targets=[Target(id='t', lanes=[{lane_src}])])\n"
        "DOIT_CONFIG, task_pikaci = declare(CATALOG, __file__)\n",
    )
    for result in (project.doit("list"), project.pikaci("run", "t")):
        assert result.returncode != 0
        assert expected in result.stderr
        assert "Traceback" not in result.stderr


def test_orchestrator_error_fails_the_job_and_closes_the_run(make_project):
    project = make_project([LaneSpec("x", "true")])
    blocker = project.state_root / "cache" / "host-local"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a directory")  # the lane's workspace cannot be materialized
    result = project.doit("run", "lane:x")
    assert result.returncode != 0
    assert "Traceback" not in result.stdout
    record = project.latest_run()
    assert record["status"] == "failed" and record["finished_at"]
    (job,) = record["jobs"]  # type: ignore[misc]
    assert job["status"] == "failed"
    assert job["message"].startswith("execute failed: ")
    assert "\n" not in job["message"]
    host_log = Path(job["host_log_path"]).read_text()
    assert "Traceback" in host_log  # the detail goes to the job's log, not the console


def test_failed_snapshot_fails_its_lanes_before_execute(make_project):
    project = make_project([LaneSpec("x", "true"), LaneSpec("y", "true")])
    os.mkfifo(project.root / "src" / "pipe")  # special files cannot be snapshotted
    result = project.doit("run", "target:main")
    assert result.returncode != 0
    assert "pipe" in result.stdout
    record = project.latest_run()
    assert record["status"] == "failed" and record["finished_at"]
    for job in record["jobs"]:  # type: ignore[union-attr]
        assert job["status"] == "failed"
        assert job["message"].startswith("prepare node `snapshot-main` failed before execute: ")
    assert record["prepare_timings"][0]["node_id"] == "snapshot-main"  # type: ignore[index]


def test_a_state_root_that_is_a_file_is_one_line_not_a_traceback(make_project, tmp_path):
    project = make_project([LaneSpec("a", "true")])
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    env = {**project.env, "PIKACI_STATE_ROOT": str(blocker)}
    for command in (["list"], ["run", "lane:a"]):
        done = project.doit(*command, env=env)
        assert done.returncode != 0
        assert f"ERROR: state root {blocker}: File exists" in done.stdout + done.stderr
        assert "Traceback" not in done.stdout + done.stderr
    via_cli = project.pikaci("run", "a", env=env)
    assert via_cli.returncode == 1 and "Traceback" not in via_cli.stderr
    assert via_cli.stderr == f"ERROR: state root {blocker}: File exists\n"
