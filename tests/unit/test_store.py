"""The state root of `pikaci.store`: atomic writes, run locks, loading, listing and gc."""

from __future__ import annotations

import io
import multiprocessing
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator, List, Optional

import orjson
import pytest

from pikaci.model import (
    RUN_PASSED,
    RUN_RUNNING,
    JobRecord,
    PreparedOutputsRecord,
    RealizedPreparedOutputRecord,
    RecordError,
    RunRecord,
    dumps_pretty,
)
from pikaci.retention import gc_runs
from pikaci.store import (
    ENV_STATE_ROOT,
    RunNotFound,
    RunWriter,
    StateRoot,
    StoreError,
    atomic_write_bytes,
    list_runs,
    load_logs_metadata,
    load_run_bundle,
    load_run_record,
    resolve_state_root,
    run_is_active,
)

FORK = multiprocessing.get_context("fork")


@pytest.fixture
def fast_tmp(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs directory when there is one: every atomic write fsyncs, ~4 ms each on ext4."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        with tempfile.TemporaryDirectory(dir=shm, prefix="pikaci-test-") as name:
            yield Path(name)
    else:
        yield tmp_path


@pytest.fixture
def state(fast_tmp: Path) -> StateRoot:
    return StateRoot(fast_tmp / "state")


def run_record(run_id: str, created_at: Optional[str] = None, **fields: Any) -> RunRecord:
    if created_at is None:
        stamp = run_id[:15]
        created_at = (
            f"{stamp[0:4]}-{stamp[4:6]}-{stamp[6:8]}T{stamp[9:11]}:{stamp[11:13]}:{stamp[13:15]}"
            ".000000+00:00"
        )
    return RunRecord(run_id=run_id, created_at=created_at, **fields)


def put_run(state: StateRoot, record: RunRecord) -> Path:
    """Write run.json directly (no fsync): fixtures for the readers."""
    run_dir = state.runs_dir / record.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_bytes(dumps_pretty(record.to_dict()))
    return run_dir


def leftovers(directory: Path) -> List[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name)


# -- resolve_state_root -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "env", "expected"),
    [
        ("/abs/flag", "/abs/env", "/abs/flag"),
        ("rel/flag", "/abs/env", "{cwd}/rel/flag"),
        (None, "/abs/env", "/abs/env"),
        (None, "rel/env", "{cwd}/rel/env"),
        (None, "  /abs/padded  ", "/abs/padded"),
        (None, "", "{cwd}/.pikaci"),
        (None, "   ", "{cwd}/.pikaci"),
        (None, None, "{cwd}/.pikaci"),
        ("", "/abs/env", "/abs/env"),
    ],
)
def test_resolve_state_root_precedence(tmp_path, flag, env, expected):
    environ = {} if env is None else {ENV_STATE_ROOT: env}
    resolved = resolve_state_root(flag, environ=environ, cwd=tmp_path)
    assert resolved == Path(expected.format(cwd=tmp_path))
    assert resolved.is_absolute()


def test_resolve_state_root_uses_process_env_cwd_and_home(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(ENV_STATE_ROOT, raising=False)
    assert resolve_state_root() == tmp_path / ".pikaci"
    monkeypatch.setenv(ENV_STATE_ROOT, "from-env")
    assert resolve_state_root() == tmp_path / "from-env"
    assert resolve_state_root("from-flag") == tmp_path / "from-flag"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_state_root("~/state", environ={}) == tmp_path / "home" / "state"


# -- atomic writes ----------------------------------------------------------------------------


def test_atomic_write_creates_parents_replaces_and_leaves_no_temp_files(fast_tmp):
    path = fast_tmp / "a" / "b" / "run.json"
    atomic_write_bytes(path, b'{"v": 1}')
    assert path.read_bytes() == b'{"v": 1}'
    atomic_write_bytes(path, b"{}")
    assert path.read_bytes() == b"{}"
    assert sorted(p.name for p in path.parent.iterdir()) == ["run.json"]


def test_atomic_write_failure_removes_its_temp_file(fast_tmp):
    target = fast_tmp / "run.json"
    target.mkdir()
    (target / "keep").write_text("x")  # renaming a file over a non-empty directory fails
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"{}")
    assert leftovers(fast_tmp) == []
    assert (target / "keep").read_text() == "x"


