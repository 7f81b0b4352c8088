"""The inspection commands of the console script, over real runs."""

from __future__ import annotations

import orjson
import pytest

from tests.fixtures.projects import LaneSpec, executed_tasks


@pytest.fixture
def project_with_runs(make_project):
    project = make_project(
        [
            LaneSpec("a", 'echo alpha-out; echo guest-side > "$ARTIFACTS/guest.log"'),
            LaneSpec("b", "echo beta-out"),
        ]
    )
    for _ in range(3):
        assert project.doit("forget", "--all").returncode == 0
        assert project.doit("run", "target:main").returncode == 0
    return project


def test_list_survives_a_corrupt_run(project_with_runs):
    project = project_with_runs
    ids = project.run_ids()
    corrupt = ids[1]
    (project.state_root / "runs" / corrupt / "run.json").write_text('{"run_id": "trunc')
    listing = project.pikaci("list")
    assert listing.returncode == 0
    lines = listing.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == [ids[2], ids[0]]  # newest first
    listed_id, status, target, created_at = lines[0].split("\t")
    assert (listed_id, status, target) == (ids[2], "passed", "main")
    assert created_at == project.run_record(ids[2])["created_at"]
    warnings = listing.stderr.strip().splitlines()
    assert len(warnings) == 1 and corrupt in warnings[0]

    status = project.pikaci("status", corrupt)
    assert status.returncode == 1
    assert status.stderr.startswith("pikaci: error: ")
    assert corrupt in status.stderr and "invalid JSON" in status.stderr
    assert len(status.stderr.strip().splitlines()) == 1


def test_status_shapes(project_with_runs):
    project = project_with_runs
    run_id = project.run_ids()[-1]
    human = project.pikaci("status", run_id).stdout.splitlines()
    assert human[0] == f"{run_id} main passed"
    assert human[-2:] == ["a passed", "b passed"]
    assert "changed_files=0" in human
    as_json = orjson.loads(project.pikaci("status", run_id, "--json").stdout)
    assert as_json["run_id"] == run_id and len(as_json["jobs"]) == 2
    missing = project.pikaci("status", "20200101T000000Z-00000000")
    assert missing.returncode == 1 and "not found" in missing.stderr
    invalid = project.pikaci("status", "../../etc")
    assert invalid.returncode == 1 and "invalid run id" in invalid.stderr


def test_logs_shapes(project_with_runs):
    project = project_with_runs
    run_id = project.run_ids()[-1]
    both = project.pikaci("logs", run_id)
    assert both.returncode == 0
    host_part, guest_part = both.stdout.split("== guest ==\n")
    assert host_part.startswith("== host ==\n") and "alpha-out" in host_part  # first job
    assert guest_part == "guest-side\n"
    host = project.pikaci("logs", run_id, "--job", "b", "--kind", "host")
    assert "beta-out" in host.stdout and "== guest ==" not in host.stdout
    meta = orjson.loads(project.pikaci("logs", run_id, "--metadata-json").stdout)
    assert meta["run_id"] == run_id and meta["status"] == "passed"
    assert [job["id"] for job in meta["jobs"]] == ["a", "b"]
    assert all(job["host_log_exists"] and job["guest_log_exists"] for job in meta["jobs"])
    one = orjson.loads(project.pikaci("logs", run_id, "--job", "b", "--metadata-json").stdout)
    assert [job["id"] for job in one["jobs"]] == ["b"]
    unknown = project.pikaci("logs", run_id, "--job", "zzz")
    assert unknown.returncode == 1 and "no job `zzz`" in unknown.stderr
    (project.job_dir(run_id, "b") / "artifacts" / "guest.log").unlink()
    gone = project.pikaci("logs", run_id, "--job", "b", "--kind", "guest")
    assert gone.returncode == 1 and "cannot read" in gone.stderr
    meta = orjson.loads(project.pikaci("logs", run_id, "--job", "b", "--metadata-json").stdout)
    assert meta["jobs"][0]["guest_log_exists"] is False


