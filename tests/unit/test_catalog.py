"""Catalog validation, execution labels and lane identity of `pikaci.catalog`."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, List, Optional

import pytest

from pikaci.catalog import (
    EXECUTOR_LABELS,
    PLACEMENTS,
    RUNTIMES,
    SUPPORTED_EXECUTIONS,
    Catalog,
    CatalogError,
    Execution,
    Lane,
    Target,
)
from pikaci.runtimes import RUNTIME_FACTORIES, runtime_for
from pikaci.snapshot import SnapshotFilter

LOCAL = Execution("local", "host_process")


def lane(lane_id: str = "build", **fields: Any) -> Lane:
    fields.setdefault("command", "make test")
    fields.setdefault("execution", LOCAL)
    return Lane(id=lane_id, **fields)


def target(target_id: str = "main", lanes: Optional[List[Any]] = None, **fields: Any) -> Target:
    return Target(id=target_id, lanes=[lane()] if lanes is None else lanes, **fields)


def error_of(catalog: Catalog) -> str:
    with pytest.raises(CatalogError) as info:
        catalog.validate()
    message = str(info.value)
    assert "\n" not in message, "errors are one line"
    return message


def test_a_good_catalog_validates_and_is_returned():
    catalog = Catalog(
        targets=[
            target(
                "pre-merge",
                description="everything before merge",
                snapshot_excludes=("node_modules", "/vendor/big", "*.log"),
                lanes=[
                    lane("unit", timeout_secs=1, env={"RUST_LOG": "debug", "EMPTY": ""}),
                    lane("lint", command="ruff check .", description="lint", env={"X": "a=b"}),
                ],
            ),
            target("nightly", lanes=(lane("bench.v2_x", timeout_secs=10**6),)),
            target("t" * 128, lanes=[lane("L" * 128)]),
        ]
    )
    assert catalog.validate() is catalog
    found = catalog.lane("lint")
    assert found is not None and found[0].id == "pre-merge" and found[1].command == "ruff check ."
    nightly = catalog.target("nightly")
    assert nightly is not None and nightly.lanes[0].id == "bench.v2_x"
    assert catalog.target("missing") is None and catalog.lane("missing") is None
    assert [ln.id for _, ln in catalog.iter_lanes()] == ["unit", "lint", "bench.v2_x", "L" * 128]


@pytest.mark.parametrize("targets", [[], (), None, "main"])
def test_targets_must_be_a_non_empty_list(targets):
    assert "`targets`" in error_of(Catalog(targets=targets))


def test_non_target_entries_are_rejected():
    message = error_of(Catalog(targets=[target(), {"id": "x", "lanes": []}]))
    assert "targets[1]" in message and "Target" in message and "dict" in message


BAD_IDS = ["a:b", "a/b", "a b", ".hidden", "-dash", "_under", "", "x" * 129, "tab\there", 7, None]


@pytest.mark.parametrize("bad_id", BAD_IDS)
def test_bad_target_ids(bad_id):
    message = error_of(Catalog(targets=[target("ok"), target(bad_id, lanes=[lane("other")])]))
    assert message.startswith("catalog: targets[1].id: invalid id")
    assert repr(bad_id) in message


@pytest.mark.parametrize("bad_id", BAD_IDS)
def test_bad_lane_ids(bad_id):
    message = error_of(Catalog(targets=[target("main", lanes=[lane("ok"), lane(bad_id)])]))
    assert message.startswith("target `main`: lanes[1].id: invalid id")
    assert repr(bad_id) in message


@pytest.mark.parametrize("where", ["target", "lane"])
def test_ids_with_a_trailing_newline_are_rejected(where):
    if where == "target":
        catalog = Catalog(targets=[target("main\n")])
    else:
        catalog = Catalog(targets=[target("main", lanes=[lane("build\n")])])
    assert "invalid id" in error_of(catalog)


def test_duplicate_target_ids():
    message = error_of(Catalog(targets=[target("main"), target("main", lanes=[lane("other")])]))
    assert message == "target `main`: duplicate target id"


def test_duplicate_lane_id_across_targets_names_the_lane_and_the_first_target():
    catalog = Catalog(targets=[target("first"), target("second", lanes=[lane("x"), lane()])])
    message = error_of(catalog)
    assert "lane `build`" in message and "duplicate lane id" in message
    assert "`first`" in message


def test_duplicate_lane_id_across_targets_names_both_targets():
    catalog = Catalog(targets=[target("first"), target("second", lanes=[lane("x"), lane()])])
    message = error_of(catalog)
    assert "`first`" in message and "`second`" in message


def test_duplicate_lane_id_within_one_target():
    message = error_of(Catalog(targets=[target("main", lanes=[lane(), lane()])]))
    assert "lane `build`: duplicate lane id" in message


def test_non_lane_entries_are_rejected():
    message = error_of(Catalog(targets=[target("main", lanes=[lane(), "build"])]))
    assert "target `main`" in message and "lanes[1]" in message and "str" in message


@pytest.mark.parametrize("lanes", [[], (), None])
def test_a_target_needs_lanes(lanes):
    message = error_of(Catalog(targets=[Target(id="main", lanes=lanes)]))
    assert "target `main`" in message and "`lanes`" in message


@pytest.mark.parametrize("timeout", [0, -1, True, False, "10", 1.5, None])
def test_bad_timeouts(timeout):
    message = error_of(Catalog(targets=[target(lanes=[lane(timeout_secs=timeout)])]))
    assert message.startswith("lane `build`: field `timeout_secs`")
    assert repr(timeout) in message


@pytest.mark.parametrize("command", ["", "   ", "\n\t", None, ["make"]])
def test_bad_commands(command):
    message = error_of(Catalog(targets=[target(lanes=[lane(command=command)])]))
    assert message.startswith("lane `build`: field `command`")


@pytest.mark.parametrize(
    "env",
    [{"A": 1}, {"A": None}, {"A=B": "x"}, {"=A": "x"}, {"": "x"}, {1: "x"}, [("A", "x")], "A=x"],
)
def test_bad_env(env):
    message = error_of(Catalog(targets=[target(lanes=[lane(env=env)])]))
    assert message.startswith("lane `build`: field `env`")


def test_bad_descriptions():
    message = error_of(Catalog(targets=[target(description=None)]))
    assert message.startswith("target `main`: field `description`")
    message = error_of(Catalog(targets=[target(lanes=[lane(description=3)])]))
    assert message.startswith("lane `build`: field `description`")


def test_execution_must_be_an_execution():
    message = error_of(Catalog(targets=[target(lanes=[lane(execution=("local", "host_process"))])]))
    assert message.startswith("lane `build`: field `execution`")


@pytest.mark.parametrize(
    ("execution", "fragment"),
    [
        (Execution("remote", "host_process"), "unknown placement 'remote'"),
        (Execution("Local", "host_process"), "unknown placement 'Local'"),
        (Execution("local", "docker"), "unknown runtime 'docker'"),
        (Execution("remote_ssh", ""), "unknown runtime ''"),
    ],
)
def test_unknown_placement_or_runtime(execution, fragment):
    message = error_of(Catalog(targets=[target(lanes=[lane(execution=execution)])]))
    assert message.startswith("lane `build`:")
    assert fragment in message


@pytest.mark.parametrize(("placement", "runtime"), list(itertools.product(PLACEMENTS, RUNTIMES)))
def test_every_placement_runtime_pair(placement, runtime):
    catalog = Catalog(
        targets=[target(lanes=[lane("edge", execution=Execution(placement, runtime))])]
    )
    if (placement, runtime) in SUPPORTED_EXECUTIONS:
        assert catalog.validate() is catalog
    else:
        message = error_of(catalog)
        assert message.startswith("lane `edge`:")
        assert "is not supported" in message
        assert f"`{placement}`" in message and f"`{runtime}`" in message


@pytest.mark.parametrize("entry", ["..", "a/../b", "/..", "../x", "", "/", "//"])
def test_bad_snapshot_excludes(entry):
    message = error_of(Catalog(targets=[target(snapshot_excludes=("ok", entry))]))
    assert message.startswith("target `main`: field `snapshot_excludes`: ")
    assert len(message.splitlines()) == 1


@pytest.mark.parametrize("entry", [5, None])
def test_snapshot_excludes_must_be_strings(entry):
    message = error_of(Catalog(targets=[target(snapshot_excludes=("ok", entry))]))
    assert message == "target `main`: field `snapshot_excludes` must be a list of strings"


def test_snapshot_excludes_must_be_a_list():
    message = error_of(Catalog(targets=[target(snapshot_excludes="vendor")]))
    assert message.startswith("target `main`: field `snapshot_excludes`")


EXCLUDES_THE_SNAPSHOT_FILTER_REJECTS = ["src/generated", ".", "/a/./b", "nul\0byte"]


@pytest.mark.parametrize("entry", EXCLUDES_THE_SNAPSHOT_FILTER_REJECTS)
def test_snapshot_filter_rejects_these_excludes(entry):
    with pytest.raises(ValueError):
        SnapshotFilter((entry,))


@pytest.mark.parametrize("entry", EXCLUDES_THE_SNAPSHOT_FILTER_REJECTS)
def test_catalog_rejects_every_exclude_the_snapshot_filter_rejects(entry):
    assert "snapshot exclude" in error_of(Catalog(targets=[target(snapshot_excludes=(entry,))]))


# -- execution labels -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("placement", "runtime", "label"),
    [
        ("local", "host_process", "host_local"),
        ("remote_ssh", "incus", "remote_linux_vm"),
        ("local", "tart", "tart_local"),
        ("remote_ssh", "host_process", "remote_ssh_host_process"),
        ("local", "incus", "local_incus"),
        ("remote_ssh", "tart", "remote_ssh_tart"),
    ],
)
def test_executor_labels(placement, runtime, label):
    execution = Execution(placement, runtime)
    assert execution.pair == (placement, runtime)
    assert execution.executor == label


def test_executor_labels_cover_the_whole_product():
    assert set(EXECUTOR_LABELS) == set(itertools.product(PLACEMENTS, RUNTIMES))
    assert len(set(EXECUTOR_LABELS.values())) == len(EXECUTOR_LABELS)


def test_runtime_factories_match_supported_executions():
    assert set(RUNTIME_FACTORIES) == set(SUPPORTED_EXECUTIONS)
    assert len(SUPPORTED_EXECUTIONS) == len(set(SUPPORTED_EXECUTIONS))
    for placement, runtime in SUPPORTED_EXECUTIONS:
        assert placement in PLACEMENTS and runtime in RUNTIMES
        runtime_obj = runtime_for(Execution(placement, runtime))
        assert isinstance(runtime_obj, type(RUNTIME_FACTORIES[(placement, runtime)]()))


# -- lane identity ----------------------------------------------------------------------------

BASE = lane("build", command="make test", timeout_secs=60, env={"A": "1", "B": "2"})


@pytest.mark.parametrize(
    "changes",
    [
        {"command": "make test2"},
        {"command": "make  test"},
        {"timeout_secs": 61},
        {"env": {"A": "1"}},
        {"env": {"A": "1", "B": "3"}},
        {"env": {"A": "1", "B": "2", "C": ""}},
        {"execution": Execution("remote_ssh", "host_process")},
        {"execution": Execution("local", "incus")},
        {"id": "build2"},
        {"run_as_root": True},
        {"network": True},
    ],
)
def test_lane_spec_changes_with_what_the_lane_runs(changes):
    assert dataclasses.replace(BASE, **changes).spec() != BASE.spec()


def test_lane_spec_ignores_description_and_env_order():
    assert dataclasses.replace(BASE, description="something else").spec() == BASE.spec()
    assert dataclasses.replace(BASE, env={"B": "2", "A": "1"}).spec() == BASE.spec()
    assert BASE.spec() == {
        "id": "build",
        "command": "make test",
        "placement": "local",
        "runtime": "host_process",
        "timeout_secs": 60,
        "env": {"A": "1", "B": "2"},
        "run_as_root": False,
        "network": False,
    }