def test_atomic_write_readers_never_see_a_partial_file(fast_tmp):
    path = fast_tmp / "run.json"
    atomic_write_bytes(path, orjson.dumps({"i": -1}))
    stop = threading.Event()
    reads: List[int] = []
    torn: List[bytes] = []

    def reader() -> None:
        while not stop.is_set():
            raw = path.read_bytes()
            try:
                reads.append(orjson.loads(raw)["i"])
            except orjson.JSONDecodeError:
                torn.append(raw[:80])

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(500):
            # sizes vary so an in-place rewrite would show up as truncated JSON
            atomic_write_bytes(path, orjson.dumps({"i": i, "pad": "x" * (1000 + i * 7919 % 60000)}))
    finally:
        stop.set()
        thread.join()
    assert torn == []
    assert len(reads) > 0
    assert reads == sorted(reads), "a reader saw an older version after a newer one"
    assert orjson.loads(path.read_bytes())["i"] == 499
    assert leftovers(fast_tmp) == []


# -- RunWriter --------------------------------------------------------------------------------

RUN_ID = "20260310T223310Z-e53c83eb"


def test_run_writer_create_read_update(state):
    writer = RunWriter(state.run_dir(RUN_ID))
    writer.create(run_record(RUN_ID, target_id="main"))
    assert (state.run_dir(RUN_ID) / "jobs").is_dir()
    assert writer.read().target_id == "main"
    updated = writer.update(lambda run: setattr(run, "status", RUN_PASSED))
    assert updated.status == RUN_PASSED
    assert load_run_record(state, RUN_ID).status == RUN_PASSED
    assert load_run_record(state, RUN_ID).target_id == "main"


def test_write_job_upserts_one_entry_per_id_and_mirrors_status_json(state):
    run_dir = state.run_dir(RUN_ID)
    writer = RunWriter(run_dir)
    writer.create(run_record(RUN_ID))
    writer.write_job(JobRecord(id="a", status=RUN_RUNNING))
    writer.write_job(JobRecord(id="b", status=RUN_RUNNING))
    returned = writer.write_job(JobRecord(id="a", status=RUN_PASSED, exit_code=0))
    run = orjson.loads((run_dir / "run.json").read_bytes())
    assert [job["id"] for job in run["jobs"]] == ["a", "b"]
    assert [job.id for job in returned.jobs] == ["a", "b"]
    for entry in run["jobs"]:
        status = orjson.loads((run_dir / "jobs" / entry["id"] / "status.json").read_bytes())
        assert status == entry
        assert list(status) == list(entry)
    assert run["jobs"][0]["status"] == RUN_PASSED and run["jobs"][0]["exit_code"] == 0
    assert writer.read_job("a").status == RUN_PASSED
    assert leftovers(run_dir) == [] and leftovers(run_dir / "jobs" / "a") == []


@pytest.mark.parametrize("round_", range(2))
def test_concurrent_write_job_from_threads_keeps_every_job(tmp_path, round_):
    # on disk, not tmpfs: the fsyncs widen the read-modify-write window a missing lock would open
    state = StateRoot(tmp_path / "state")
    run_dir = state.run_dir(RUN_ID)
    RunWriter(run_dir).create(run_record(RUN_ID))
    start = threading.Barrier(8)
    errors: List[BaseException] = []

    def work(job_id: str) -> None:
        try:
            writer = RunWriter(run_dir)  # separate instances: the lock is the file, not the object
            start.wait(timeout=10)
            writer.write_job(JobRecord(id=job_id, status=RUN_RUNNING))
            writer.write_job(JobRecord(id=job_id, status=RUN_PASSED))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"job-{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    jobs = load_run_record(state, RUN_ID).jobs
    assert sorted(job.id for job in jobs) == [f"job-{n}" for n in range(8)]
    assert {job.status for job in jobs} == {RUN_PASSED}


def _write_jobs_in_child(run_dir: str, job_ids: List[str], start: Any) -> None:
    start.wait(10)
    writer = RunWriter(Path(run_dir))
    for job_id in job_ids:
        writer.write_job(JobRecord(id=job_id, status=RUN_RUNNING))
        writer.write_job(JobRecord(id=job_id, status=RUN_PASSED))


