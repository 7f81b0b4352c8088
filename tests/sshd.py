"""A real sshd on 127.0.0.1 for the transport and remote-layout tests.

The "remote" is this machine: a dedicated login user `pikaci-remote` with `/bin/sh` as its shell
(no heavy rc files, so a multiplexed command costs milliseconds), throwaway host and client keys,
and an ssh_config with the alias `pikaci-test-builder`. Everything the user must read lives in
world-traversable directories under /tmp: pytest's own tmp tree is mode 0700 and sshd reads
authorized_keys as the target user.

Import the fixture explicitly: `from tests.sshd import sshd  # noqa: F401`. Outside pytest
(the benchmarks), `with running_sshd() as server:` starts and stops the same server.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List

import pytest

from tests.conftest import require_component

SSHD = "/usr/sbin/sshd"  # sshd refuses to re-exec itself without an absolute path
USER = "pikaci-remote"
HOST_ALIAS = "pikaci-test-builder"
USER_HOME = Path("/var/tmp/pikaci-remote-home")
_USER_LOCK = Path("/tmp/pikaci-remote-user.lock")
START_TIMEOUT_SECS = 15.0


@dataclass
class Sshd:
    host: str
    ssh_config: Path
    port: int
    user: str
    uid: int
    log: Path
    pid: int
    client_key: Path
    _base: Path
    _control_dirs: List[Path] = field(default_factory=list)
    _work_dirs: List[Path] = field(default_factory=list)

    def control_dir(self) -> Path:
        """A short directory for ControlPath sockets (unix socket paths stop at ~108 bytes)."""
        path = Path(tempfile.mkdtemp(prefix="pikaci-cm-", dir="/tmp"))
        self._control_dirs.append(path)
        return path

    def work_dir(self) -> Path:
        """A fresh remote_work_dir owned by the login user."""
        path = Path(tempfile.mkdtemp(prefix="pikaci-remote-", dir="/tmp"))
        path.chmod(0o755)
        os.chown(path, self.uid, pwd.getpwnam(self.user).pw_gid)
        self._work_dirs.append(path)
        return path

    def ssh(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Plain, unmultiplexed ssh to the builder (for test set-up and checks)."""
        return subprocess.run(
            ["ssh", "-F", str(self.ssh_config), self.host, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def user_processes(self) -> List[str]:
        """`<pid> <cmdline>` of every live process of the login user (the "remote" side)."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if entry.stat().st_uid != self.uid:
                    continue
                raw = (entry / "cmdline").read_bytes()
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
            if state == "Z" or not raw:
                continue
            cmdline = raw.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry.name} {cmdline}")
        return found

    def close_masters(self) -> None:
        for directory in self._control_dirs:
            for sock in directory.iterdir() if directory.is_dir() else []:
                argv = ["ssh", "-F", str(self.ssh_config), "-o", f"ControlPath={sock}"]
                subprocess.run(
                    [*argv, "-O", "exit", self.host],
                    capture_output=True,
                    timeout=10,
                    check=False,
                )


def _ensure_user() -> int:
    # idempotent, and serialised: several pytest sessions may start at once
    with open(_USER_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            pwd.getpwnam(USER)
        except KeyError:
            home = ["--no-create-home", "--home-dir", str(USER_HOME)]
            subprocess.run(
                ["useradd", *home, "--shell", "/bin/sh", USER],
                check=True,
                capture_output=True,
            )
        # '*' instead of the locked '!': with UsePAM no, sshd refuses locked accounts
        subprocess.run(
            ["usermod", "-p", "*", "-s", "/bin/sh", "-d", str(USER_HOME), USER],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(USER)
        USER_HOME.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.chown(USER_HOME, entry.pw_uid, entry.pw_gid)
        return entry.pw_uid


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pikaci-test", "-f", str(path)],
        check=True,
        capture_output=True,
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _write_sshd_config(base: Path, port: int) -> Path:
    config = base / "sshd_config"
    config.write_text(
        f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {base / "host_key"}
PidFile {base / "sshd.pid"}
AuthorizedKeysFile {base / "authorized_keys"}
AllowUsers {USER}
PermitRootLogin no
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
# the transport opens many sessions over one multiplexed connection
MaxSessions 64
MaxStartups 64:30:128
LogLevel INFO
"""
    )
    return config


def _write_client_config(base: Path, port: int) -> Path:
    config = base / "ssh_config"
    config.write_text(
        f"""\
Host {HOST_ALIAS}
  HostName 127.0.0.1
  Port {port}
  User {USER}
  IdentityFile {base / "client_key"}
  IdentitiesOnly yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  LogLevel ERROR
  # the default post-quantum exchange costs ~70 ms per new connection
  KexAlgorithms curve25519-sha256
"""
    )
    return config


def _wait_ready(proc: subprocess.Popen[bytes], config: Path, log: Path) -> bool:
    """True once a real login works; False when sshd died (e.g. the port was taken)."""
    deadline = time.monotonic() + START_TIMEOUT_SECS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        probe = subprocess.run(
            ["ssh", "-F", str(config), "-o", "BatchMode=yes", HOST_ALIAS, "true"],
            capture_output=True,
            timeout=10,
            check=False,
        )
        if probe.returncode == 0:
            return True
        time.sleep(0.1)
    _stop(proc)
    raise RuntimeError(f"sshd did not accept logins within {START_TIMEOUT_SECS}s; see {log}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _start(base: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    log = base / "sshd.log"
    for _ in range(5):  # a free port can be taken between the probe and sshd's bind
        port = _free_port()
        config = _write_sshd_config(base, port)
        client = _write_client_config(base, port)
        subprocess.run([SSHD, "-t", "-f", str(config)], check=True, capture_output=True)
        proc = subprocess.Popen(
            [SSHD, "-D", "-f", str(config), "-E", str(log)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if _wait_ready(proc, client, log):
            return proc, port, client
    raise RuntimeError(f"sshd could not start; see {log}")


@contextlib.contextmanager
def running_sshd() -> Iterator[Sshd]:
    """The loopback sshd, for pytest and the benchmarks alike. On exit it closes the masters in
    the control dirs it handed out, stops sshd and removes its files and work dirs.

    Needs root (it creates the login user); RuntimeError when it cannot run here or start.
    """
    if os.geteuid() != 0:
        raise RuntimeError("the loopback sshd needs root (it creates a login user)")
    if not Path(SSHD).is_file() or shutil.which("ssh") is None:
        raise RuntimeError(
            "openssh-server/openssh-client are not installed "
            "(apt-get install openssh-server openssh-client)"
        )
    uid = _ensure_user()
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
    base = Path(tempfile.mkdtemp(prefix="pikaci-sshd-", dir="/tmp"))
    try:
        base.chmod(0o755)
        _keygen(base / "host_key")
        _keygen(base / "client_key")
        shutil.copyfile(base / "client_key.pub", base / "authorized_keys")
        (base / "authorized_keys").chmod(0o644)
        proc, port, client = _start(base)
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    server = Sshd(
        host=HOST_ALIAS,
        ssh_config=client,
        port=port,
        user=USER,
        uid=uid,
        log=base / "sshd.log",
        pid=proc.pid,
        client_key=base / "client_key",
        _base=base,
    )
    try:
        yield server
    finally:
        server.close_masters()
        _stop(proc)  # the listener only, by its own pid
        for path in [*server._control_dirs, *server._work_dirs, base]:
            with contextlib.suppress(OSError):
                shutil.rmtree(path)


@pytest.fixture(scope="session")
def sshd() -> Iterator[Sshd]:
    require_component(os.geteuid() == 0, "the sshd fixture needs root (it creates a login user)")
    require_component(
        Path(SSHD).is_file() and shutil.which("ssh") is not None,
        "openssh-server/openssh-client are not installed "
        "(apt-get install openssh-server openssh-client)",
    )
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(running_sshd())
        except RuntimeError as exc:
            pytest.fail(str(exc))
        yield server


def local_ssh_children(needle: str) -> List[int]:
    """Our own ssh client processes whose command line mentions `needle`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and cmdline.startswith(b"ssh\0") and needle.encode() in cmdline:
            found.append(int(entry.name))
    return found
