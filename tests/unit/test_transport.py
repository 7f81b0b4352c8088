"""`pikaci.builder.transport` against a real sshd on 127.0.0.1 (the "remote" is this machine)."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import List, Optional

import pytest

from pikaci.builder.held import held_command
from pikaci.builder.layout import RemoteError
from pikaci.builder.transport import (
    Builder,
    RemoteCommandError,
    StreamInterrupted,
    Transport,
    TransportError,
)
from tests.fixtures.builder import TransportLog
from tests.fixtures.sshd import Sshd, local_ssh_children
from tests.fixtures.support import PIKACI, in_thread, wait_for


@pytest.fixture
def work(remote_builder: Builder) -> Path:
    return Path(remote_builder.remote_work_dir)


def remote_processes(server: Sshd, *needles: str) -> List[str]:
    """The login user's live processes mentioning any needle (sshd's own are not ours)."""
    return [
        proc
        for proc in server.user_processes()
        if any(needle in proc for needle in needles) and " sshd:" not in proc
    ]


def running(server: Sshd, command: str) -> List[str]:
    """The login user's processes whose command line starts with `command`."""
    return [proc for proc in server.user_processes() if proc.split(" ", 1)[1].startswith(command)]


# -- commands, output, exit codes ------------------------------------------------------------


def test_lines_stream_in_order_as_they_are_produced(remote_transport: Transport) -> None:
    seen = TransportLog()
    started = time.monotonic()
    script = "for i in 1 2 3 4; do echo out$i; echo err$i >&2; sleep 0.3; done"
    result = remote_transport.run("stream", script, on_line=seen)
    finished = time.monotonic()

    assert seen.text == [f"{kind}{i}" for i in range(1, 5) for kind in ("out", "err")]
    assert result.stdout.decode().splitlines() == seen.text
    arrivals = [at - started for at, line in seen.lines if line.startswith("out")]
    # each line arrives as it is printed, ~0.3 s apart, not all at the end
    assert arrivals[0] < 0.5
    assert all(later - earlier > 0.15 for earlier, later in zip(arrivals, arrivals[1:]))
    assert finished - seen.lines[0][0] > 0.8


def test_awkward_scripts_are_quoted_intact(remote_transport: Transport) -> None:
    script = """printf '%s|' "it's" 'a "b"' '$HOME' "$(echo x)" ; echo"""
    assert remote_transport.run("quoting", script).text == """it's|a "b"|$HOME|x|\n"""


def test_exit_codes_propagate_without_retry(remote_transport: Transport) -> None:
    before = remote_transport.round_trips
    assert remote_transport.run("seven", "exit 7", check=False).exit_code == 7
    with pytest.raises(RemoteCommandError) as failed:
        remote_transport.run("failing step", "echo first; echo last words; exit 3")
    # 255 is what ssh itself returns on a connection failure: the marker tells them apart
    with pytest.raises(RemoteCommandError) as shadow:
        remote_transport.run("two-five-five", "exit 255")
    killed = remote_transport.run("killed", "kill -KILL $$", check=False)

    assert remote_transport.round_trips - before == 4
    error = failed.value
    assert (error.exit_code, error.label) == (3, "failing step")
    assert str(error) == "failing step: remote command failed (exit code 3): last words"
    assert "\n" not in str(error)
    assert error.output_tail == "first\nlast words\n"
    assert shadow.value.exit_code == 255
    assert killed.exit_code == 128 + signal.SIGKILL


def test_the_remote_command_is_logged_before_it_runs(
    remote_transport: Transport, transport_log: TransportLog, work: Path
) -> None:
    flag = work / "ran"
    script = f"touch {flag}"
    existed_at_log_time: List[bool] = []

    def spy(line: str) -> None:
        existed_at_log_time.append(flag.exists())
        transport_log(line)

    remote_transport.log = spy

    remote_transport.run("make flag", script)

    assert f"make flag: [{remote_transport.builder.host}] {script}" in transport_log.text
    assert existed_at_log_time == [False]
    assert flag.exists()


def test_stdin_bytes_arrive_intact(remote_transport: Transport) -> None:
    data = os.urandom(1 << 20)
    digest = hashlib.sha256(data).hexdigest()

    from_bytes = remote_transport.run("hash bytes", "sha256sum", stdin=data)
    from_stream = remote_transport.run("count stream", "wc -c", stdin=io.BytesIO(data))
    ignored = remote_transport.run("ignore stdin", "echo not reading", stdin=data * 8)

    assert from_bytes.text.split() == [digest, "-"]
    assert from_bytes.stdin_bytes == len(data)
    assert from_stream.text.strip() == str(len(data))
    assert ignored.text == "not reading\n"  # returns although the payload was never read
    assert remote_transport.run("no stdin", "wc -c").text.strip() == "0"