def test_concurrent_write_job_from_processes_keeps_every_job(state):
    run_dir = state.run_dir(RUN_ID)
    RunWriter(run_dir).create(run_record(RUN_ID))
    start = FORK.Event()
    children = [
        FORK.Process(
            target=_write_jobs_in_child, args=(str(run_dir), [f"p{n}-a", f"p{n}-b"], start)
        )
        for n in range(4)
    ]
    for child in children:
        child.start()
    start.set()
    for child in children:
        child.join(30)
    assert [child.exitcode for child in children] == [0, 0, 0, 0]
    jobs = load_run_record(state, RUN_ID).jobs
    expected = sorted(f"p{n}-{x}" for n in range(4) for x in "ab")
    assert sorted(job.id for job in jobs) == expected
    assert {job.status for job in jobs} == {RUN_PASSED}


# -- list_runs --------------------------------------------------------------------------------


def test_list_runs_without_a_runs_dir_is_empty(state):
    listing = list_runs(state)
    assert listing.runs == [] and listing.problems == []


def test_list_runs_sorts_newest_created_at_first(state):
    # created in this order; in the same second the random suffixes sort differently
    created = [
        ("20260310T223309Z-ffffffff", "2026-03-10T22:33:09.999999+00:00"),
        ("20260310T223310Z-dddddddd", "2026-03-10T22:33:10.100000+00:00"),
        ("20260310T223310Z-aaaaaaaa", "2026-03-10T22:33:10.200000+00:00"),
        ("20260310T223310Z-cccccccc", "2026-03-10T22:33:10.300000001+00:00"),
        ("20260310T223310Z-bbbbbbbb", "2026-03-10T22:33:10.400000+00:00"),
        # upstream-style nine digits and another offset: 22:33:11 UTC, the newest
        ("20260310T223311Z-00000000", "2026-03-10T17:33:11.000000000-05:00"),
    ]
    for run_id, created_at in reversed(created):
        put_run(state, run_record(run_id, created_at))
    listing = list_runs(state)
    assert listing.problems == []
    assert [run.run_id for run in listing.runs] == [run_id for run_id, _ in reversed(created)]


def test_list_runs_reports_undecodable_runs_and_lists_the_rest(state):
    good_old = put_run(state, run_record("20260310T223310Z-00000001"))
    good_new = put_run(state, run_record("20260311T000000Z-00000002"))
    truncated = state.runs_dir / "20260310T223311Z-00000003" / "run.json"
    truncated.parent.mkdir(parents=True)
    truncated.write_bytes(dumps_pretty(run_record("20260310T223311Z-00000003").to_dict())[:40])
    as_list = state.runs_dir / "20260310T223312Z-00000004" / "run.json"
    as_list.parent.mkdir(parents=True)
    as_list.write_bytes(b"[]\n")
    bad_status = put_run(state, run_record("20260310T223313Z-00000005", status="exploded"))
    without_record = state.runs_dir / "20260310T223314Z-00000006"
    (without_record / "jobs").mkdir(parents=True)
    # ignored entirely: hidden directories and plain files
    (state.runs_dir / ".trash" / "x").mkdir(parents=True)
    (state.runs_dir / "README").write_text("not a run\n")

    listing = list_runs(state)
    assert [run.run_id for run in listing.runs] == [good_new.name, good_old.name]
    assert len(listing.problems) == 4

    def problem_about(path: Path) -> str:
        (problem,) = [p for p in listing.problems if p.startswith(str(path))]
        return problem

    assert "invalid JSON" in problem_about(truncated)
    assert "expected a JSON object, got list" in problem_about(as_list)
    assert "unknown status 'exploded'" in problem_about(bad_status / "run.json")
    # a directory without run.json is not silently skipped (upstream skips it): it is reported
    assert "missing" in problem_about(without_record / "run.json")
    assert not any(".trash" in p or "README" in p for p in listing.problems)


def test_list_runs_reports_a_numeric_created_at_as_a_problem(state):
    put_run(state, run_record("20260310T223310Z-00000001"))
    bad = state.runs_dir / "20260310T223311Z-00000002" / "run.json"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(
        orjson.dumps(
            {"run_id": "20260310T223311Z-00000002", "status": "passed", "created_at": 1773181991}
        )
    )
    listing = list_runs(state)
    assert [run.run_id for run in listing.runs] == ["20260310T223310Z-00000001"]
    assert len(listing.problems) == 1


