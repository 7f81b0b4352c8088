"""`remote_ssh` + `bubblewrap` pieces in-process: the bwrap argv, the system-dir probe, payload
mounts from the builder's store, a builder without bwrap (the lanes through doit against a
real sshd: `tests/integration/test_remote_sandbox.py`)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import List

import pytest

from pikaci.builder.layout import RemoteLayout
from pikaci.builder.transport import Builder, RemoteResult
from pikaci.payloads.manifest import PayloadManifest, PayloadMount
from pikaci.payloads.staged import StagedOutput
from pikaci.runtimes.guest_layout import (
    SYSTEM_DIRS_PROBE,
    SandboxError,
    bwrap_command,
    parse_system_dirs,
    payload_mounts,
    probe_system_dirs,
)
from pikaci.runtimes.mounts import builder_mount_sources
from pikaci.runtimes.remote_sandbox import _prepare

MERGED_USR = (("usr", None), ("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"))
SPLIT = (("usr", None), ("bin", None), ("sbin", None), ("lib", None), ("lib64", None))


def argv_for(system_dirs, **kwargs) -> List[str]:  # type: ignore[no-untyped-def]
    options = {
        "system": "/w/sandbox/sw-0123",
        "run_dir": "/w/runs/r/jobs/j/pika-cloud",
        "snapshot_dir": "/w/snapshots/t/snapshot",
        "mounts": [("/nix/store/abc-build", "/staged/linux-rust/workspace-build")],
        "system_dirs": system_dirs,
        "run_as_root": False,
        "network": False,
        **kwargs,
    }
    return bwrap_command(**options)


def pairs(argv: List[str], flag: str) -> List[tuple]:
    return [(argv[i + 1], argv[i + 2]) for i, word in enumerate(argv) if word == flag]


def test_bwrap_argv_for_a_merged_usr_host():
    argv = argv_for(MERGED_USR)
    assert argv[:11] == [
        "bwrap",
        "--die-with-parent",
        "--new-session",
        "--unshare-all",
        "--uid",
        "1000",
        "--gid",
        "100",
        "--clearenv",
        "--setenv",
        "PATH",
    ]
    assert pairs(argv, "--symlink") == [
        ("usr/bin", "/bin"),
        ("usr/sbin", "/sbin"),
        ("usr/lib", "/lib"),
    ]
    assert pairs(argv, "--ro-bind") == [
        ("/usr", "/usr"),
        ("/w/sandbox/sw-0123/etc/passwd", "/etc/passwd"),
        ("/w/sandbox/sw-0123/etc/group", "/etc/group"),
        ("/w/sandbox/sw-0123/etc/hosts", "/etc/hosts"),
        ("/w/sandbox/sw-0123", "/run/current-system/sw"),
        ("/w/snapshots/t/snapshot", "/workspace/snapshot"),
        ("/nix/store/abc-build", "/staged/linux-rust/workspace-build"),
    ]
    assert pairs(argv, "--bind") == [("/w/runs/r/jobs/j/pika-cloud", "/run/pika-cloud")]
    assert argv[-5:] == [
        "--chdir",
        "/workspace/snapshot",
        "--",
        "/run/current-system/sw/bin/pikaci-incus-run",
        "/run/pika-cloud/guest-request.json",
    ]
    assert "--share-net" not in argv


def test_bwrap_argv_for_a_split_host_as_root_with_network():
    argv = argv_for(SPLIT, run_as_root=True, network=True, env=[("FOO", "bar")])
    assert "--symlink" not in argv
    assert pairs(argv, "--ro-bind")[:5] == [(f"/{d}", f"/{d}") for d, _ in SPLIT]
    assert argv[argv.index("--uid") + 1] == "0" and argv[argv.index("--gid") + 1] == "0"
    assert "--share-net" in argv and "--chmod" not in argv
    assert ("FOO", "bar") in pairs(argv, "--setenv")
    assert ("/etc/resolv.conf", "/etc/resolv.conf") in pairs(argv, "--ro-bind-try")


def test_the_shell_probe_sees_the_same_system_dirs_as_python():
    done = subprocess.run(["sh", "-c", SYSTEM_DIRS_PROBE], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert parse_system_dirs(done.stdout.splitlines()) == probe_system_dirs()
    assert parse_system_dirs(["sysdir usr dir", "sysdir bin link usr/bin", "sysdir etc dir"]) == (
        ("usr", None),
        ("bin", "usr/bin"),
    )


def staged_output(*mounts: PayloadMount) -> StagedOutput:
    return StagedOutput(
        role="build",
        node_id="prepare-p-workspace-build",
        installable="x",
        output_name="build",
        store_path=Path("/nix/store/abc-build"),
        manifest=PayloadManifest(schema_version=1, kind="k", mounts=mounts),
        on_builder=True,
    )


def test_payload_mounts_come_from_the_builders_store():
    builder = Builder(host="b", nix_store="/srv/chroot")
    output = staged_output(
        PayloadMount("root", ".", "/staged/root", True),
        PayloadMount("share", "share/x/", "/staged/share", True),
    )
    assert payload_mounts([output], builder_mount_sources(builder)) == [
        ("/srv/chroot/nix/store/abc-build", "/staged/root"),
        ("/srv/chroot/nix/store/abc-build/share/x", "/staged/share"),
    ]
    assert payload_mounts([output], builder_mount_sources(Builder(host="b")))[0] == (
        "/nix/store/abc-build",
        "/staged/root",
    )
    clash = staged_output(PayloadMount("sneaky", ".", "/run/pika-cloud", True))
    with pytest.raises(SandboxError, match=r"collides with the guest layout \(/run\)"):
        payload_mounts([clash], builder_mount_sources(builder))
    with pytest.raises(SandboxError, match="reuses guest path /staged/root"):
        payload_mounts([output, output], builder_mount_sources(builder))


class LocalTransport:
    """Runs a transport script here with a PATH that has no bwrap."""

    builder = Builder(host="builder-without-bwrap")

    def run(self, label: str, script: str, **kwargs: object) -> RemoteResult:
        done = subprocess.run(
            ["/bin/sh", "-c", script],
            env={"PATH": "/nonexistent"},
            capture_output=True,
            check=False,
        )
        return RemoteResult(exit_code=done.returncode, stdout=done.stdout + done.stderr)


def test_a_builder_without_bwrap_is_one_clear_error(tmp_path):
    layout = RemoteLayout(str(tmp_path))
    with pytest.raises(SandboxError) as caught:
        _prepare(LocalTransport(), layout, f"{tmp_path}/runs/x/jobs/j", b"")  # type: ignore[arg-type]
    assert str(caught.value) == (
        "bubblewrap (`bwrap`) is not installed on builder builder-without-bwrap: "
        "install it there (apt-get install bubblewrap)"
    )
    assert not (tmp_path / "runs").exists()  # checked before anything is touched
