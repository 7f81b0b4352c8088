"""`pikaci builder check` against the loopback builder: ready as the tests set it up, then each
broken state an operator meets, created for real, reported on its own line with a fix."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, FrozenSet, Iterator, Mapping, Optional

import orjson
import pytest

from tests.fixtures.projects import LaneSpec
from tests.fixtures.sshd import USER, Sshd, running_sshd
from tests.fixtures.support import PIKACI


def check(env: Dict[str, str], cwd: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """`pikaci builder check` over a connection of its own (a fresh control dir)."""
    control = tempfile.mkdtemp(prefix="pci-", dir="/tmp")
    return subprocess.run(
        [*PIKACI, "builder", "check", *flags],
        cwd=cwd,
        env={**env, "TMPDIR": control},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def lines_of(done: subprocess.CompletedProcess[str]) -> Dict[str, str]:
    """Check name -> its whole line."""
    found = {}
    for line in done.stdout.splitlines():
        if line.startswith(("ok   ", "FAIL ")):
            found[line[5:].split(":", 1)[0]] = line
    return found


def test_the_test_builder_is_ready(incus_builder, tmp_path: Path) -> None:
    done = check(incus_builder, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = lines_of(done)
    assert set(lines) == {
        "ssh", "tools", "work dir", "python3", "bwrap", "nix",
        "incus", "incus project", "incus profile", "incus pool", "incus image",
    }  # fmt: skip
    assert all(line.startswith("ok") for line in lines.values()), done.stdout
    assert done.stdout.splitlines()[-1].endswith("is ready")
    report = orjson.loads(check(incus_builder, tmp_path, "--json").stdout)
    # no dodo.py where it runs: every runtime counts
    assert report["ready"] is True
    assert sorted(report["needed"]) == ["bubblewrap", "host_process", "incus", "nix"]
    assert {item["name"] for item in report["checks"]} == set(lines)


def test_each_broken_state_is_one_line_with_its_fix(incus_builder, tmp_path: Path) -> None:
    broken = {
        **incus_builder,
        "PIKACI_INCUS_PROFILE": "no-such-profile",
        "PIKACI_INCUS_STORAGE_POOL": "no-such-pool",
        "PIKACI_INCUS_IMAGE_ALIAS": "no/such-image",
        "PIKACI_INCUS_PROJECT": "no-such-project",
        "PIKACI_BUILDER_WORK_DIR": "/root/not-for-the-builder-user",
        "PIKACI_BUILDER_NIX_STORE": "/root/no-store-here",
    }
    done = check(broken, tmp_path)
    assert done.returncode == 1
    lines = lines_of(done)
    expected = {
        "work dir": "PIKACI_BUILDER_WORK_DIR",
        "nix": "PIKACI_BUILDER_NIX_STORE",
        "incus project": "incus project create",
        "incus profile": "PIKACI_INCUS_PROFILE",
        "incus pool": "docs/incus-builder.md",
        "incus image": "pikaci incus-image",
    }
    for name, fix in expected.items():
        assert lines[name].startswith("FAIL") and "(fix: " in lines[name], lines[name]
        assert fix in lines[name], lines[name]
    assert lines["work dir"].startswith(
        f"FAIL work dir: /root/not-for-the-builder-user is not writable by {USER}"
    )
    for name in ("ssh", "tools", "python3", "bwrap", "incus"):
        assert lines[name].startswith("ok"), lines[name]
    assert done.stdout.splitlines()[-1].endswith("is NOT ready")


def test_incus_without_the_right_to_use_it(incus_builder, tmp_path: Path) -> None:
    """The defaults of a fresh builder: `sudo incus` where there is no such sudo rule."""
    done = check({**incus_builder, "PIKACI_INCUS_SUDO": "1"}, tmp_path)
    assert done.returncode == 1
    line = lines_of(done)["incus"]
    assert (
        line.startswith("FAIL incus: ") and "incus-admin" in line and "PIKACI_INCUS_SUDO=0" in line
    )


def test_only_what_the_catalogs_remote_lanes_need_decides(
    make_project, incus_builder, tmp_path: Path
) -> None:
    project = make_project([LaneSpec("r", "true", placement="remote_ssh")])
    done = check({**incus_builder, "PIKACI_INCUS_PROFILE": "no-such-profile"}, project.root)
    assert done.returncode == 0, done.stdout  # no Incus lane: its failure is reported, not fatal
    assert lines_of(done)["incus profile"].startswith("FAIL")
    assert "needed by the catalog: host_process" in done.stdout
    sandbox = make_project([LaneSpec("s", "true", placement="remote_ssh", runtime="bubblewrap")])
    done = check({**incus_builder, "PIKACI_BUILDER_WORK_DIR": "/root/nope"}, sandbox.root)
    assert done.returncode == 1  # every runtime needs the work dir


def test_a_builder_that_cannot_be_reached_says_why(
    sshd: Sshd, incus_builder, tmp_path: Path
) -> None:
    config = tmp_path / "ssh_config"
    config.write_text(
        sshd.ssh_config.read_text().replace("StrictHostKeyChecking no", "StrictHostKeyChecking yes")
    )
    done = check({**incus_builder, "PIKACI_BUILDER_SSH_CONFIG": str(config)}, tmp_path)
    assert done.returncode == 1
    line = lines_of(done)["ssh"]
    assert "Host key verification failed" in line and "ssh-keyscan" in line


def test_the_doit_task_checks_for_the_catalog_and_is_never_a_default(
    make_project, incus_builder
) -> None:
    project = make_project([LaneSpec("i", "true", placement="remote_ssh", runtime="incus")])
    control = tempfile.mkdtemp(prefix="pci-", dir="/tmp")
    env = {**incus_builder, "TMPDIR": control}
    done = project.doit("builder_check", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "needed by the catalog: incus" in done.stdout and "is ready" in done.stdout
    broken = project.doit("builder_check", env={**env, "PIKACI_INCUS_PROFILE": "no-such"})
    assert broken.returncode != 0
    assert "FAIL incus profile" in broken.stdout and "is not ready" in broken.stdout + broken.stderr
    listing = project.doit("list")
    assert any(line.startswith("builder_check ") for line in listing.stdout.splitlines())


def test_the_documented_host_key_fix_works(sshd: Sshd, incus_builder, tmp_path: Path) -> None:
    """docs/builders.md: an unknown host key fails at once; `ssh-keyscan -p <port> <host> >>
    known_hosts` fixes it."""
    known = tmp_path / "known_hosts"
    known.write_text("")
    config = tmp_path / "ssh_config"
    config.write_text(
        sshd.ssh_config.read_text()
        .replace("StrictHostKeyChecking no", "StrictHostKeyChecking yes")
        .replace("UserKnownHostsFile /dev/null", f"UserKnownHostsFile {known}")
    )
    env = {**incus_builder, "PIKACI_BUILDER_SSH_CONFIG": str(config)}
    assert lines_of(check(env, tmp_path))["ssh"].startswith("FAIL ssh")
    scanned = subprocess.run(
        ["ssh-keyscan", "-p", str(sshd.port), "127.0.0.1"], capture_output=True, text=True
    )
    assert scanned.returncode == 0 and scanned.stdout, scanned.stderr
    with known.open("a") as out:
        out.write(scanned.stdout)
    done = check(env, tmp_path)
    assert lines_of(done)["ssh"].startswith("ok   ssh"), done.stdout


class LoginPath:
    """The PATH of every login on a second loopback builder (sshd's `SetEnv PATH=`): one
    directory holding every program of /usr/bin and /usr/sbin except those a test hides, plus
    the ones it puts there."""

    def __init__(self, base: Path) -> None:
        self.bin = base / "bin"

    def set(
        self, hidden: FrozenSet[str] = frozenset(), added: Optional[Mapping[str, str]] = None
    ) -> None:
        staged = self.bin.with_name("bin.new")
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir(mode=0o755)
        for source in (Path("/usr/sbin"), Path("/usr/bin")):  # /usr/bin wins on a clash
            for program in source.iterdir():
                if program.name not in hidden:
                    target = staged / program.name
                    target.unlink(missing_ok=True)
                    target.symlink_to(program)
        for name, text in (added or {}).items():
            (staged / name).unlink(missing_ok=True)
            (staged / name).write_text(text)
            (staged / name).chmod(0o755)
        shutil.rmtree(self.bin, ignore_errors=True)
        staged.rename(self.bin)


@pytest.fixture(scope="module")
def narrowed_builder(incus_builder) -> Iterator[tuple[Dict[str, str], LoginPath]]:
    """The loopback builder user behind a second sshd whose logins get a PATH of the test's
    choosing: tools, python3 and bwrap can go missing for this builder alone."""
    base = Path(tempfile.mkdtemp(prefix="pikaci-login-path-", dir="/tmp"))
    base.chmod(0o755)
    login_path = LoginPath(base)
    login_path.set()
    try:
        with running_sshd(f"SetEnv PATH={login_path.bin}\n") as server:
            yield {**incus_builder, "PIKACI_BUILDER_SSH_CONFIG": str(server.ssh_config)}, login_path
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_missing_tools_python_and_bwrap_each_have_their_line(narrowed_builder, tmp_path) -> None:
    env, login_path = narrowed_builder
    login_path.set(hidden=frozenset({"flock", "realpath", "python3", "bwrap"}))
    done = check(env, tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = lines_of(done)
    assert lines["tools"].startswith("FAIL tools: missing: flock realpath (fix: install"), lines
    assert lines["python3"].startswith("FAIL python3: no python3 on PATH (fix: install Python")
    assert lines["bwrap"].startswith("FAIL bwrap: no bwrap on PATH (fix: apt-get install")
    for name in ("ssh", "work dir", "nix", "incus", "incus image"):
        assert lines[name].startswith("ok"), lines[name]
    login_path.set()
    assert check(env, tmp_path).returncode == 0  # the same builder with its programs back


def test_bwrap_without_user_namespaces(narrowed_builder, tmp_path) -> None:
    """The real bwrap, started where the kernel allows no further user namespace (the limit of
    the namespace it runs in is 0), as on a builder with unprivileged user namespaces off."""
    env, login_path = narrowed_builder
    no_userns = (
        "#!/bin/sh\n"
        "exec unshare --user --map-root-user sh -c "
        '\'echo 0 > /proc/sys/user/max_user_namespaces && exec /usr/bin/bwrap "$@"\' bwrap "$@"\n'
    )
    login_path.set(added={"bwrap": no_userns})
    try:
        done = check(env, tmp_path)
    finally:
        login_path.set()
    line = lines_of(done)["bwrap"]
    assert line.startswith("FAIL bwrap: bwrap: Creating new namespace failed"), line
    assert "user namespaces must be allowed" in line
    assert done.returncode == 1


def test_a_single_user_nix_refuses_the_builder_user(incus_builder, tmp_path: Path) -> None:
    """Debian's nix-bin without PIKACI_BUILDER_NIX_STORE: the store belongs to root and its
    daemon socket to nix-users, which the builder user is not in."""
    env = {k: v for k, v in incus_builder.items() if k != "PIKACI_BUILDER_NIX_STORE"}
    line = lines_of(check(env, tmp_path))["nix"]
    assert line.startswith("FAIL nix: ") and "Permission denied" in line, line
    assert "nix-users" in line and "PIKACI_BUILDER_NIX_STORE" in line


def test_a_refused_login_says_so_at_once(sshd: Sshd, incus_builder, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    config = tmp_path / "ssh_config"
    config.write_text(
        sshd.ssh_config.read_text().replace(str(sshd.client_key), str(stranger))
        + "  BatchMode yes\n"
    )
    done = check({**incus_builder, "PIKACI_BUILDER_SSH_CONFIG": str(config)}, tmp_path)
    assert done.returncode == 1
    line = lines_of(done)["ssh"]
    assert "Permission denied" in line and "key only, no password" in line, line