# -- load_run_record --------------------------------------------------------------------------


def test_load_run_record_of_a_missing_run(state):
    with pytest.raises(RunNotFound, match=RUN_ID):
        load_run_record(state, RUN_ID)


def test_load_run_record_of_a_corrupt_run(state):
    run_dir = put_run(state, run_record(RUN_ID))
    (run_dir / "run.json").write_bytes(b'{"run_id": ')
    with pytest.raises(RecordError, match=r"run\.json: invalid JSON"):
        load_run_record(state, RUN_ID)


@pytest.mark.parametrize(
    "run_id",
    [
        "../x",
        "20260101T000000Z-ZZZZZZZZ",
        "ABSOLUTE",
        "20260101T000000Z-0123abcd/../20260101T000000Z-0123abcd",
        ".",
        "",
    ],
)
def test_load_run_record_rejects_invalid_ids_before_touching_the_disk(state, run_id):
    if run_id == "ABSOLUTE":
        run_id = str(state.root.parent / "elsewhere")
    # a decodable decoy where the unvalidated path would lead
    decoy = state.runs_dir / run_id / "run.json"
    decoy.parent.mkdir(parents=True, exist_ok=True)
    decoy.write_bytes(dumps_pretty(run_record("20260101T000000Z-0123abcd").to_dict()))
    with pytest.raises(StoreError, match="invalid run id") as info:
        load_run_record(state, run_id)
    assert not isinstance(info.value, RunNotFound)


def test_invalid_ids_do_not_create_anything(state):
    with pytest.raises(StoreError):
        load_run_record(state, "../../etc")
    with pytest.raises(StoreError, match="invalid job id"):
        state.job_dir(RUN_ID, "../escape")
    assert not state.root.exists()


def test_load_run_record_rejects_an_id_with_a_trailing_newline(state):
    run_id = "20260101T000000Z-0123abcd\n"
    decoy = state.runs_dir / run_id / "run.json"
    decoy.parent.mkdir(parents=True)
    decoy.write_bytes(dumps_pretty(run_record("20260101T000000Z-0123abcd").to_dict()))
    with pytest.raises(StoreError, match="invalid run id"):
        load_run_record(state, run_id)


# -- logs metadata and bundles ----------------------------------------------------------------


def test_load_logs_metadata_flips_exists_flags(state, fast_tmp):
    run_dir = put_run(state, run_record(RUN_ID))
    default_host = run_dir / "jobs" / "a" / "host.log"
    default_guest = run_dir / "jobs" / "a" / "artifacts" / "guest.log"
    default_guest.parent.mkdir(parents=True)
    default_host.write_text("[pikaci] hi\n")
    default_guest.write_text("")
    explicit_host = fast_tmp / "elsewhere" / "host.log"
    explicit_guest = fast_tmp / "elsewhere" / "guest.log"
    explicit_guest.mkdir(parents=True)  # a directory is not a log file
    run = run_record(
        RUN_ID,
        status=RUN_PASSED,
        jobs=[
            JobRecord(id="a", status=RUN_PASSED),
            JobRecord(
                id="b",
                status=RUN_PASSED,
                host_log_path=str(explicit_host),
                guest_log_path=str(explicit_guest),
            ),
        ],
    )
    meta = load_logs_metadata(state, run).to_dict()
    assert list(meta) == ["run_id", "status", "jobs"]
    assert meta["run_id"] == RUN_ID and meta["status"] == RUN_PASSED
    assert [list(job) for job in meta["jobs"]] == [
        ["id", "host_log_path", "guest_log_path", "host_log_exists", "guest_log_exists"]
    ] * 2
    a, b = meta["jobs"]
    assert a == {
        "id": "a",
        "host_log_path": str(default_host),
        "guest_log_path": str(default_guest),
        "host_log_exists": True,
        "guest_log_exists": True,
    }
    assert b["host_log_path"] == str(explicit_host) and b["guest_log_path"] == str(explicit_guest)
    assert b["host_log_exists"] is False and b["guest_log_exists"] is False
    default_guest.unlink()
    a = load_logs_metadata(state, run).to_dict()["jobs"][0]
    assert a["host_log_exists"] is True and a["guest_log_exists"] is False


