"""The real Incus set up by scripts/incus-setup.sh: the image, the test project, and the guest
runner in a container driven the way the Incus runtime drives it (docs/guest-contract.md)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, Tuple

import orjson
import pytest

from pikaci.guest import runner as guest
from tests.fixtures.incus import CACHE_DIR, Incus

REQUEST_PATH = f"{guest.DEFAULT_RUN_DIR}/{guest.REQUEST_FILE}"


def run_request(server: Incus, name: str, command: str) -> Tuple[Any, Dict[str, Any]]:
    """Write a guest request for `command`, run the image's runner on it; (the run, result.json)."""
    request = {"schema_version": 2, "command": command, "timeout_secs": 60, "run_as_root": False}
    written = server.exec(
        name,
        "sh",
        "-c",
        f"mkdir -p {guest.DEFAULT_RUN_DIR} && cat > {REQUEST_PATH}",
        input=json.dumps(request, indent=2),
    )
    assert written.returncode == 0, written.stderr
    ran = server.exec(name, guest.RUNNER_PATH, REQUEST_PATH)
    result = orjson.loads(server.exec(name, "cat", f"{guest.DEFAULT_RUN_DIR}/result.json").stdout)
    return ran, result


def test_image_and_profiles_of_the_default_project_are_visible_in_the_test_project(
    incus: Incus,
) -> None:
    shown = incus.run("image", "show", incus.image_alias)
    assert "os: debian" in shown.stdout
    images = orjson.loads(incus.run("image", "list", "--format", "json").stdout)
    assert incus.image_fingerprint in [image["fingerprint"] for image in images]
    for profile in ("default", incus.profile):
        assert incus.run("profile", "show", profile).returncode == 0
    # the fingerprint is the sha256 of the cached unified tarball the setup imported
    cached = CACHE_DIR.glob("pikaci-debian-*.tar.gz.sha256")
    assert incus.image_fingerprint in {path.read_text().strip() for path in cached}


@pytest.fixture(scope="class")
def container(incus: Incus) -> Iterator[Tuple[str, Path, Path]]:
    """(instance, snapshot dir, artifacts dir): one started container per class, as the runtime
    sets it up (init, disk devices, start), deleted when the class is done."""
    name = incus.new_name()
    snapshot = Path(tempfile.mkdtemp(prefix="pikaci-incus-snap-", dir="/tmp"))
    artifacts = Path(tempfile.mkdtemp(prefix="pikaci-incus-art-", dir="/tmp"))
    try:
        # world-writable, so only the device's readonly flag keeps the guest out
        snapshot.chmod(0o777)
        (snapshot / "marker.txt").write_text("from the host\n")
        os.chown(artifacts, guest.GUEST_UID, guest.GUEST_GID)
        incus.run(*incus.init_args(name, "limits.cpu=2", "limits.memory=4096MiB"))
        incus.run(
            "config", "device", "add", name, "snap", "disk", f"source={snapshot}",
            "path=/workspace/snapshot", "readonly=true",
        )  # fmt: skip
        incus.run(
            "config", "device", "add", name, "art", "disk", f"source={artifacts}",
            "path=/artifacts", "shift=true",
        )  # fmt: skip
        incus.run("start", name)
        yield name, snapshot, artifacts
    finally:
        incus.delete(name)
        shutil.rmtree(snapshot, ignore_errors=True)
        shutil.rmtree(artifacts, ignore_errors=True)


class TestContainer:
    """One container for the class (starting one costs seconds), deleted at its end."""

    def test_the_image_has_the_guest_layout(
        self,
        incus: Incus,
        container: Tuple[str, Path, Path],
    ) -> None:
        name = container[0]
        done = incus.exec(
            name,
            "sh",
            "-c",
            "id pikaci; stat -c '%n %u:%g' /home/pikaci /cargo-home /cargo-target; "
            "test -d /workspace/snapshot && test -d /staged && echo dirs; "
            f"test -x {guest.RUNNER_PATH} && echo runner; "
            f"readlink {guest.SYSTEM_BIN}/python3 {guest.SYSTEM_BIN}/runuser",
        )
        assert done.returncode == 0, done.stderr
        assert "uid=1000(pikaci) gid=100(users)" in done.stdout
        for path in ("/home/pikaci", "/cargo-home", "/cargo-target"):
            assert f"{path} 1000:100" in done.stdout
        assert "dirs\nrunner\n/usr/bin/python3\n/usr/sbin/runuser\n" in done.stdout
        # the runner in the image is this checkout's
        shipped = incus.exec(name, "cat", guest.RUNNER_PATH)
        assert shipped.stdout == Path(guest.__file__).read_text()

    def test_the_runner_runs_a_request_as_pikaci(
        self,
        incus: Incus,
        container: Tuple[str, Path, Path],
    ) -> None:
        name = container[0]
        ran, result = run_request(incus, name, "id -u; echo hi; cat marker.txt")
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert "\n1000\nhi\nfrom the host\n" in ran.stdout
        assert "[pikaci] test passed" in ran.stdout
        assert result["status"] == "completed"
        assert result["exit_code"] == 0
        status = orjson.loads(
            incus.exec(name, "cat", f"{guest.DEFAULT_RUN_DIR}/status.json").stdout
        )
        assert status["state"] == "completed"
        log = incus.exec(name, "cat", f"{guest.DEFAULT_RUN_DIR}/logs/guest.log").stdout
        assert "hi\n" in log

    def test_a_failing_command_propagates_its_exit_code(
        self,
        incus: Incus,
        container: Tuple[str, Path, Path],
    ) -> None:
        ran, result = run_request(incus, container[0], "exit 3")
        assert ran.returncode == 3
        assert (result["status"], result["exit_code"]) == ("failed", 3)

    def test_the_read_only_snapshot_cannot_be_written(
        self,
        incus: Incus,
        container: Tuple[str, Path, Path],
    ) -> None:
        name, snapshot, _ = container
        assert incus.exec(name, "cat", "/workspace/snapshot/marker.txt").stdout == "from the host\n"
        for user, group in ((0, 0), (guest.GUEST_UID, guest.GUEST_GID)):
            done = incus.exec(name, "touch", "/workspace/snapshot/written", user=user, group=group)
            assert done.returncode != 0
            assert "Read-only file system" in done.stderr
        assert sorted(path.name for path in snapshot.iterdir()) == ["marker.txt"]

    def test_a_shifted_disk_is_writable_as_pikaci_and_owned_by_uid_1000_on_the_host(
        self,
        incus: Incus,
        container: Tuple[str, Path, Path],
    ) -> None:
        name, _, artifacts = container
        done = incus.exec(
            name,
            "sh",
            "-c",
            "echo out > /artifacts/out.txt",
            user=guest.GUEST_UID,
            group=guest.GUEST_GID,
        )
        assert done.returncode == 0, done.stderr
        written = artifacts / "out.txt"
        assert written.read_text() == "out\n"
        assert (written.stat().st_uid, written.stat().st_gid) == (guest.GUEST_UID, guest.GUEST_GID)


def test_no_instance_left_behind(incus: Incus) -> None:
    # runs after the class above has deleted its container
    assert incus.leaked() == []