def test_a_failing_stdin_source_aborts_the_remote_command(
    sshd: Sshd, remote_transport: Transport, work: Path
) -> None:
    class Broken:
        def __init__(self) -> None:
            self.calls = 0

        def read(self, size: int = -1, /) -> bytes:
            self.calls += 1
            if self.calls > 3:
                raise OSError("disk went away")
            return b"x" * 65536

    out, done = work / "out", work / "complete"
    script = f"cat > {out}; touch {done}; sleep 60.0101"
    with pytest.raises(OSError, match="disk went away"):
        remote_transport.run("partial upload", script, stdin=Broken())

    # the cut-short payload never looked complete to the command: it was killed instead
    assert not done.exists()
    assert not running(sshd, "sleep 60.0101")
    assert wait_for(lambda: not remote_processes(sshd, "60.0101"), 5)


# -- remote bounds ---------------------------------------------------------------------------


def test_the_builder_enforces_the_timeout(sshd: Sshd, remote_transport: Transport) -> None:
    started = time.monotonic()
    with pytest.raises(RemoteCommandError) as timed_out:
        remote_transport.run("slow", "sleep 30.2468 & sleep 30.1357; echo never", timeout_secs=1)

    assert time.monotonic() - started < 5
    assert timed_out.value.exit_code == 124
    assert timed_out.value.timed_out
    assert str(timed_out.value) == "slow: timed out on the builder (exit code 124)"
    assert not running(sshd, "sleep 30.")
    assert wait_for(lambda: not remote_processes(sshd, "30.1357"), 5)


def test_killing_the_local_ssh_leaves_nothing_on_the_builder(
    sshd: Sshd, remote_builder: Builder, transport_log: TransportLog
) -> None:
    token = "31.4159"
    with Transport(remote_builder, sshd.control_dir(), transport_log, retries=0) as transport:
        script = f"sleep {token}7 & sleep {token}; echo done"
        thread, outcome = in_thread(lambda: transport.run("victim", script))
        assert wait_for(lambda: len(running(sshd, "sleep 31.")) >= 2, 10), "never started"
        assert wait_for(lambda: bool(local_ssh_children(token)), 5)
        ssh_pids = local_ssh_children(token)
        assert len(ssh_pids) == 1
        os.kill(ssh_pids[0], signal.SIGKILL)
        thread.join(15)

        assert isinstance(outcome.get("error"), TransportError), outcome
        assert "killed by SIGKILL" in str(outcome["error"])
        # the command and its background child die at once; the wrapper right after them
        assert wait_for(lambda: not running(sshd, "sleep 31."), 3), sshd.user_processes()
        assert wait_for(lambda: not remote_processes(sshd, token), 10), sshd.user_processes()
        assert transport.run("still usable", "echo ok").text == "ok\n"


# -- connections -----------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_connection_failures_are_retried_with_backoff_then_raised(
    sshd: Sshd, tmp_path: Path, transport_log: TransportLog
) -> None:
    config = tmp_path / "ssh_config"
    text = sshd.ssh_config.read_text().replace(f"Port {sshd.port}", f"Port {closed_port()}")
    config.write_text(text)
    unreachable = Builder(host=sshd.host, ssh_config=config, connect_timeout_secs=2)
    transport = Transport(
        unreachable, sshd.control_dir(), transport_log, retries=2, backoff_secs=0.1
    )

    started = time.monotonic()
    with pytest.raises(TransportError) as failed:
        transport.run("probe", "true")
    elapsed = time.monotonic() - started

    message = str(failed.value)
    assert "\n" not in message
    assert message.startswith(f"probe: connection to {sshd.host} failed after 3 attempt(s): ")
    assert "Connection refused" in message
    assert transport.round_trips == 3
    assert elapsed >= 0.1 + 0.2  # exponential backoff between the attempts
    retries = [line for line in transport_log.text if "retry" in line]
    assert [line.split("retry ")[1] for line in retries] == ["1/2 in 0.1s", "2/2 in 0.2s"]