def _bundle_run(state: StateRoot, **fields: Any) -> Path:
    run = run_record(RUN_ID, jobs=[JobRecord(id="a", status=RUN_PASSED)], **fields)
    return put_run(state, run)


def test_load_run_bundle_without_prepared_outputs(state):
    _bundle_run(state)
    warnings = io.StringIO()
    bundle = load_run_bundle(state, RUN_ID, warnings)
    assert list(bundle) == ["run", "logs", "prepared_outputs"]
    assert bundle["prepared_outputs"] is None
    assert warnings.getvalue() == ""
    assert bundle["run"] == load_run_record(state, RUN_ID).to_dict()
    assert bundle["logs"]["jobs"][0]["id"] == "a"


def test_load_run_bundle_with_prepared_outputs_at_the_recorded_path(state, fast_tmp):
    record = PreparedOutputsRecord()
    record.upsert(RealizedPreparedOutputRecord(node_id="deps", realized_path="/nix/store/x"))
    elsewhere = fast_tmp / "outputs.json"
    elsewhere.write_bytes(dumps_pretty(record.to_dict()))
    _bundle_run(state, prepared_outputs_path=str(elsewhere))
    warnings = io.StringIO()
    bundle = load_run_bundle(state, RUN_ID, warnings)
    assert bundle["prepared_outputs"] == record.to_dict()
    assert warnings.getvalue() == ""


@pytest.mark.parametrize(
    "content",
    [
        b'{"schema_version": 1, "outputs": [',  # truncated
        b"[]",
        b'{"schema_version": 1, "outputs": [{"realized_path": "/nix/store/x"}]}',  # no node_id
    ],
)
def test_load_run_bundle_with_corrupt_prepared_outputs_warns_and_keeps_the_rest(state, content):
    run_dir = _bundle_run(state)
    (run_dir / "prepared-outputs.json").write_bytes(content)
    expected_run = load_run_record(state, RUN_ID).to_dict()
    warnings = io.StringIO()
    bundle = load_run_bundle(state, RUN_ID, warnings)
    assert bundle["prepared_outputs"] is None
    assert bundle["run"] == expected_run
    assert bundle["logs"]["run_id"] == RUN_ID and len(bundle["logs"]["jobs"]) == 1
    text = warnings.getvalue()
    assert text.startswith("warning: ignoring prepared outputs:")
    assert str(run_dir / "prepared-outputs.json") in text
    assert text.endswith("\n") and text.count("\n") == 1


def test_load_run_bundle_with_a_corrupt_or_missing_run(state):
    with pytest.raises(RunNotFound):
        load_run_bundle(state, RUN_ID, io.StringIO())
    run_dir = _bundle_run(state)
    (run_dir / "run.json").write_bytes(b'{"run_id": "2026')
    with pytest.raises(RecordError):
        load_run_bundle(state, RUN_ID, io.StringIO())


# -- run locks and gc -------------------------------------------------------------------------

GC_IDS = [
    "20260310T223309Z-ffffffff",
    "20260310T223310Z-0000000a",
    "20260310T223310Z-b0000000",
    "20260310T223310Z-c0000000",
    "20260311T000000Z-00000000",
]


def _gc_fixture(state: StateRoot) -> None:
    for run_id in reversed(GC_IDS):
        put_run(state, run_record(run_id))


def remaining(state: StateRoot) -> List[str]:
    return sorted(p.name for p in state.runs_dir.iterdir())


@pytest.mark.parametrize("keep", [0, 1, 2, 5, 9])
def test_gc_keeps_the_lexicographically_greatest_ids(state, keep):
    _gc_fixture(state)
    report = gc_runs(state, keep)
    kept = GC_IDS[len(GC_IDS) - min(keep, len(GC_IDS)) :]
    assert remaining(state) == kept
    assert report.removed_runs == GC_IDS[: len(GC_IDS) - len(kept)]
    assert report.kept_active == []


def test_gc_with_negative_keep_is_an_error_and_removes_nothing(state):
    _gc_fixture(state)
    with pytest.raises(StoreError, match="keep-runs"):
        gc_runs(state, -1)
    assert remaining(state) == GC_IDS


def test_gc_without_a_state_root(state):
    report = gc_runs(state, 0)
    assert report.removed_runs == [] and report.removed_snapshots == []


