"""Incus lanes against the real daemon (containers), locally and through the SSH placement
(sshd on 127.0.0.1, whose login user may use incus), plus the reaper and the image task."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Dict, List

import pytest

from pikaci.incus import config as incus_config
from pikaci.incus.commands import instance_name
from pikaci.incus.config import PHASES
from pikaci.incus.guard import guarded_instance
from pikaci.incus.hosts import LocalHost
from tests.fixtures.incus import Incus, incus_env
from tests.fixtures.projects import LaneSpec, interrupt_when_printed
from tests.fixtures.sshd import USER_HOME
from tests.fixtures.staged import BUILD_ROOT, DEPS_ROOT, WRAPPERS
from tests.fixtures.support import REPO_ROOT

IMAGE_CACHE = Path(os.environ.get("PIKACI_INCUS_CACHE", "/var/cache/pikaci/incus"))


def lane(lane_id: str, command: str, placement: str = "remote_ssh", **kwargs) -> LaneSpec:  # type: ignore[no-untyped-def]
    return LaneSpec(lane_id, command, placement=placement, runtime="incus", **kwargs)


def only_job(project) -> Dict[str, object]:  # type: ignore[no-untyped-def]
    (job,) = project.latest_run()["jobs"]
    return job  # type: ignore[no-any-return]


def gone(project, incus: Incus) -> bool:  # type: ignore[no-untyped-def]
    """The latest run's instances are deleted (other sessions may have their own running)."""
    record = project.latest_run()
    names = {instance_name(str(record["run_id"]), str(job["id"])) for job in record["jobs"]}
    return not names & set(incus.instances())


def phases(job: Dict[str, object]) -> List[str]:
    execution = job["remote_linux_vm_execution"]
    return [p["phase"] for p in execution["phases"]]  # type: ignore[index]


ALL_PHASES = list(PHASES)


def test_a_passing_remote_lane(make_project, incus_builder, incus):
    project = make_project([lane("ok", 'id -un; cat src/hello.txt; echo out > "$ARTIFACTS/o.txt"')])
    done = project.doit("run", "lane:ok", env=incus_builder)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[ok] pikaci" in done.stdout and "[ok] hello" in done.stdout
    job = only_job(project)
    assert (job["status"], job["executor"], job["exit_code"]) == ("passed", "remote_linux_vm", 0)
    assert phases(job) == ALL_PHASES
    image = job["remote_linux_vm_execution"]["incus_image"]  # type: ignore[index]
    assert image == {
        "project": incus.project,
        "alias": incus.image_alias,
        "fingerprint": incus.image_fingerprint,
    }
    artifacts = Path(str(job["artifacts_dir"]))
    assert (artifacts / "o.txt").read_text() == "out\n"
    for name in ("guest.log", "events.jsonl", "status.json", "result.json"):
        assert (artifacts / name).is_file(), name
    assert "hello" in (artifacts / "guest.log").read_text()
    host_log = Path(str(job["host_log_path"])).read_text()
    assert "incus init" in host_log and "config device add" in host_log
    assert gone(project, incus)


def test_a_failing_lane_propagates_its_exit_code(make_project, incus_builder, incus):
    project = make_project([lane("bad", "echo nope; exit 7")])
    done = project.doit("run", "lane:bad", env=incus_builder)
    assert done.returncode != 0
    job = only_job(project)
    assert (job["status"], job["exit_code"]) == ("failed", 7)
    assert gone(project, incus)


def test_a_lane_cannot_write_the_snapshot(make_project, incus_builder, incus):
    project = make_project([lane("w", "touch /workspace/snapshot/src/new")])
    done = project.doit("run", "lane:w", env=incus_builder)
    assert done.returncode != 0
    job = only_job(project)
    assert job["status"] == "failed"
    assert "Read-only file system" in (Path(str(job["artifacts_dir"])) / "guest.log").read_text()
    assert gone(project, incus)


def test_a_timing_out_lane_is_124_and_its_instance_deleted(make_project, incus_builder, incus):
    project = make_project([lane("slow", "sleep 30", timeout_secs=2)])
    done = project.doit("run", "lane:slow", env=incus_builder)
    assert done.returncode != 0
    job = only_job(project)
    assert (job["status"], job["exit_code"]) == ("failed", 124)
    assert gone(project, incus)


