"""The pure Incus layer: settings, names, every `incus` argv shape, and parsing of its JSON."""

from __future__ import annotations

import hashlib
import json
import random
import re
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, List

import pytest

from pikaci.incus import commands as incus
from pikaci.incus import config as incus_config
from pikaci.incus.commands import (
    GuestMount,
    OwnedInstance,
    check_device_name,
    delete_argv,
    device_add_argv,
    exec_argv,
    image_list_argv,
    image_show_argv,
    init_argv,
    instance_name,
    launch_argv,
    list_instances_argv,
    owner_config,
    parse_image_identity,
    parse_owned_instances,
    payload_device_name,
    plan_devices,
    plan_mounts,
    read_file_argv,
    ready_probe_argv,
    reap_candidates,
    sanitize_component,
    snapshot_device_name,
    start_argv,
    write_file_argv,
)
from pikaci.incus.config import IncusError, IncusSettings, incus_settings_from_environment
from pikaci.model import IncusImage, PhaseTiming, RemoteLinuxVmExecution

VM = IncusSettings()
CT = IncusSettings(instance_type="container")
SUDO = IncusSettings(program=("sudo", "incus"))
PLAIN = IncusSettings(profile="")  # test hosts: only the `default` profile
INST = "pikaci-0123456789ab"
P = "pika-managed-agents"
RUN_ID = "20260310T223310Z-e53c83eb"
CREATED = "2026-03-10T22:33:10.000000+00:00"
SNAPSHOT_DEVICE = "pk-snapsh-b34434da"
BUILD_DEVICE = "pk-staged-l-47d99971"
DEPS_DEVICE = "pk-staged-l-abd7f13d"
DEVICE_NAME = re.compile(r"^[a-z0-9-]{1,20}$")


# -- settings -------------------------------------------------------------------------------


def test_default_settings_are_upstream_defaults() -> None:
    assert VM.project == "pika-managed-agents"
    assert VM.profile == "pika-agent-dev"
    assert VM.image_alias == "pikaci/dev"
    assert VM.instance_type == "vm"
    assert (VM.cpus, VM.memory_mib, VM.storage_pool) == (2, 4096, "default")
    assert VM.program == ("incus",)
    assert VM.profiles == ("default", "pika-agent-dev")
    assert PLAIN.profiles == ("default",)
    assert IncusSettings(profile="default").profiles == ("default",)


