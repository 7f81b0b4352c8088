"""How an instance is created (`pikaci/incus/creation.py`): the pool query, the path chosen per
driver and setting, the base's name and `incus copy` argv (pinned for VMs too, which cannot
boot here), the base-making script's shape and the choice of stale bases."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import orjson
import pytest

from pikaci.incus.commands import owner_config
from pikaci.incus.config import IncusError, IncusSettings, incus_settings_from_environment
from pikaci.incus.creation import (
    BASE_IMAGE_KEY,
    Base,
    Creation,
    base_name,
    choose_path,
    copy_argv,
    ensure_base_script,
    parse_bases,
    parse_pool_driver,
    pool_argv,
    stale_bases,
)
from pikaci.timestamps import format_timestamp

VM = IncusSettings()
CT = IncusSettings(instance_type="container", profile="", storage_pool="pikaci")
FP = "a" * 64
RUN_ID = "20261205T080000Z-0123abcd"
CREATED = "2026-12-05T08:00:00Z"
INST = "pikaci-0123456789ab"
NOW = datetime(2026, 12, 5, 9, 0, tzinfo=timezone.utc)


def test_the_pool_and_create_mode_come_from_the_environment() -> None:
    settings = incus_settings_from_environment(
        {"PIKACI_INCUS_STORAGE_POOL": "fast", "PIKACI_INCUS_CREATE": "Copy"}
    )
    assert (settings.storage_pool, settings.create) == ("fast", "copy")
    defaults = incus_settings_from_environment({})
    assert (defaults.storage_pool, defaults.create) == ("default", "auto")


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"PIKACI_INCUS_STORAGE_POOL": "a/../b"}, "PIKACI_INCUS_STORAGE_POOL"),
        ({"PIKACI_INCUS_STORAGE_POOL": "-x"}, "PIKACI_INCUS_STORAGE_POOL"),
        ({"PIKACI_INCUS_CREATE": "clone"}, "PIKACI_INCUS_CREATE"),
    ],
)
def test_bad_pool_or_mode_is_refused_naming_the_variable(env: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        incus_settings_from_environment(env)


def test_pool_query_argv_and_driver() -> None:
    assert pool_argv(CT) == ["incus", "query", "/1.0/storage-pools/pikaci"]
    sudo = IncusSettings(program=("sudo", "incus"), storage_pool="fast")
    assert pool_argv(sudo) == ["sudo", "incus", "query", "/1.0/storage-pools/fast"]
    answer = orjson.dumps({"name": "pikaci", "driver": "btrfs", "config": {}}).decode()
    assert parse_pool_driver(answer, "pikaci") == "btrfs"
    for bad in ("[]", "{}", '{"driver": 3}', "To start your first container"):
        with pytest.raises(IncusError, match="pikaci"):
            parse_pool_driver(bad, "pikaci")


@pytest.mark.parametrize(
    ("create", "driver", "path"),
    [
        ("auto", "btrfs", "image"),
        ("auto", "zfs", "image"),
        ("auto", "lvm", "image"),
        ("auto", "dir", "copy"),
        ("image", "dir", "image"),
        ("copy", "btrfs", "copy"),
    ],
)
def test_the_path_follows_the_driver_unless_forced(create: str, driver: str, path: str) -> None:
    assert choose_path(IncusSettings(create=create), driver) == path


def test_a_base_is_named_by_image_and_every_setting_that_shapes_the_instance() -> None:
    name = base_name(VM, FP)
    assert name.startswith("pikaci-base-") and len(name) == len("pikaci-base-") + 12
    assert base_name(VM, FP) == name
    for other in (
        IncusSettings(instance_type="container"),
        IncusSettings(cpus=4),
        IncusSettings(memory_mib=1024),
        IncusSettings(profile=""),
        IncusSettings(storage_pool="fast"),
        IncusSettings(project="other"),
    ):
        assert base_name(other, FP) != name
    assert base_name(VM, "b" * 64) != name


def test_copy_argv_vm_and_container() -> None:
    owner = owner_config(RUN_ID, CREATED)
    assert copy_argv(VM, "pikaci-base-0123456789ab", INST, owner) == [
        "incus", "copy", "--project", "pika-managed-agents",
        "pikaci-base-0123456789ab", INST,
        "--storage", "default", "--instance-only",
        "--config", f"user.pikaci.created-at={CREATED}",
        "--config", f"user.pikaci.run-id={RUN_ID}",
    ]  # fmt: skip
    assert copy_argv(CT, "b", INST, owner)[4:8] == ["b", INST, "--storage", "pikaci"]
    for bad in ({"limits.cpu": "64"}, {BASE_IMAGE_KEY: FP}):
        with pytest.raises(IncusError, match="not pikaci's"):
            copy_argv(VM, "b", INST, bad)


def test_creation_argv_per_path() -> None:
    owner = owner_config(RUN_ID, CREATED)
    by_image = Creation("default", "btrfs", "image", None)
    assert by_image.create_argv(VM, INST, owner)[:2] == ["incus", "init"]
    assert by_image.create_argv(VM, INST, owner)[-3:] == ["--vm", "pikaci/dev", INST]
    by_copy = Creation("default", "dir", "copy", "pikaci-base-x")
    assert by_copy.create_argv(VM, INST, owner)[:2] == ["incus", "copy"]
    assert "copy of base instance pikaci-base-x" in by_copy.describe()
    assert by_image.describe() == (
        "storage pool default (btrfs): instances by incus init from the image"
    )


def test_the_base_script_makes_a_temporary_instance_and_renames_it() -> None:
    script = ensure_base_script(VM, "pikaci-base-0123456789ab", FP)
    lines = script.splitlines()
    assert lines[1].startswith("if incus info --project pika-managed-agents pikaci-base-0123")
    init = lines[2]
    assert init.startswith("incus init --project pika-managed-agents --storage default")
    assert f"--config user.pikaci.base-image={FP}" in init
    assert "user.pikaci.run-id" not in init  # the instance reaper must never take a base
    assert init.endswith(" || exit $?")
    temp = init.split()[-4]
    assert init.split()[-6:-4] == ["--vm", "pikaci/dev"]
    assert (
        temp.startswith("pikaci-base-0123456789ab-t") and len(temp) == len("pikaci-base-") + 12 + 10
    )
    assert f"incus rename --project pika-managed-agents {temp} pikaci-base-0123456789ab" in script
    assert f"incus delete --project pika-managed-agents --force {temp}" in script
    assert ensure_base_script(VM, "pikaci-base-0123456789ab", FP) != script  # temp names differ


def _listed(*items: dict) -> str:
    return orjson.dumps(list(items)).decode()


def test_bases_are_instances_with_the_base_marker_and_no_run_id() -> None:
    text = _listed(
        {"name": "pikaci-base-000000000001", "config": {BASE_IMAGE_KEY: FP}},
        # a lane's copy inherits the marker but has a run id
        {
            "name": "pikaci-0123456789ab",
            "config": {BASE_IMAGE_KEY: FP, "user.pikaci.run-id": RUN_ID},
        },
        {"name": "pikaci-base-000000000002", "config": {}},  # no marker: not ours
        {"name": "other", "config": {BASE_IMAGE_KEY: FP}},
        "junk",
    )
    assert parse_bases(text) == [Base("pikaci-base-000000000001", FP, "")]


def test_stale_bases_are_other_images_and_old_temporaries() -> None:
    old = format_timestamp(NOW - timedelta(hours=2))
    young = format_timestamp(NOW - timedelta(minutes=5))
    bases = [
        Base("pikaci-base-keep00000000", FP, old),
        Base("pikaci-base-same00000000", FP, old),  # same image, other settings: kept
        Base("pikaci-base-oldimage0000", "b" * 64, young),
        Base("pikaci-base-keep00000000-t0badf00d", FP, old),
        Base("pikaci-base-keep00000000-t0000beef", FP, young),  # another lane's, under way
        Base("pikaci-base-keep00000000-t00000000", FP, "garbled"),
    ]
    assert stale_bases(bases, "pikaci-base-keep00000000", FP, NOW) == [
        "pikaci-base-keep00000000-t0badf00d",
        "pikaci-base-oldimage0000",
    ]