def test_sigint_deletes_the_instance_and_marks_the_run(make_project, incus_builder, incus):
    project = make_project([lane("s", "echo started; sleep 300")])

    def running() -> None:
        assert not gone(project, incus), "the instance runs"

    code = interrupt_when_printed(
        project, incus_builder, "lane:s", "[s] started", 120, before_signal=running
    )
    assert code == 130
    job = only_job(project)
    assert job["status"] == "failed" and str(job["message"]).startswith("interrupted by SIGINT")
    assert project.latest_run()["status"] == "failed"
    assert gone(project, incus)


def test_a_staged_lane_sees_its_payload_mounts(make_staged_project, incus_builder, incus):
    spec = lane(
        "check",
        f"{BUILD_ROOT}/bin/run-check; ls {DEPS_ROOT}/share/inputs; touch {BUILD_ROOT}/x || true",
    )
    project = make_staged_project(WRAPPERS, {"main": [spec]}, realize="builder", hermetic=True)
    done = project.doit("run", "lane:check", env=incus_builder)
    assert done.returncode == 0, done.stdout + done.stderr
    job = only_job(project)
    guest_log = (Path(str(job["artifacts_dir"])) / "guest.log").read_text()
    assert "staged lane ran as 1000" in guest_log and "hello.txt" in guest_log
    assert "Read-only file system" in guest_log
    assert (Path(str(job["artifacts_dir"])) / "all.txt").read_text() == "hello\n"
    host_log = Path(str(job["host_log_path"])).read_text()
    assert "pk-staged-l-47d99971" in host_log and "pk-staged-l-abd7f13d" in host_log
    assert gone(project, incus)


def test_a_local_incus_lane(make_project, incus):
    project = make_project([lane("here", "id -u; echo hi", placement="local")])
    done = project.doit("run", "lane:here", env=incus_env(incus))
    assert done.returncode == 0, done.stdout + done.stderr
    job = only_job(project)
    assert (job["status"], job["executor"]) == ("passed", "local_incus")
    assert phases(job) == ALL_PHASES
    assert "[here] 1000" in done.stdout
    assert gone(project, incus)