def test_a_stopped_master_is_replaced(
    sshd: Sshd, remote_transport: Transport, transport_log: TransportLog
) -> None:
    remote_transport.close()
    assert not remote_transport.check_master()
    assert remote_transport.run("after stop", "echo back").text == "back\n"
    assert remote_transport.check_master()


def test_a_connection_lost_mid_command_is_retried(
    sshd: Sshd, remote_transport: Transport, transport_log: TransportLog, work: Path
) -> None:
    attempts = work / "attempts"
    script = f"echo x >> {attempts}; sleep 1.0202; echo finished"
    before = remote_transport.round_trips
    thread, outcome = in_thread(lambda: remote_transport.run("flaky", script))
    assert wait_for(lambda: bool(remote_processes(sshd, "1.0202")), 10)
    # an outside `-O exit` drops the shared connection under the running command
    ssh = ["ssh", "-F", str(sshd.ssh_config), "-o", f"ControlPath={remote_transport.control_path}"]
    subprocess.run([*ssh, "-O", "exit", sshd.host], check=True, capture_output=True)
    thread.join(20)

    assert outcome["result"].text == "finished\n"
    assert attempts.read_text() == "x\nx\n"
    assert remote_transport.round_trips - before >= 2
    assert any(
        "flaky: connection to" in line and "retry 1/3" in line for line in transport_log.text
    )


def test_a_stream_cut_by_a_lost_connection_is_not_replayed(
    sshd: Sshd, remote_transport: Transport
) -> None:
    class Slow:
        def read(self, size: int = -1, /) -> bytes:
            time.sleep(0.05)
            return b"y" * 4096

    thread, outcome = in_thread(
        lambda: remote_transport.run("stream", "cat >/dev/null", stdin=Slow())
    )
    assert wait_for(lambda: bool(local_ssh_children("cat >/dev/null")), 5)
    time.sleep(0.3)
    ssh = ["ssh", "-F", str(sshd.ssh_config), "-o", f"ControlPath={remote_transport.control_path}"]
    subprocess.run([*ssh, "-O", "exit", sshd.host], check=True, capture_output=True)
    thread.join(20)

    assert isinstance(outcome.get("error"), StreamInterrupted), outcome
    assert "lost mid-stream" in str(outcome["error"])


def test_one_multiplexed_connection_serves_many_commands(
    sshd: Sshd, remote_transport: Transport
) -> None:
    logins_before = sshd.log.read_text().count("Accepted publickey")
    before = remote_transport.round_trips
    started = time.monotonic()
    outputs = [remote_transport.run(f"cmd {i}", f"echo {i}").text for i in range(20)]
    elapsed = time.monotonic() - started

    assert outputs == [f"{i}\n" for i in range(20)]
    assert remote_transport.round_trips - before == 20
    assert sshd.log.read_text().count("Accepted publickey") == logins_before  # no new login
    assert remote_transport.check_master()
    assert elapsed < 3.0, f"20 multiplexed commands took {elapsed:.2f}s"


def test_threads_share_one_transport(remote_transport: Transport) -> None:
    results: List[Optional[str]] = [None] * 8

    def work(i: int) -> None:
        results[i] = remote_transport.run(f"thread {i}", f"sleep 0.2; echo {i}").text

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert results == [f"{i}\n" for i in range(8)]
    assert time.monotonic() - started < 1.6  # concurrent sessions, not one after another


def test_control_dir_must_fit_a_unix_socket_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="too long for a unix socket"):
        Transport(Builder(host="h"), tmp_path / ("x" * 80), lambda line: None)


def test_transports_starting_at_once_share_one_master(
    sshd: Sshd, remote_builder: Builder, transport_log: TransportLog
) -> None:
    """Separate transports (as in separate processes) racing to connect start one login."""
    control = sshd.control_dir()
    logins_before = sshd.log.read_text().count("Accepted publickey")
    transports = [Transport(remote_builder, control, transport_log) for _ in range(6)]
    barrier = threading.Barrier(len(transports))

    def connect(t: Transport) -> str:
        barrier.wait()
        return t.run("race", "echo up").text

    threads = [in_thread(lambda t=t: connect(t)) for t in transports]  # type: ignore[misc]
    for thread, _ in threads:
        thread.join(30)
    assert [outcome.get("result") for _, outcome in threads] == ["up\n"] * len(transports)
    assert sshd.log.read_text().count("Accepted publickey") - logins_before == 1
    transports[0].close()