def test_prepared_outputs_shapes(project_with_runs):
    project = project_with_runs
    run_id = project.run_ids()[-1]
    human = project.pikaci("prepared-outputs", run_id)
    assert human.stdout.splitlines() == [f"run_id={run_id}", "schema_version=1", "outputs=0"]
    as_json = orjson.loads(project.pikaci("prepared-outputs", run_id, "--json").stdout)
    assert as_json == {"schema_version": 1, "outputs": []}
    (project.state_root / "runs" / run_id / "prepared-outputs.json").unlink()
    absent = project.pikaci("prepared-outputs", run_id)
    assert absent.returncode == 1
    assert f"prepared outputs not found for run `{run_id}`" in absent.stderr


def test_gc_keeps_newest_runs(project_with_runs):
    project = project_with_runs
    ids = sorted(project.run_ids())
    result = project.pikaci("gc", "--keep-runs", "1")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0] == "removed_runs=2"
    assert sorted(lines[1:3]) == ids[:2]
    assert sorted(project.run_ids()) == ids[2:]
    # every run used the same snapshot, which the kept run still references
    assert lines[-1] == "removed_snapshots=0"
    assert project.pikaci("gc", "--keep-runs", "0").stdout.splitlines()[-1] == "removed_snapshots=1"
    again = project.doit("run", "target:main")  # a removed snapshot is rebuilt
    assert again.returncode == 0 and "snapshot:main" in executed_tasks(again.stdout)


def test_rerun_executes_on_the_old_snapshot(project_with_runs):
    project = project_with_runs
    old = project.run_ids()[-1]
    project.write("src/hello.txt", "changed after the run\n")
    result = project.pikaci("rerun", old, "--output", "json")
    assert result.returncode == 0, result.stderr
    record = orjson.loads(result.stdout)
    assert record["rerun_of"] == old and record["message"] == f"rerun of {old}"
    assert record["snapshot_dir"] == project.run_record(old)["snapshot_dir"]
    assert [job["status"] for job in record["jobs"]] == ["passed", "passed"]
    assert all(job["reused_from_run"] is None for job in record["jobs"])  # really executed
    # doit's own state is untouched: the next normal run still sees the source change
    after = project.doit("run", "target:main")
    assert "snapshot:main" in executed_tasks(after.stdout)
    missing = project.pikaci("rerun", "20200101T000000Z-00000000")
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_a_moved_state_root_keeps_its_logs_and_runs(project_with_runs, tmp_path):
    """Records name their logs by absolute path (the reference's contract); a root moved or
    restored elsewhere still finds them, below its own `runs/`."""
    project = project_with_runs
    run_id = project.run_ids()[-1]
    moved = tmp_path / "restored" / "state"
    moved.parent.mkdir()
    project.state_root.rename(moved)
    env = {**project.env, "PIKACI_STATE_ROOT": str(moved)}
    logs = project.pikaci("logs", run_id, env=env)
    assert logs.returncode == 0, logs.stderr
    assert "alpha-out" in logs.stdout and "guest-side" in logs.stdout
    meta = orjson.loads(project.pikaci("logs", run_id, "--metadata-json", env=env).stdout)
    assert all(job["host_log_exists"] and job["guest_log_exists"] for job in meta["jobs"])
    listing = project.pikaci("list", env=env)
    assert listing.returncode == 0 and len(listing.stdout.splitlines()) == 3


