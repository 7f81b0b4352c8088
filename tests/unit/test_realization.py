"""Where staged payloads are realized (`StagedPayloads.realize`): catalog rules, the builder's
Nix store setting, the prepare nodes and task graph each mode produces."""

from __future__ import annotations

from pathlib import Path

import pytest

from pikaci.builder.config import builder_from_environment
from pikaci.builder.transport import Builder
from pikaci.catalog import (
    REALIZE_COPY,
    REALIZE_LOCAL,
    REALIZE_ON_BUILDER,
    Catalog,
    CatalogError,
    Execution,
    Target,
)
from pikaci.payloads.builder_nix import copy_uri, physical_path, store_args
from pikaci.plan import prepare_nodes
from pikaci.run.session import RunSession
from pikaci.settings import settings_from_environment
from pikaci.tasks.lanes import LaneGraph
from tests.fixtures.catalogs import staged

LOCAL = Execution("local", "bubblewrap")
REMOTE = Execution("remote_ssh", "bubblewrap")


def error_of(*targets: Target) -> str:
    with pytest.raises(CatalogError) as info:
        Catalog(targets=list(targets)).validate()
    return str(info.value)


def test_the_default_follows_where_the_lanes_run() -> None:
    assert staged("a", LOCAL).realization == REALIZE_LOCAL
    assert staged("b", REMOTE).realization == REALIZE_ON_BUILDER  # the upstream default
    assert staged("c", REMOTE, realize="copy").realization == REALIZE_COPY
    Catalog(
        targets=[staged("a", LOCAL), staged("c", REMOTE, realize="copy", payload_id="x")]
    ).validate()


def test_realization_errors_name_the_target_and_field() -> None:
    assert error_of(staged("a", REMOTE, realize="elsewhere")) == (
        "target `a`: field `payloads.realize` must be one of local, builder, copy, got 'elsewhere'"
    )
    assert "lanes run on a builder; use `builder` or `copy`" in error_of(
        staged("a", REMOTE, realize="local")
    )
    assert "lanes run locally; use `local` or leave it out" in error_of(
        staged("a", LOCAL, realize="copy")
    )
    assert "must share one placement, found local and remote_ssh" in error_of(
        staged("a", LOCAL, REMOTE, realize="copy")
    )


def test_a_shared_payload_is_realized_one_way() -> None:
    message = error_of(staged("a", LOCAL), staged("b", REMOTE))
    assert message.startswith("target `b`:") and "realizes them `builder`, not `local`" in message
    message = error_of(staged("a", REMOTE), staged("b", REMOTE, realize="copy"))
    assert "declares different installables, realization or snapshot excludes" in message


def test_copy_adds_an_upload_node_after_the_builds() -> None:
    assert prepare_nodes(staged("a", REMOTE, realize="copy"))[-1] == "prepare-ws-upload"
    assert not any("upload" in n for n in prepare_nodes(staged("a", REMOTE)))


def task_names(catalog: Catalog, tmp_path: Path) -> dict:  # type: ignore[type-arg]
    settings = settings_from_environment(tmp_path, environ={})
    tasks = LaneGraph(catalog, RunSession(catalog, settings)).tasks()
    return {f"{t['basename']}:{t['name']}": t for t in tasks if t.get("name")}


def test_only_copy_targets_get_an_upload_task_and_their_lanes_wait_for_it(tmp_path: Path) -> None:
    catalog = Catalog(
        targets=[staged("a", REMOTE, realize="copy"), staged("b", REMOTE, payload_id="other")]
    )
    tasks = task_names(catalog, tmp_path)
    assert tasks["upload:ws"]["task_dep"] == ["build:ws:deps", "build:ws:build"]
    assert "upload:other" not in tasks
    assert "upload:ws" in tasks["execute:a-0"]["task_dep"]
    assert not any(dep.startswith("upload:") for dep in tasks["execute:b-0"]["task_dep"])


def test_the_builder_store_setting() -> None:
    builder = builder_from_environment({"PIKACI_BUILDER_NIX_STORE": "/srv/store/"})
    assert builder.nix_store == "/srv/store"
    assert physical_path(builder, "/nix/store/abc-x") == "/srv/store/nix/store/abc-x"
    assert store_args(builder) == ["--store", "/srv/store"]
    assert copy_uri(builder) == "ssh://pika-build?remote-store=/srv/store"
    default = Builder(host="b")
    assert physical_path(default, "/nix/store/abc-x") == "/nix/store/abc-x"
    assert store_args(default) == [] and copy_uri(default) == "ssh://b"
    with pytest.raises(ValueError, match="PIKACI_BUILDER_NIX_STORE: expected an absolute path"):
        builder_from_environment({"PIKACI_BUILDER_NIX_STORE": "daemon"})
