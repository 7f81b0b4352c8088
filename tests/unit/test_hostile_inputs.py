"""Broken and hostile records, manifests and catalogs: one line naming the field, nothing lost."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import orjson
import pytest

from pikaci.catalog import Catalog, CatalogError, Execution, Lane, Target
from pikaci.forge.manifest import ForgeManifestError, load_manifest, parse_manifest
from pikaci.forge.selection import compute_plan
from pikaci.model import RecordError, RunRecord
from pikaci.retention import gc_runs, remove_abandoned_temps
from pikaci.server.app import make_app
from pikaci.store import StateRoot, list_runs, load_run_record
from tests.fixtures.api import BASE, SLUG, TOKENS, get
from tests.fixtures.serving import created, make_run, rid
from tests.fixtures.support import git

HOST = Execution("local", "host_process")


def record(run_id: str, **fields: Any) -> Dict[str, Any]:
    return {"run_id": run_id, "status": "passed", "created_at": created(run_id), **fields}


def put(state: StateRoot, run_id: str, data: Dict[str, Any]) -> Path:
    run_dir = state.runs_dir / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_bytes(orjson.dumps(data))
    return run_dir


# -- records ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "named", "expected"),
    [
        ({"snapshot_dir": 5}, "snapshot_dir", "a string, got int"),
        ({"target_description": 7}, "target_description", "a string or null, got int"),
        ({"git_head": ["x"]}, "git_head", "a string or null, got list"),
        ({"git_dirty": "yes"}, "git_dirty", "true or false or null, got str"),
        ({"uploads": [{"bytes": "3"}]}, "uploads[0].bytes", "an integer, got str"),
        ({"uploads": [{"seconds": True}]}, "uploads[0].seconds", "a number, got bool"),
        ({"prepare_timings": [{"node_id": 3}]}, "prepare_timings[0].node_id", "a string, got"),
        (
            {"jobs": [{"id": "a", "status": "passed", "host_log_path": 3}]},
            "jobs[0].host_log_path",
            "a string, got int",
        ),
        ({"changed_files": ["a", 1]}, "changed_files", "a list of strings"),
    ],
)
def test_a_wrong_typed_field_makes_the_record_corrupt_naming_it(
    fields: Dict[str, Any], named: str, expected: str
) -> None:
    with pytest.raises(RecordError) as caught:
        RunRecord.from_dict(record(rid(1), **fields), "run.json")
    assert str(caught.value).startswith(f"run.json.{named}: expected {expected}")


def test_a_null_where_a_value_is_required_takes_the_default() -> None:
    run = RunRecord.from_dict(record(rid(1), snapshot_dir=None, changed_files=None), "run.json")
    assert run.snapshot_dir == "" and run.changed_files == []


def test_wrong_typed_and_misnamed_records_are_listed_as_problems_and_served_as_404(
    tmp_path: Path,
) -> None:
    state = StateRoot(tmp_path / "state")
    make_run(state, rid(1))
    put(state, rid(2), record(rid(2), target_description=7))
    put(state, rid(3), record(rid(4)))  # names another run
    listing = list_runs(state)
    assert [run.run_id for run in listing.runs] == [rid(1)]
    assert len(listing.problems) == 2
    assert any("target_description: expected a string or null" in p for p in listing.problems)
    assert any(f"records run id {rid(4)!r}" in p for p in listing.problems)
    with pytest.raises(RecordError, match="records run id"):
        load_run_record(state, rid(3))
    app = make_app({SLUG: state}, TOKENS)
    for broken in (rid(2), rid(3)):
        for endpoint in ("run", "bundle", "logs"):
            status, body = get(app, f"{BASE}/{endpoint}/{broken}")
            assert status == 404, (endpoint, body)
    assert [run["run_id"] for run in get(app, f"{BASE}/runs")[1]["runs"]] == [rid(1)]


def test_gc_survives_a_wrong_typed_record_and_keeps_the_snapshots_it_names(
    tmp_path: Path,
) -> None:
    state = StateRoot(tmp_path / "state")
    for name in ("a" * 64, "b" * 64):
        (state.snapshots_dir / name).mkdir(parents=True)
    put(state, rid(1), record(rid(1), snapshot_dir=5, jobs=[{"snapshot_dir": f"/x/{'a' * 64}"}]))
    put(state, rid(2), record(rid(2)))
    (state.runs_dir / "zzz-x").mkdir()  # not a run: neither removed nor counted
    (state.runs_dir / rid(9)).symlink_to(tmp_path)  # a link: never followed, never removed
    report = gc_runs(state, keep_runs=2)
    assert report.removed_runs == []
    assert report.removed_snapshots == ["b" * 64]
    assert (state.snapshots_dir / ("a" * 64)).is_dir()
    assert sorted(report.skipped) == [
        f"runs/{rid(9)}: a symbolic link, not a run directory",
        "runs/zzz-x: not a run id",
    ]
    assert (state.runs_dir / "zzz-x").is_dir() and (state.runs_dir / rid(9)).is_symlink()
    assert gc_runs(state, keep_runs=0).removed_runs == [rid(1), rid(2)]


# -- the forge manifest ----------------------------------------------------------------------

MANIFEST: Dict[str, Any] = {
    "version": 1,
    "nightly_schedule_utc": "03:00",
    "branch": {"lanes": [{"id": "a", "command": ["true"], "paths": ["src/**"]}]},
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"branch": {"lane": [{"id": "a", "command": ["true"]}]}}, "[branch]: unknown key `lane`"),
        ({"nightlly": {"lanes": []}}, "unknown key `nightlly`"),
        ({"verison": 2}, "unknown key `verison`"),
        (
            {"branch": {"lanes": [{"id": "a", "command": ["x"], "pathz": []}]}},
            "branch lane `a`: unknown key `pathz`",
        ),
        ({"branch": {"lanes": [{"id": "a", "command": ["x"], "paths": [""]}]}}, "is empty"),
        (
            {"branch": {"lanes": [{"id": "a", "command": ["x"], "paths": ["/src/**"]}]}},
            "is absolute",
        ),
        (
            {"branch": {"lanes": [{"id": "a", "command": ["x"], "paths": ["src/../x"]}]}},
            "component",
        ),
    ],
)
def test_a_misspelt_or_impossible_manifest_entry_is_an_error(
    change: Dict[str, Any], message: str
) -> None:
    with pytest.raises(ForgeManifestError) as caught:
        parse_manifest({**MANIFEST, **change}, "ci/forge-lanes.toml")
    assert message in str(caught.value)
    assert str(caught.value).startswith("ci/forge-lanes.toml: ")


@pytest.mark.parametrize("content", [b"\x00\xff\xfe binary", b"x = " + b"[" * 5000])
def test_an_unreadable_manifest_is_one_line(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "forge-lanes.toml"
    path.write_bytes(content)
    with pytest.raises(ForgeManifestError) as caught:
        load_manifest(path, "ci/forge-lanes.toml")
    assert str(caught.value).startswith("ci/forge-lanes.toml: invalid TOML")
    assert "\n" not in str(caught.value)


def test_a_plan_over_no_declared_lanes_is_an_error_not_an_empty_pass(tmp_path: Path) -> None:
    (tmp_path / "ci").mkdir()
    (tmp_path / "ci" / "forge-lanes.toml").write_text(
        'version = 1\nnightly_schedule_utc = "03:00"\n'
        '[[nightly.lanes]]\nid = "n"\ncommand = ["true"]\n'
    )
    git(tmp_path, "init", "-q")
    with pytest.raises(ForgeManifestError, match="declares no branch lanes"):
        compute_plan(tmp_path, "branch", None, False)
    assert [s.lane.id for s in compute_plan(tmp_path, "nightly", None, False).selections] == ["n"]


# -- the catalog -----------------------------------------------------------------------------


def test_a_lane_without_execution_is_named() -> None:
    catalog = Catalog(targets=[Target(id="t", lanes=[Lane(id="nameless", command="true")])])
    with pytest.raises(CatalogError, match=r"^lane `nameless`: missing field `execution`"):
        catalog.validate()


@pytest.mark.parametrize("timeout", [10**30, 30 * 24 * 3600 + 1, 0, -1, True, 1.5])
def test_a_timeout_past_thirty_days_or_not_a_positive_integer_is_refused(timeout: Any) -> None:
    lane = Lane(id="l", command="true", execution=HOST, timeout_secs=timeout)
    with pytest.raises(CatalogError, match=r"^lane `l`: field `timeout_secs` must be"):
        Catalog(targets=[Target(id="t", lanes=[lane])]).validate()


def test_temp_directories_of_killed_snapshot_makers_are_swept(tmp_path: Path) -> None:
    import fcntl
    import os
    import subprocess

    store = tmp_path / "snapshots"
    store.mkdir()
    dead_pid = subprocess.Popen(["true"])  # a pid that has exited
    dead_pid.wait()
    dead = store / f".tmp-{dead_pid.pid}-aaaa"
    mine = store / f".tmp-{os.getpid()}-bbbb"  # a live maker, unlocked for a moment
    held = store / ".tmp-1-cccc"  # pid 1 lives; its lock says it is at work
    old = store / f".tmp-{os.getpid()}-dddd"
    unnamed = store / ".tmp-publishing"
    for path in (dead, mine, held, old, unnamed):
        (path / "x").mkdir(parents=True)
    os.utime(old, (0, 0))
    lock = os.open(held, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(lock, fcntl.LOCK_EX)
    os.utime(held, (0, 0))  # even an old one is kept while its lock is held
    try:
        removed = remove_abandoned_temps(store, ".tmp-")
    finally:
        os.close(lock)
    assert sorted(removed) == sorted([dead.name, old.name])
    assert sorted(p.name for p in store.iterdir()) == sorted([mine.name, held.name, unnamed.name])


@pytest.mark.parametrize("name", ["A=1;touch /tmp/x;B", "1ABC", "A B", "", "A-B"])
def test_env_names_are_plain_variable_names(name: str) -> None:
    lane = Lane(id="l", command="true", execution=HOST, env={name: "v"})
    with pytest.raises(CatalogError, match=r"field `env` must map variable names"):
        Catalog(targets=[Target(id="t", lanes=[lane])]).validate()


def test_a_record_path_with_a_nul_byte_is_refused_not_a_crash(tmp_path: Path) -> None:
    from pikaci.confined import RefusedFile, open_below, read_regular

    with pytest.raises(RefusedFile, match="NUL"):
        open_below(tmp_path, "/x/runs/a/log\x00")
    with pytest.raises(RefusedFile, match="NUL"):
        read_regular("/etc/passwd\x00")
    state = StateRoot(tmp_path / "state")
    put(
        state,
        rid(1),
        record(rid(1), jobs=[{"id": "a", "status": "passed", "host_log_path": "/x/runs/a\u0000"}]),
    )
    app = make_app({SLUG: state}, TOKENS)
    for endpoint in ("bundle", "logs"):
        status, _ = get(app, f"{BASE}/{endpoint}/{rid(1)}")
        assert status in (200, 404)  # an answer, never a 500
