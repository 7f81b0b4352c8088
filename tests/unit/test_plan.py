"""pikaci.plan directly: names, identities, build inputs, the reuse decision, plan.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import pytest

from pikaci import plan
from pikaci.catalog import Catalog, Execution, Lane, Target
from pikaci.model import JobRecord, RunRecord
from tests.fixtures.catalogs import staged

HOST = Execution("local", "host_process")
SANDBOX = Execution("local", "bubblewrap")
REMOTE = Execution("remote_ssh", "bubblewrap")
SNAPSHOT = {"content_hash": "c" * 64, "tree_id": "t" * 64, "snapshot_dir": "/s/tt"}


def lane(lane_id: str = "a", **kwargs: Any) -> Lane:
    return Lane(id=lane_id, command=kwargs.pop("command", "true"), execution=HOST, **kwargs)


def test_task_names_map_to_plan_nodes_and_nothing_else() -> None:
    assert plan.node_of_task("snapshot:t") == "snapshot-t"
    assert plan.node_of_task("build:ws:deps") == "prepare-ws-workspace-deps"
    assert plan.node_of_task("build:ws:build") == "prepare-ws-workspace-build"
    assert plan.node_of_task("upload:ws") == "prepare-ws-upload"
    for other in ("execute:a", "lane:a", "target:t", "build:ws:other", "build:ws", "gc_remote"):
        assert plan.node_of_task(other) is None
    assert plan.split_task("execute:a") == ("execute", "a")
    assert plan.split_task("serve") == ("serve", "")


def test_lane_identity_changes_with_every_input_and_only_then() -> None:
    target = Target(id="t", lanes=[lane()])
    base = plan.lane_identity(lane(), target, "snap", ["/nix/store/a"])
    assert base == plan.lane_identity(lane(), target, "snap", ["/nix/store/a"])
    variants = [
        plan.lane_identity(lane(command="false"), target, "snap", ["/nix/store/a"]),
        plan.lane_identity(lane(timeout_secs=5), target, "snap", ["/nix/store/a"]),
        plan.lane_identity(lane(env={"K": "v"}), target, "snap", ["/nix/store/a"]),
        plan.lane_identity(lane(network=True), target, "snap", ["/nix/store/a"]),
        plan.lane_identity(lane(), Target(id="u", lanes=[lane()]), "snap", ["/nix/store/a"]),
        plan.lane_identity(lane(), target, "other", ["/nix/store/a"]),
        plan.lane_identity(lane(), target, "snap", ["/nix/store/b"]),
        plan.lane_identity(lane(), target, "snap", []),
    ]
    assert len({base, *variants}) == len(variants) + 1
    # the description is not something the lane runs
    assert plan.lane_identity(lane(description="x"), target, "snap", ["/nix/store/a"]) == base


def test_snapshot_identity_prefers_the_tree_id() -> None:
    assert plan.snapshot_identity(SNAPSHOT) == "t" * 64
    assert plan.snapshot_identity({"content_hash": "c"}) == "c"
    assert plan.snapshot_identity({}) == ""


def test_build_inputs_follow_snapshot_deps_builder_and_nix_path() -> None:
    local = staged("t", SANDBOX, build_file="ci/build.nix")
    copy = staged("t", SANDBOX, realize="copy", build_file="ci/build.nix")
    builder = staged("t", REMOTE, build_file="ci/build.nix")
    deps = {"store_path": "/nix/store/d"}
    base = plan.build_inputs(local, "build", SNAPSHOT, deps)
    assert base == plan.build_inputs(local, "build", SNAPSHOT, deps, nix_path="")
    assert base != plan.build_inputs(local, "build", {**SNAPSHOT, "tree_id": "x"}, deps)
    assert base != plan.build_inputs(local, "build", SNAPSHOT, {"store_path": "/nix/store/e"})
    # a classic file may import from NIX_PATH; a flake attribute may not
    assert base != plan.build_inputs(local, "build", SNAPSHOT, deps, nix_path="nixpkgs=/x")
    deps_only = plan.build_inputs(local, "deps", SNAPSHOT)
    assert deps_only == plan.build_inputs(local, "deps", SNAPSHOT, nix_path="nixpkgs=/x")
    assert deps_only == plan.build_inputs(local, "deps", SNAPSHOT, {"store_path": "/nix/store/e"})
    assert plan.build_inputs(copy, "deps", SNAPSHOT) != deps_only
    on_builder = plan.build_inputs(builder, "deps", SNAPSHOT, builder_store="b:")
    assert on_builder != plan.build_inputs(builder, "deps", SNAPSHOT, builder_store="b:/srv/store")
    # only a build on the builder depends on which builder
    assert plan.build_inputs(local, "deps", SNAPSHOT, builder_store="b:") == deps_only


def inputs(identity: str = "i" * 64) -> plan.LaneInputs:
    return plan.LaneInputs(snapshot_dir="/s", content_hash="c", identity=identity)


@pytest.mark.parametrize(
    ("verdict", "rerun", "exists", "reason"),
    [
        ({}, False, True, "no recorded pass"),
        ({"status": "failed", "run_id": "r1"}, False, True, "no recorded pass"),
        ({"status": "passed", "run_id": "r1", "identity": "i" * 64}, True, True, "rerun"),
        ({"status": "passed", "run_id": "r1", "identity": "i" * 64}, False, False, "is gone"),
        ({"status": "passed", "run_id": "r1", "identity": "j" * 64}, False, True, "changed"),
    ],
)
def test_a_lane_is_not_reused(
    verdict: Dict[str, Any], rerun: bool, exists: bool, reason: str
) -> None:
    decision = plan.reuse_decision(inputs(), verdict, rerun=rerun, run_exists=exists)
    assert not decision.reusable
    assert decision.passed_run is None
    assert reason in decision.reason


def test_a_lane_is_reused_from_the_run_that_passed() -> None:
    verdict = {"status": "passed", "run_id": "r1", "identity": "i" * 64}
    decision = plan.reuse_decision(inputs(), verdict, rerun=False, run_exists=True)
    assert decision.reusable and decision.passed_run == "r1"
    assert decision.reason == f"passed in run r1 with identity {'i' * 12}"


def test_lane_inputs_come_from_the_saved_values_only() -> None:
    target = staged("t", SANDBOX)
    builds = [{"store_path": "/nix/store/d", "role": "deps"}, {}]
    made = plan.lane_inputs(target.lanes[0], target, {**SNAPSHOT, "git_head": "h"}, builds)
    assert made.snapshot_dir == "/s/tt" and made.content_hash == "c" * 64
    assert made.git_head == "h" and made.git_dirty is None
    assert made.payloads == [builds[0]]  # a build that never ran saved nothing
    expected = plan.lane_identity(target.lanes[0], target, "t" * 64, ["/nix/store/d", ""])
    assert made.identity == expected


def test_the_state_root_inside_the_tree_is_left_out_of_snapshots(tmp_path: Path) -> None:
    target = Target(id="t", lanes=[lane()], snapshot_excludes=("/build",))
    inside = plan.snapshot_filter(target, tmp_path, tmp_path / "var" / "state")
    assert inside.extra_excludes == ("/build", "/var/state")
    # the default state root is skipped by the copy filter anyway
    assert plan.snapshot_filter(target, tmp_path, tmp_path / ".pikaci").extra_excludes == (
        "/build",
    )
    assert plan.snapshot_filter(target, tmp_path, Path("/elsewhere")).extra_excludes == ("/build",)


def test_shared_payloads_wait_for_their_owners_snapshot() -> None:
    first, second = (
        staged("a", SANDBOX, build_file="ci/build.nix"),
        staged("b", SANDBOX, build_file="ci/build.nix"),
    )
    owners = plan.payload_owners(Catalog(targets=[first, second]))
    assert owners["ws"] is first
    assert plan.prepare_nodes(second, owners["ws"]) == [
        "snapshot-b",
        "snapshot-a",
        "prepare-ws-workspace-deps",
        "prepare-ws-workspace-build",
    ]
    assert plan.prepare_nodes(staged("c", SANDBOX, realize="copy"))[-1] == "prepare-ws-upload"


def test_the_run_plan_lists_each_prepare_node_once_then_the_lanes() -> None:
    first, second = (
        staged("a", SANDBOX, build_file="ci/build.nix"),
        staged("b", SANDBOX, build_file="ci/build.nix"),
    )
    owners = plan.payload_owners(Catalog(targets=[first, second]))
    planned = [(first, first.lanes[0]), (second, second.lanes[0])]
    record = RunRecord(run_id="r", created_at="2026-01-01T00:00:00Z")
    written = plan.run_plan(record, planned, owners)
    ids = [node.id for node in written.nodes]
    assert ids == [
        "prepare-ws-workspace-deps",
        "prepare-ws-workspace-build",
        "execute-a-0",
        "execute-b-0",
    ]
    # the snapshots have no node type in the reference's plan: pikaci lists them apart
    assert [node.id for node in written.pikaci_nodes] == ["snapshot-a", "snapshot-b"]
    assert {node.prepare["type"] for node in written.pikaci_nodes if node.prepare} == {
        "workspace_snapshot"
    }
    build = written.nodes[1]
    assert build.depends_on == ["prepare-ws-workspace-deps"]
    assert build.prepare is not None
    assert build.prepare["installable"] == "ci/build.nix#ci.build"
    execute = written.nodes[-1]
    assert execute.depends_on == plan.prepare_nodes(second, first)
    assert execute.execute is not None and execute.execute["type"] == "vm_command"
    # a sandbox lane is a host process to the reference's vocabulary, a sandbox to pikaci's
    assert (execute.executor, execute.runtime, execute.sandbox) == (
        "host_local",
        "host_process",
        "bubblewrap",
    )


def test_a_run_is_described_by_its_target_or_its_lanes() -> None:
    one = staged("a", SANDBOX, build_file="ci/build.nix")
    target, text = plan.describe_run([(one, one.lanes[0])])
    assert target is one and text == "target a"
    other = staged("b", SANDBOX, build_file="ci/build.nix")
    target, text = plan.describe_run([(one, one.lanes[0]), (other, other.lanes[0])])
    assert target is None and text == "lanes a-0, b-0"


def test_a_rerun_uses_each_targets_own_snapshot() -> None:
    record = RunRecord(run_id="r", snapshot_dir="/s/first")
    record.jobs = [
        JobRecord(id="a-0", status="passed", target_id="a", snapshot_dir="/s/a"),
        JobRecord(id="b-0", status="passed", target_id="b", snapshot_dir=""),
    ]
    assert plan.rerun_snapshot(record, staged("a", SANDBOX, build_file="ci/build.nix")) == "/s/a"
    assert (
        plan.rerun_snapshot(record, staged("b", SANDBOX, build_file="ci/build.nix")) == "/s/first"
    )