def test_a_first_incus_command_ever_does_not_break_a_local_lane(make_project, incus, tmp_path):
    """A user who never ran `incus` gets a welcome text on stderr from the first command; the
    lane passes anyway, and the text is in the job log, not in what was parsed."""
    home = tmp_path / "fresh-home"
    home.mkdir()
    project = make_project([lane("first", "echo hi", placement="local")])
    done = project.doit("run", "lane:first", env={**incus_env(incus), "HOME": str(home)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert (home / ".config" / "incus").is_dir()  # the run was the first incus use there
    job = only_job(project)
    assert job["status"] == "passed"
    host_log = Path(str(job["host_log_path"])).read_text()
    assert "stderr: To start your first container" in host_log
    assert gone(project, incus)


def test_a_builder_user_who_never_ran_incus_passes_its_first_lane(
    make_project, incus_builder, incus
):
    config = USER_HOME / ".config" / "incus"
    subprocess.run(["rm", "-rf", str(config)], check=True)
    project = make_project([lane("first", "echo hi")])
    done = project.doit("run", "lane:first", env=incus_builder)
    assert done.returncode == 0, done.stdout + done.stderr
    assert config.is_dir()  # the lane's commands were the user's first incus commands
    job = only_job(project)
    assert job["status"] == "passed"
    assert "stderr: To start your first container" in Path(str(job["host_log_path"])).read_text()
    assert gone(project, incus)


def test_on_a_copy_on_write_pool_instances_come_from_the_image(make_project, incus):
    project = make_project([lane("cow", "true", placement="local")])
    done = project.doit("run", "lane:cow", env=incus_env(incus))
    assert done.returncode == 0, done.stdout + done.stderr
    host_log = Path(str(only_job(project)["host_log_path"])).read_text()
    driver = "btrfs" if incus.storage_pool == "pikaci" else "dir"
    said = f"storage pool {incus.storage_pool} ({driver}): instances by "
    assert said + ("incus init from the image" if driver == "btrfs" else "copy") in host_log


def test_on_a_dir_pool_instances_are_copies_of_a_base_made_once(make_project, incus):
    """The `dir` pool unpacks the image for every `incus init`: lanes copy a prepared base
    instead. The first lane makes it (and removes a base of another image), the next copies."""
    env = {**incus_env(incus), "PIKACI_INCUS_STORAGE_POOL": "default"}
    stale = "pikaci-base-5ta1e0000000"
    incus.run(
        "init", "--storage", "default", "-c", "user.pikaci.base-image=" + "0" * 64,
        incus.image_alias, stale,
    )  # fmt: skip
    project = make_project(
        [lane("one", "echo one", placement="local"), lane("two", "echo two", placement="local")]
    )
    made: List[str] = []
    try:
        first = project.doit("run", "lane:one", env=env)
        assert first.returncode == 0, first.stdout + first.stderr
        made = incus.instances("pikaci-base-")
        log = Path(str(only_job(project)["host_log_path"])).read_text()
        assert "storage pool default (dir): instances by copy of base instance" in log
        assert "made base instance pikaci-base-" in log
        assert stale not in made and len(made) == 1  # the other image's base is gone
        assert f"incus copy --project {incus.project} {made[0]} " in log
        second = project.doit("run", "lane:two", env=env)
        assert second.returncode == 0, second.stdout + second.stderr
        log = Path(str(only_job(project)["host_log_path"])).read_text()
        assert f"copy of base instance {made[0]}" in log and "made base instance" not in log
        assert incus.instances("pikaci-base-") == made
        assert gone(project, incus)
    finally:
        for name in {stale, *made}:
            incus.delete(name)


def test_the_reaper_removes_old_marked_instances_only(make_project, incus):
    project = make_project([lane("x", "true", placement="local")])
    base = ["incus", "init", "--project", incus.project, "--storage", incus.storage_pool]
    old = "pikaci-orphan0001"
    stranger = "pikaci-not-ours01"
    subprocess.run(
        [
            *base,
            "-c",
            "user.pikaci.run-id=20200101T000000Z-00000000",
            "-c",
            "user.pikaci.created-at=2020-01-01T00:00:00+00:00",
            incus.image_alias,
            old,
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run([*base, incus.image_alias, stranger], check=True, capture_output=True)
    try:
        done = project.pikaci("incus-reap", "--older-than", "3600", "--json", env=incus_env(incus))
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"removed": [old], "kept": []}
        assert incus.instances() == [stranger]
    finally:
        for name in (old, stranger):
            subprocess.run(
                ["incus", "delete", "--project", incus.project, "--force", name],
                capture_output=True,
                check=False,
            )


def test_the_image_task_imports_only_when_the_alias_moved(make_project, incus, tmp_path):
    project = make_project([lane("x", "true", placement="local")])
    env = {**incus_env(incus), "PIKACI_INCUS_IMAGE_ALIAS": "pikaci/test-import"}
    cached = sorted(IMAGE_CACHE.glob("pikaci-debian-*.tar.gz"), key=lambda p: p.stat().st_mtime)
    assert cached, f"no cached test image under {IMAGE_CACHE}"
    image = str(cached[-1])
    first = project.doit("incus_image", "--image", image, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "imported pikaci/test-import" in first.stdout
    again = project.doit("incus_image", "--image", image, env=env)
    assert again.returncode == 0 and "-- incus_image" in again.stdout  # up to date
    subprocess.run(
        ["incus", "image", "alias", "delete", "--project", incus.project, "pikaci/test-import"],
        check=False,
        capture_output=True,
    )


def test_a_guard_deletes_its_instance_unless_the_block_ends_cleanly(incus):
    settings = incus_config.incus_settings_from_environment(incus_env(incus), sudo_default=False)
    host = LocalHost(log=lambda line: None)
    name = incus.new_name()
    incus.run(*incus.init_args(name))
    try:
        with guarded_instance(host, settings, name):
            pass  # the lane ended normally: its own delete is enough
        assert name in incus.instances(name)
        with pytest.raises(RuntimeError), guarded_instance(host, settings, name):
            raise RuntimeError("the lane broke off")
        deadline = time.monotonic() + 30
        while name in incus.instances(name):
            assert time.monotonic() < deadline, "the guard left the instance"
            time.sleep(0.2)
    finally:
        incus.delete(name)


def test_a_guard_whose_holder_dies_deletes_the_instance(incus, tmp_path):
    """The holder is a process SIGKILLed while it holds the guard, as a killed `doit run` is."""
    name = incus.new_name()
    incus.run(*incus.init_args(name))
    holder = textwrap.dedent(
        f"""\
        import os, sys, time
        from pikaci.incus import config
        from pikaci.incus.guard import guarded_instance
        from pikaci.incus.hosts import LocalHost
        settings = config.incus_settings_from_environment(os.environ, sudo_default=False)
        with guarded_instance(LocalHost(log=lambda line: None), settings, {name!r}):
            print("held", flush=True)
            time.sleep(300)
        """
    )
    env = {**os.environ, **incus_env(incus), "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", holder], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        assert name in incus.instances(name)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 30
        while name in incus.instances(name):
            assert time.monotonic() < deadline, "the guard left the instance"
            time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait()
        incus.delete(name)