def test_run_prints_the_result_lines_alone_on_stdout(make_project):
    """§1.1: `<run_id> <job_id> <status>` per job on stdout; doit's console, the lanes' output
    and the jobs' messages on stderr."""
    project = make_project([LaneSpec("a", "echo alpha-out"), LaneSpec("b", "exit 4")])
    done = project.pikaci("run", "main", "--continue")
    assert done.returncode == 1
    (run_id,) = project.run_ids()
    assert done.stdout == f"{run_id} a passed\n{run_id} b failed\n"
    assert "alpha-out" in done.stderr and "execute:a" in done.stderr
    assert "pikaci: b: host-local command exited with 4" in done.stderr
    # `pikaci doit` and `doit` keep doit's own console on stdout
    through_doit = project.pikaci("doit", "run", "lane:a")
    assert "lane:a" in through_doit.stdout


def test_rerun_runs_the_old_runs_target_with_its_metadata(make_project):
    """§2.8: the target again (every lane of it), not only the lanes the old run ran."""
    project = make_project([LaneSpec("a", "true"), LaneSpec("b", "true")])
    assert project.pikaci("run", "a").returncode == 0
    (old,) = project.run_ids()
    record = project.run_record(old)
    assert record["target_id"] == "main" and [j["id"] for j in record["jobs"]] == ["a"]
    record["changed_files"] = ["src/hello.txt"]
    record["prepared_output_mode"] = "fulfill_request_cli_v1"
    (project.state_root / "runs" / old / "run.json").write_bytes(orjson.dumps(record))
    done = project.pikaci("rerun", old)
    assert done.returncode == 0, done.stderr
    new = project.run_ids()[-1]
    assert done.stdout == f"{new} a passed\n{new} b passed\n"
    rerun = project.run_record(new)
    assert rerun["rerun_of"] == old and rerun["target_id"] == "main"
    assert rerun["changed_files"] == ["src/hello.txt"]
    assert rerun["prepared_output_mode"] == "fulfill_request_cli_v1"


def test_rerun_of_a_skipped_run_records_a_new_skipped_run(make_project):
    project = make_project([LaneSpec("a", "true")])
    assert project.pikaci("run", "a").returncode == 0
    (old,) = project.run_ids()
    record = project.run_record(old)
    record.update(status="skipped", jobs=[], message="nothing changed", changed_files=["x"])
    (project.state_root / "runs" / old / "run.json").write_bytes(orjson.dumps(record))
    done = project.pikaci("rerun", old)
    assert done.returncode == 0, done.stderr
    new = project.run_ids()[-1]
    assert new != old and done.stdout == f"{new} main skipped\n"
    assert f"rerun of {old}" in done.stderr
    skipped = project.run_record(new)
    assert skipped["status"] == "skipped" and skipped["rerun_of"] == old
    assert skipped["jobs"] == [] and skipped["changed_files"] == ["x"]
    assert skipped["finished_at"] and skipped["message"] == f"rerun of {old}"
    events = project.pikaci("rerun", old, "--output", "jsonl")
    kinds = [orjson.loads(line)["event"] for line in events.stdout.splitlines()]
    assert kinds == ["run_started", "run_finished"]
    assert project.pikaci("status", new).stdout.startswith(f"{new} main skipped\n")


def test_the_retired_incus_lanes_switch_refuses_every_command(make_project):
    project = make_project([LaneSpec("a", "true")])
    env = {"PIKACI_REMOTE_LINUX_VM_INCUS_LANES": "1"}
    for argv in (["run", "a"], ["list"]):
        done = project.pikaci(*argv, env=env)
        assert done.returncode == 1
        assert done.stderr.startswith(
            "pikaci: error: PIKACI_REMOTE_LINUX_VM_INCUS_LANES is no longer supported"
        )
        assert "PIKACI_REMOTE_LINUX_VM_BACKEND=incus|auto" in done.stderr
    through_doit = project.doit("run", "lane:a", env=env)
    assert through_doit.returncode != 0
    assert "PIKACI_REMOTE_LINUX_VM_INCUS_LANES is no longer supported" in (
        through_doit.stdout + through_doit.stderr
    )
    assert project.run_ids() == []
    assert project.pikaci("list", env={"PIKACI_REMOTE_LINUX_VM_INCUS_LANES": " "}).returncode == 0