def test_run_is_active_follows_the_active_lock(state):
    run_dir = put_run(state, run_record(RUN_ID))
    assert run_is_active(run_dir) is False
    assert not (run_dir / ".active").exists(), "checking must not create the lock file"
    with RunWriter(run_dir).active():
        assert run_is_active(run_dir) is True
    assert (run_dir / ".active").exists()
    assert run_is_active(run_dir) is False


def test_gc_never_removes_a_run_whose_active_lock_is_held(state):
    _gc_fixture(state)
    oldest = state.runs_dir / GC_IDS[0]
    with RunWriter(oldest).active():
        report = gc_runs(state, 0)
        assert report.kept_active == [GC_IDS[0]]
        assert report.removed_runs == GC_IDS[1:]
        assert remaining(state) == [GC_IDS[0]]
    report = gc_runs(state, 0)
    assert report.removed_runs == [GC_IDS[0]]
    assert remaining(state) == []


def _hold_active_lock(run_dir: str, ready: Any, release: Any) -> None:
    with RunWriter(Path(run_dir)).active():
        ready.set()
        release.wait(30)


def test_gc_never_removes_a_run_locked_by_another_process(state):
    _gc_fixture(state)
    oldest = state.runs_dir / GC_IDS[0]
    ready, release = FORK.Event(), FORK.Event()
    child = FORK.Process(target=_hold_active_lock, args=(str(oldest), ready, release))
    child.start()
    try:
        assert ready.wait(10)
        assert run_is_active(oldest)
        report = gc_runs(state, 1)
        assert report.kept_active == [GC_IDS[0]]
        assert remaining(state) == [GC_IDS[0], GC_IDS[-1]]
    finally:
        release.set()
        child.join(10)
    assert child.exitcode == 0
    assert not run_is_active(oldest)
    assert gc_runs(state, 1).removed_runs == [GC_IDS[0]]


def test_gc_removes_unreferenced_snapshots_only(state):
    snapshots = state.snapshots_dir
    by_new, by_active, was_old, never = (c * 64 for c in "abcd")
    for name in [by_new, by_active, was_old, never, ".tmp-publishing", "by-target"]:
        (snapshots / name).mkdir(parents=True)
        (snapshots / name / "file").write_text(name)
    (snapshots / "by-target" / "main").symlink_to(snapshots / by_new)
    (snapshots / ("e" * 64)).write_text("a file, not a snapshot directory")
    put_run(state, run_record(GC_IDS[0], snapshot_dir=str(snapshots / by_active)))
    put_run(state, run_record(GC_IDS[1], snapshot_dir=str(snapshots / was_old)))
    put_run(state, run_record(GC_IDS[2], snapshot_dir=str(snapshots / by_new)))
    with RunWriter(state.runs_dir / GC_IDS[0]).active():
        report = gc_runs(state, 1)
    assert report.removed_runs == [GC_IDS[1]]
    assert report.kept_active == [GC_IDS[0]]
    assert report.removed_snapshots == [was_old, never]
    assert sorted(p.name for p in snapshots.iterdir()) == sorted(
        [".tmp-publishing", "by-target", by_new, by_active, "e" * 64]
    )
    assert (snapshots / by_new / "file").read_text() == by_new
    # the per-target pointers that graph.py maintains are not snapshots
    assert (snapshots / "by-target" / "main").resolve() == (snapshots / by_new).resolve()


def test_a_run_appears_complete_with_its_record_and_liveness_lock(state):
    run_dir = state.runs_dir / RUN_ID
    with RunWriter(run_dir).begin(run_record(RUN_ID)):
        assert run_is_active(run_dir)
        assert [r.run_id for r in list_runs(state).runs] == [RUN_ID]
        assert [p.name for p in state.runs_dir.iterdir()] == [RUN_ID], "no staging dir left"
    assert not run_is_active(run_dir)


def test_a_run_killed_before_it_appeared_is_invisible_and_gc_removes_it(state):
    abandoned = state.runs_dir / f".new-{RUN_ID}-4242"
    (abandoned / "jobs").mkdir(parents=True)
    put_run(state, run_record(GC_IDS[0]))
    listing = list_runs(state)
    assert listing.problems == [] and [r.run_id for r in listing.runs] == [GC_IDS[0]]
    gc_runs(state, 5)
    assert not abandoned.exists()
    assert remaining(state) == [GC_IDS[0]]