@pytest.mark.parametrize(
    ("config_change", "said", "hint"),
    [
        (
            # the builder's key is not the one known: what a new or rebuilt builder gives
            ("StrictHostKeyChecking no", "StrictHostKeyChecking yes"),
            "Host key verification failed",
            "ssh-keyscan",
        ),
        (
            ("User pikaci-remote", "User nobody-here"),
            "Permission denied",
            "key only",
        ),
        (
            ("HostName 127.0.0.1", "HostName no-such-builder.invalid"),
            "Could not resolve hostname",
            "PIKACI_BUILDER",
        ),
    ],
)
def test_failures_that_waiting_does_not_cure_fail_at_once(
    sshd: Sshd, tmp_path: Path, transport_log: TransportLog, config_change, said: str, hint: str
) -> None:
    config = tmp_path / "ssh_config"
    old, new = config_change
    text = sshd.ssh_config.read_text()
    assert old in text
    config.write_text(text.replace(old, new, 1))
    builder = Builder(host=sshd.host, ssh_config=config, connect_timeout_secs=2)
    transport = Transport(builder, sshd.control_dir(), transport_log, retries=3, backoff_secs=1.0)
    started = time.monotonic()
    with pytest.raises(TransportError) as failed:
        transport.run("probe", "true")
    assert time.monotonic() - started < 1.0  # no back-off: one attempt
    message = str(failed.value)
    assert (
        message.startswith(f"probe: cannot connect to {sshd.host}: ")
        and message.count("probe:") == 1
    )
    assert said in message and hint in message
    assert not [line for line in transport_log.text if "retry" in line]


def test_a_held_command_names_its_step_once(
    sshd: Sshd, tmp_path: Path, transport_log: TransportLog
) -> None:
    config = tmp_path / "ssh_config"
    config.write_text(
        sshd.ssh_config.read_text().replace("StrictHostKeyChecking no", "StrictHostKeyChecking yes")
    )
    builder = Builder(host=sshd.host, ssh_config=config, connect_timeout_secs=2)
    transport = Transport(builder, sshd.control_dir(), transport_log, retries=3)
    label = "lease 0123456789ab for run-1"
    held = held_command(transport, label, "echo ready; cat >/dev/null", "ready")
    with pytest.raises(RemoteError) as failed, held:
        pass
    message = str(failed.value)
    assert message.startswith(f"{label}: cannot connect") and message.count(label) == 1


def test_a_changed_ssh_config_never_rides_an_old_master(
    sshd: Sshd, tmp_path: Path, transport_log: TransportLog
) -> None:
    control = sshd.control_dir()
    first = Transport(Builder(host=sshd.host, ssh_config=sshd.ssh_config), control, transport_log)
    assert first.run("first", "echo one").text == "one\n"
    logins = sshd.log.read_text().count("Accepted publickey")
    edited = tmp_path / "ssh_config"
    edited.write_text(sshd.ssh_config.read_text() + "  # edited by the operator\n")
    second = Transport(Builder(host=sshd.host, ssh_config=edited), control, transport_log)
    assert second.control_path != first.control_path
    assert second.run("second", "echo two").text == "two\n"
    assert sshd.log.read_text().count("Accepted publickey") == logins + 1  # a login of its own
    broken = tmp_path / "broken_config"
    broken.write_text(sshd.ssh_config.read_text() + "  NoSuchOption yes\n")
    third = Transport(Builder(host=sshd.host, ssh_config=broken), control, transport_log)
    with pytest.raises(TransportError, match="fix PIKACI_BUILDER_SSH_CONFIG"):
        third.run("third", "true")
    first.close()
    second.close()


def test_builder_reset_ends_this_users_shared_connections(
    sshd: Sshd, transport_log: TransportLog
) -> None:
    tmpdir = Path(tempfile.mkdtemp(prefix="pci-", dir="/tmp"))  # the CLI's $TMPDIR
    control = tmpdir / f"pikaci-ssh-{os.getuid()}"
    control.mkdir(mode=0o700)
    transport = Transport(
        Builder(host=sshd.host, ssh_config=sshd.ssh_config), control, transport_log
    )
    transport.run("up", "true")
    assert transport.check_master()
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    done = subprocess.run([*PIKACI, "builder", "reset"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"closed 1 shared connection(s) in {control}\n"
    assert not transport.check_master()
    again = subprocess.run([*PIKACI, "builder", "reset"], env=env, capture_output=True, text=True)
    assert again.stdout == f"no shared connection was open in {control}\n"