def test_settings_accept_a_list_program_and_stay_hashable() -> None:
    settings = IncusSettings(program=["sudo", "incus"])  # type: ignore[arg-type]
    assert settings.program == ("sudo", "incus")
    assert hash(settings) == hash(SUDO)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"project": ""},
        {"image_alias": " "},
        {"storage_pool": ""},
        {"instance_type": "lxc"},
        {"cpus": 0},
        {"cpus": True},
        {"memory_mib": -1},
        {"ready_attempts": 0},
        {"ready_interval_secs": -1.0},
        {"program": ()},
        {"program": ("sudo", "")},
    ],
)
def test_settings_reject_bad_values(kwargs: Dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        IncusSettings(**kwargs)


def test_settings_from_empty_environment_are_the_defaults() -> None:
    assert incus_settings_from_environment({}) == VM
    assert incus_settings_from_environment({}, sudo_default=True) == SUDO


def test_settings_from_environment() -> None:
    settings = incus_settings_from_environment(
        {
            "PIKACI_INCUS_PROJECT": "ci",
            "PIKACI_INCUS_PROFILE": "ci-profile",
            "PIKACI_INCUS_IMAGE_ALIAS": "pikaci/test",
            "PIKACI_INCUS_INSTANCE_TYPE": "Container",
            "PIKACI_INCUS_SUDO": "yes",
        }
    )
    assert settings == IncusSettings(
        project="ci",
        profile="ci-profile",
        image_alias="pikaci/test",
        instance_type="container",
        program=("sudo", "incus"),
    )


def test_settings_from_environment_fall_back_to_upstream_names() -> None:
    env = {
        "PIKACI_REMOTE_LINUX_VM_INCUS_PROJECT": "old-project",
        "PIKACI_REMOTE_LINUX_VM_INCUS_PROFILE": "old-profile",
        "PIKACI_REMOTE_LINUX_VM_INCUS_IMAGE_ALIAS": "old/alias",
    }
    settings = incus_settings_from_environment(env)
    assert (settings.project, settings.profile, settings.image_alias) == (
        "old-project",
        "old-profile",
        "old/alias",
    )
    env["PIKACI_INCUS_PROJECT"] = "new-project"
    env["PIKACI_INCUS_PROFILE"] = ""  # empty counts as unset
    settings = incus_settings_from_environment(env)
    assert (settings.project, settings.profile) == ("new-project", "old-profile")


@pytest.mark.parametrize(
    ("value", "sudo"),
    [("1", True), ("true", True), ("ON", True), ("0", False), ("no", False), ("off", False)],
)
def test_sudo_booleans(value: str, sudo: bool) -> None:
    settings = incus_settings_from_environment({"PIKACI_INCUS_SUDO": value}, sudo_default=not sudo)
    assert settings.program == (("sudo", "incus") if sudo else ("incus",))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PIKACI_INCUS_SUDO", "maybe"),
        ("PIKACI_INCUS_SUDO", "2"),
        ("PIKACI_INCUS_INSTANCE_TYPE", "lxc"),
        ("PIKACI_INCUS_INSTANCE_TYPE", "virtual-machine"),
    ],
)
def test_settings_from_environment_reject_bad_values(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        incus_settings_from_environment({name: value})


# -- names ----------------------------------------------------------------------------------


def test_instance_name() -> None:
    digest = hashlib.sha256(f"{RUN_ID}:pika-actionlint".encode()).hexdigest()
    name = instance_name(RUN_ID, "pika-actionlint")
    assert name == "pikaci-" + digest[:12]
    assert re.fullmatch(r"pikaci-[0-9a-f]{12}", name)
    assert instance_name(RUN_ID, "other") != name
    assert instance_name("20260310T223310Z-00000000", "pika-actionlint") != name


def test_sanitize_keeps_runs_of_dashes() -> None:
    assert sanitize_component("/A__b/") == "a--b"
    assert sanitize_component("--x--") == "x"
    assert sanitize_component("Ünï") == "n"
    assert sanitize_component("") == ""


def test_snapshot_device_name_reference_examples() -> None:
    assert snapshot_device_name("/var/tmp/pikaci/runs/run/snapshot", "/workspace/snapshot") == (
        SNAPSHOT_DEVICE
    )
    assert snapshot_device_name("/var/tmp/run/snapshot", "/workspace/snapshot") == (
        "pk-snapsh-7bc0883f"
    )
    assert snapshot_device_name("customer-state", "/var/lib/pika", kind="persist") == (
        "pk-persis-b09b5ac0"
    )


def test_snapshot_device_name_does_not_collapse_dashes() -> None:
    doubled = snapshot_device_name("/var/tmp//run/snapshot", "/workspace/snapshot")
    assert doubled == "pk-snapsh-955c6cda"
    assert doubled != snapshot_device_name("/var/tmp/run/snapshot", "/workspace/snapshot")


def test_snapshot_device_name_uses_the_fnv1a_64_low_bits() -> None:
    seed = b"snapshot-var-tmp-pikaci-runs-run-snapshot-workspace-snapshot"
    value = 0xCBF29CE484222325
    for byte in seed:
        value = ((value ^ byte) * 0x100000001B3) % 2**64
    assert incus.fnv1a_64(seed) == value
    assert SNAPSHOT_DEVICE.endswith(f"{value & 0xFFFFFFFF:08x}")


def test_snapshot_device_name_rejects_unknown_kinds() -> None:
    with pytest.raises(IncusError, match="unknown mount kind"):
        snapshot_device_name("/a", "/b", kind="Snapshot!")


def test_payload_device_name_reference_examples() -> None:
    assert payload_device_name("workspace-build", "workspace_build_root") == "pk-workspac-51fa7376"
    assert payload_device_name("staged_linux_workspace_build_v1", "workspace_build_root") == (
        BUILD_DEVICE
    )
    assert payload_device_name("staged_linux_workspace_deps_v1", "workspace_deps_root") == (
        DEPS_DEVICE
    )


def test_payload_device_name_short_and_hash_forms() -> None:
    assert payload_device_name("a", "b") == "pk-a-b"
    assert payload_device_name("Kind", "Root_1") == "pk-kind-root-1"
    exactly_20 = payload_device_name("abcdefgh", "ijklmnop")  # pk- + 8 + - + 8 = 20
    assert exactly_20 == "pk-abcdefgh-ijklmnop"
    candidate = "pk-abcdefgh-ijklmnopq"  # 21 chars: hashed
    digest = hashlib.sha256(candidate.encode()).hexdigest()[:8]
    assert payload_device_name("abcdefgh", "ijklmnopq") == f"pk-abcdefgh-{digest}"
    assert payload_device_name("", "x" * 30).startswith("pk--")


AWKWARD = [
    "",
    "-",
    "___",
    "/",
    "A",
    "ÄÖÜ",
    "ß",
    "😀",
    "a" * 100,
    "staged_linux_workspace_build_v1",
    "..",
    "../../etc",
    "with space",
    "tab\there",
    "new\nline",
    "MiXeD-Case_42",
    "-leading",
    "trailing-",
    "x/../y",
    "\u0130",  # lowercases to two characters outside ASCII
    "K",  # Kelvin sign: not ASCII, must not become `k`
]


def _assert_device_name(name: str) -> None:
    assert DEVICE_NAME.fullmatch(name), name
    assert check_device_name(name) == name


def test_every_device_name_is_short_and_plain() -> None:
    rng = random.Random(20260310)
    alphabet = "aZ9_-./ \tÄ😀\u0130K"
    samples = list(AWKWARD)
    for _ in range(500):
        samples.append("".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40))))
    for first in samples:
        for second in samples[:: max(1, len(samples) // 25)]:
            _assert_device_name(payload_device_name(first, second))
            for kind in incus_config.MOUNT_KINDS:
                _assert_device_name(snapshot_device_name(first, second, kind))


@pytest.mark.parametrize("name", ["", "a" * 21, "Pk-x", "pk_x", "pk x", "pk-ü", "pk-x\n"])
def test_check_device_name_rejects(name: str) -> None:
    with pytest.raises(IncusError, match="invalid Incus device name"):
        check_device_name(name)


# -- argv shapes ----------------------------------------------------------------------------


def test_image_argv() -> None:
    assert image_list_argv(VM) == [
        "incus",
        "image",
        "list",
        "--project",
        P,
        "pikaci/dev",
        "--format",
        "json",
    ]
    assert image_show_argv(SUDO) == ["sudo", "incus", "image", "show", "--project", P, "pikaci/dev"]


def test_owner_config() -> None:
    assert owner_config(RUN_ID, CREATED) == {
        "user.pikaci.run-id": RUN_ID,
        "user.pikaci.created-at": CREATED,
    }
    assert incus_config.OWNER_RUN_KEY == "user.pikaci.run-id"
    assert incus_config.OWNER_CREATED_KEY == "user.pikaci.created-at"


def test_init_argv_vm() -> None:
    assert init_argv(VM, INST, owner_config(RUN_ID, CREATED)) == [
        "incus", "init", "--project", P, "--storage", "default",
        "--profile", "default", "--profile", "pika-agent-dev",
        "--config", "limits.cpu=2",
        "--config", "limits.memory=4096MiB",
        "--config", f"user.pikaci.created-at={CREATED}",
        "--config", f"user.pikaci.run-id={RUN_ID}",
        "--vm", "pikaci/dev", INST,
    ]  # fmt: skip


def test_init_argv_upstream_shape_without_marker() -> None:
    assert init_argv(SUDO, INST) == [
        "sudo", "incus", "init", "--project", P, "--storage", "default",
        "--profile", "default", "--profile", "pika-agent-dev",
        "--config", "limits.cpu=2", "--config", "limits.memory=4096MiB",
        "--vm", "pikaci/dev", INST,
    ]  # fmt: skip


def test_init_argv_container_default_profile_only_and_limits() -> None:
    settings = IncusSettings(
        project="ci", profile="", instance_type="container", cpus=16, memory_mib=512,
        storage_pool="fast", image_alias="pikaci/ct",
    )  # fmt: skip
    assert init_argv(settings, INST, {"user.pikaci.run-id": RUN_ID}) == [
        "incus", "init", "--project", "ci", "--storage", "fast", "--profile", "default",
        "--config", "limits.cpu=16", "--config", "limits.memory=512MiB",
        "--config", f"user.pikaci.run-id={RUN_ID}",
        "pikaci/ct", INST,
    ]  # fmt: skip


@pytest.mark.parametrize("key", ["limits.cpu", "security.privileged", "user"])
def test_init_argv_rejects_non_user_owner_keys(key: str) -> None:
    with pytest.raises(IncusError, match=r"not a `user\.` key"):
        init_argv(VM, INST, {key: "x"})


def test_device_add_argv_vm_read_only() -> None:
    assert device_add_argv(VM, INST, SNAPSHOT_DEVICE, "/srv/snap", "/workspace/snapshot", True) == [
        "incus", "config", "device", "add", "--project", P, INST, SNAPSHOT_DEVICE, "disk",
        "io.bus=virtiofs", "path=/workspace/snapshot", "readonly=true", "source=/srv/snap",
        "shift=false",
    ]  # fmt: skip


def test_device_add_argv_container_has_no_io_bus() -> None:
    assert device_add_argv(CT, INST, BUILD_DEVICE, "/nix/store/x", "/staged/b", True) == [
        "incus", "config", "device", "add", "--project", P, INST, BUILD_DEVICE, "disk",
        "path=/staged/b", "readonly=true", "source=/nix/store/x", "shift=false",
    ]  # fmt: skip


def test_device_add_argv_read_write_has_neither_readonly_nor_io_bus() -> None:
    assert device_add_argv(SUDO, INST, "pk-cache-x", "/srv/c", "/cache", False) == [
        "sudo", "incus", "config", "device", "add", "--project", P, INST, "pk-cache-x", "disk",
        "path=/cache", "source=/srv/c", "shift=false",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("device", "source", "guest"),
    [
        ("Bad_Name", "/a", "/b"),
        ("pk-x", "relative", "/b"),
        ("pk-x", "/a", "b"),
        ("pk-x", "/a/../b", "/b"),
        ("pk-x", "/a", "/b/"),
    ],
)
def test_device_add_argv_rejects(device: str, source: str, guest: str) -> None:
    with pytest.raises(IncusError):
        device_add_argv(VM, INST, device, source, guest, True)


def test_start_delete_list_argv() -> None:
    assert start_argv(VM, INST) == ["incus", "start", "--project", P, INST]
    assert delete_argv(SUDO, INST) == ["sudo", "incus", "delete", "--project", P, "--force", INST]
    assert list_instances_argv(VM) == ["incus", "list", "--project", P, "--format", "json"]


def test_exec_argv() -> None:
    assert exec_argv(VM, INST, ["true"]) == ["incus", "exec", "--project", P, INST, "--", "true"]
    assert exec_argv(
        SUDO, INST, ["env"], user=1000, cwd="/workspace/snapshot", env={"B": "2", "A": "x=y"}
    ) == [
        "sudo", "incus", "exec", "--project", P, INST,
        "--user", "1000", "--cwd", "/workspace/snapshot",
        "--env", "A=x=y", "--env", "B=2",
        "--", "env",
    ]  # fmt: skip
    with pytest.raises(IncusError):
        exec_argv(VM, INST, [])


def test_ready_probe_and_launch_argv() -> None:
    assert ready_probe_argv(VM, INST) == ["incus", "exec", "--project", P, INST, "--", "true"]
    assert launch_argv(SUDO, INST) == [
        "sudo", "incus", "exec", "--project", P, INST, "--",
        "/run/current-system/sw/bin/pikaci-incus-run", "/run/pika-cloud/guest-request.json",
    ]  # fmt: skip


def test_write_file_argv() -> None:
    assert write_file_argv(VM, INST, incus_config.GUEST_REQUEST_PATH) == [
        "incus", "exec", "--project", P, INST, "--", "sh", "-c",
        "set -eu; mkdir -p /run/pika-cloud; cat > /run/pika-cloud/guest-request.json",
    ]  # fmt: skip
    awkward = write_file_argv(VM, INST, "/run/it's here/a b.json")
    assert awkward[-1] == (
        "set -eu; mkdir -p '/run/it'\"'\"'s here'; cat > '/run/it'\"'\"'s here/a b.json'"
    )
    with pytest.raises(IncusError):
        write_file_argv(VM, INST, "relative.json")


def test_read_file_argv_and_lifecycle_files() -> None:
    assert read_file_argv(VM, INST, "/run/pika-cloud/result.json") == [
        "incus", "exec", "--project", P, INST, "--", "cat", "/run/pika-cloud/result.json",
    ]  # fmt: skip
    assert incus_config.LIFECYCLE_FILES == (
        ("/run/pika-cloud/logs/guest.log", "guest.log"),
        ("/run/pika-cloud/events.jsonl", "events.jsonl"),
        ("/run/pika-cloud/status.json", "status.json"),
        ("/run/pika-cloud/result.json", "result.json"),
    )


def test_contract_constants() -> None:
    assert incus_config.RUNNER_PATH == "/run/current-system/sw/bin/pikaci-incus-run"
    assert incus_config.GUEST_REQUEST_PATH == "/run/pika-cloud/guest-request.json"
    assert incus_config.READY_PROBE == ("true",)
    assert incus_config.PHASES == (
        "prepare_directories",
        "stage_workspace_snapshot",
        "prepare_runtime",
        "launch_guest",
        "wait_for_completion",
        "collect_artifacts",
    )


# -- mount planning -------------------------------------------------------------------------

BUILD_MOUNT = (
    "/nix/store/aaaa-build",
    "/staged/linux-rust/workspace-build",
    "staged_linux_workspace_build_v1",
    "workspace_build_root",
)
DEPS_MOUNT = (
    "/nix/store/bbbb-deps",
    "/staged/linux-rust/workspace-deps",
    "staged_linux_workspace_deps_v1",
    "workspace_deps_root",
)
SNAPSHOT_SOURCE = "/var/tmp/pikaci/runs/run/snapshot"


def test_plan_mounts() -> None:
    assert plan_mounts(SNAPSHOT_SOURCE, [DEPS_MOUNT, BUILD_MOUNT]) == [
        GuestMount(SNAPSHOT_DEVICE, SNAPSHOT_SOURCE, "/workspace/snapshot", True),
        GuestMount(DEPS_DEVICE, DEPS_MOUNT[0], DEPS_MOUNT[1], True),
        GuestMount(BUILD_DEVICE, BUILD_MOUNT[0], BUILD_MOUNT[1], True),
    ]


def test_plan_devices() -> None:
    devices = plan_devices(CT, INST, SNAPSHOT_SOURCE, [BUILD_MOUNT])
    assert devices == [
        device_add_argv(CT, INST, SNAPSHOT_DEVICE, SNAPSHOT_SOURCE, "/workspace/snapshot", True),
        device_add_argv(CT, INST, BUILD_DEVICE, BUILD_MOUNT[0], BUILD_MOUNT[1], True),
    ]
    assert devices[1] == [
        "incus", "config", "device", "add", "--project", P, INST, BUILD_DEVICE, "disk",
        "path=/staged/linux-rust/workspace-build", "readonly=true",
        "source=/nix/store/aaaa-build", "shift=false",
    ]  # fmt: skip
    assert plan_devices(VM, INST, SNAPSHOT_SOURCE, [])[0][9] == "io.bus=virtiofs"


def test_plan_rejects_a_duplicate_guest_path() -> None:
    other = ("/nix/store/cccc", "/staged/linux-rust/workspace-build", "other_kind", "other")
    with pytest.raises(IncusError, match="mounted twice") as info:
        plan_devices(VM, INST, SNAPSHOT_SOURCE, [BUILD_MOUNT, other])
    assert "\n" not in str(info.value)
    clash = ("/nix/store/cccc", "/workspace/snapshot", "k", "m")
    with pytest.raises(IncusError, match="/workspace/snapshot is mounted twice"):
        plan_mounts(SNAPSHOT_SOURCE, [clash])


def test_plan_rejects_a_duplicate_device_name() -> None:
    same_names = ("/nix/store/cccc", "/staged/elsewhere", BUILD_MOUNT[2], BUILD_MOUNT[3])
    with pytest.raises(IncusError, match=f"device name {BUILD_DEVICE} is used twice"):
        plan_devices(VM, INST, SNAPSHOT_SOURCE, [BUILD_MOUNT, same_names])


def test_plan_rejects_relative_paths() -> None:
    with pytest.raises(IncusError, match="absolute"):
        plan_mounts("relative/snapshot", [])
    with pytest.raises(IncusError, match="absolute"):
        plan_mounts(SNAPSHOT_SOURCE, [("/nix/store/x", "staged/x", "k", "m")])


# -- image identity -------------------------------------------------------------------------


def _image(fingerprint: str, *aliases: str) -> Dict[str, Any]:
    return {
        "fingerprint": fingerprint,
        "aliases": [{"name": alias, "description": ""} for alias in aliases],
        "type": "virtual-machine",
    }


def test_image_identity_exact_alias_match() -> None:
    listing = [_image("f2", "pikaci/dev2"), _image("f1", "pikaci/dev", "other"), _image("f3")]
    identity = parse_image_identity(json.dumps(listing), VM)
    assert identity == IncusImage(project=P, alias="pikaci/dev", fingerprint="f1")
    assert identity.to_dict() == {"project": P, "alias": "pikaci/dev", "fingerprint": "f1"}


def test_image_identity_recorded_in_the_job_execution() -> None:
    identity = parse_image_identity(json.dumps([_image("f1", "pikaci/dev")]), VM)
    execution = RemoteLinuxVmExecution(
        incus_image=identity, phases=[PhaseTiming(phase=p) for p in incus_config.PHASES]
    )
    data = execution.to_dict()
    assert data["backend"] == incus_config.BACKEND
    assert data["incus_image"]["fingerprint"] == "f1"
    assert [item["phase"] for item in data["phases"]] == list(incus_config.PHASES)


@pytest.mark.parametrize(
    ("listing", "match"),
    [
        ([], "no image carries exactly this alias"),
        ([_image("f2", "pikaci/dev2"), _image("f3", "pikaci/dev-old")], "no image carries"),
        ([_image("f1", "pikaci/dev"), _image("f2", "pikaci/dev")], "2 images carry this alias"),
        ([{"aliases": [{"name": "pikaci/dev"}]}], "no fingerprint"),
        ([{"fingerprint": "", "aliases": [{"name": "pikaci/dev"}]}], "no fingerprint"),
        ({"fingerprint": "f1"}, "expected a JSON list"),
    ],
)
def test_image_identity_errors(listing: Any, match: str) -> None:
    with pytest.raises(IncusError, match=match) as info:
        parse_image_identity(json.dumps(listing), VM)
    message = str(info.value)
    assert "\n" not in message
    assert "`pikaci/dev`" in message
    assert f"`{P}`" in message


@pytest.mark.parametrize("text", ["", "not json", '[{"fingerprint": ', "[1,\n2"])
def test_image_identity_malformed_json(text: str) -> None:
    with pytest.raises(IncusError, match="invalid JSON") as info:
        parse_image_identity(text, VM)
    assert "\n" not in str(info.value)
    assert "pikaci/dev" in str(info.value)


def test_image_identity_ignores_odd_records() -> None:
    listing: List[Any] = [
        "x",
        {"aliases": None},
        {"aliases": ["pikaci/dev"]},
        _image("f1", "pikaci/dev"),
    ]
    assert parse_image_identity(json.dumps(listing), VM).fingerprint == "f1"


# -- owned instances and reaping ------------------------------------------------------------

NOW = datetime(2026, 3, 11, 12, 0, 0, tzinfo=timezone.utc)


def _instance(name: str, config: Dict[str, str]) -> Dict[str, Any]:
    return {"name": name, "status": "Running", "type": "virtual-machine", "config": config}


def _listing() -> str:
    old = (NOW - timedelta(hours=5)).isoformat()
    fresh = (NOW - timedelta(minutes=5)).isoformat()
    return json.dumps(
        [
            _instance("pikaci-old", owner_config("run-a", old)),
            _instance("pikaci-fresh", owner_config("run-b", fresh)),
            _instance("pikaci-unmarked", {"limits.cpu": "2"}),  # looks like ours, is not marked
            _instance("someone-else", {"user.other": "x"}),
            _instance("pikaci-no-time", {"user.pikaci.run-id": "run-c"}),
            _instance("pikaci-bad-time", owner_config("run-d", "yesterday")),
            _instance("pikaci-nanos", owner_config("run-e", "2026-03-10T00:00:00.123456789Z")),
            {"name": "pikaci-no-config"},
            {"config": owner_config("run-f", old)},  # no name
        ]
    )


def test_parse_owned_instances() -> None:
    owned = parse_owned_instances(_listing())
    assert [item.name for item in owned] == [
        "pikaci-old",
        "pikaci-fresh",
        "pikaci-no-time",
        "pikaci-bad-time",
        "pikaci-nanos",
    ]
    assert owned[2] == OwnedInstance("pikaci-no-time", "run-c", "")
    assert owned[0] == ("pikaci-old", "run-a", (NOW - timedelta(hours=5)).isoformat())


def test_reap_candidates() -> None:
    owned = parse_owned_instances(_listing())
    assert reap_candidates(owned, NOW, 3600) == ["pikaci-nanos", "pikaci-old"]
    assert reap_candidates(owned, NOW, 60) == ["pikaci-fresh", "pikaci-nanos", "pikaci-old"]
    assert reap_candidates(owned, NOW, 60, keep_run_ids={"run-a"}) == [
        "pikaci-fresh",
        "pikaci-nanos",
    ]
    assert reap_candidates(owned, NOW, 10 * 86400) == []


def test_unmarked_instances_are_never_reaped() -> None:
    owned = parse_owned_instances(_listing())
    for older_than in (0, 1, 3600, -(10**9)):
        names = reap_candidates(owned, NOW, older_than)
        for unmarked in ("pikaci-unmarked", "someone-else", "pikaci-no-config"):
            assert unmarked not in names
        # an unreadable creation time leaves the instance alone too
        assert "pikaci-no-time" not in names
        assert "pikaci-bad-time" not in names


@pytest.mark.parametrize(
    ("text", "match"),
    [("{", "invalid JSON"), ('{"name": "x"}', "expected a JSON list"), ("[1]", "item 0")],
)
def test_parse_owned_instances_errors(text: str, match: str) -> None:
    with pytest.raises(IncusError, match=match) as info:
        parse_owned_instances(text)
    assert "\n" not in str(info.value)
