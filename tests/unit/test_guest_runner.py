"""The guest runner (`pikaci-incus-run`) as real processes: lifecycle files, exit codes, output.

The runner runs as a subprocess with `PIKACI_GUEST_RUN_DIR` and the request's directories inside
a temporary directory. Direct runs use `run_as_root: true` when the tests run as root, so no
`pikaci` user is needed; the unprivileged path runs the runner under `setpriv` as uid 1000.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, Iterator, List, Sequence, Union

import pytest

from pikaci.guest import runner as guest
from tests.fixtures.support import REPO_ROOT, require_component

RUNNER = REPO_ROOT / "pikaci" / "guest" / "runner.py"
IS_ROOT = os.geteuid() == 0
SETPRIV = shutil.which("setpriv")
PY39 = Path("/root/.pyenv/versions/3.9.18/bin/python")
DEBIAN_PYTHON = "/usr/bin/python3"
INTERPRETERS = [sys.executable, DEBIAN_PYTHON] + ([str(PY39)] if PY39.exists() else [])


_require = require_component


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"  # a zombie nobody reaps is dead too


class Guest:
    """A throwaway guest layout: run dir, workspace and the writable directories."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.run_dir = root / "run"
        self.workspace = root / "workspace"
        self.workspace.mkdir(parents=True, exist_ok=True)
        self.dirs = {
            "workspace_dir": str(self.workspace),
            "cargo_home_dir": str(root / "cargo-home"),
            "cargo_target_dir": str(root / "cargo-target"),
            "xdg_state_home_dir": str(root / "xdg-state"),
            "home_dir": str(root / "home"),
        }

    def request(self, command: str, **fields: Any) -> Dict[str, Any]:
        data: Dict[str, Any] = {
            "schema_version": 2,
            "command": command,
            "timeout_secs": 20,
            "run_as_root": IS_ROOT,
            **self.dirs,
        }
        data.update(fields)
        return data

    def write_request(self, request: Union[Dict[str, Any], str]) -> Path:
        path = self.root / "guest-request.json"
        path.write_text(request if isinstance(request, str) else json.dumps(request, indent=2))
        path.chmod(0o644)
        return path

    def env(self) -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIKACI_")}
        env[guest.RUN_DIR_ENV] = str(self.run_dir)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        return env

    def argv(
        self,
        request: Union[Dict[str, Any], str],
        python: str = sys.executable,
        script: Path = RUNNER,
        prefix: Sequence[str] = (),
        isolated: bool = False,
    ) -> List[str]:
        path = self.write_request(request)
        return [*prefix, python, *(["-I"] if isolated else []), str(script), str(path)]

    def run(
        self, request: Union[Dict[str, Any], str], **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(request, **kwargs),
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def json(self, name: str) -> Dict[str, Any]:
        data = json.loads((self.run_dir / name).read_text())
        assert isinstance(data, dict)
        return data

    def result(self) -> Dict[str, Any]:
        return self.json(guest.RESULT_FILE)

    def status(self) -> Dict[str, Any]:
        return self.json(guest.STATUS_FILE)

    def events(self) -> List[Dict[str, Any]]:
        lines = (self.run_dir / guest.EVENTS_FILE).read_text().splitlines()
        return [json.loads(line) for line in lines]

    def guest_log(self) -> str:
        return (self.run_dir / "logs" / "guest.log").read_text()


@pytest.fixture
def g(tmp_path: Path) -> Guest:
    return Guest(tmp_path)


@pytest.fixture
def unprivileged() -> Iterator[Guest]:
    """A guest tree owned by 1000:100 outside pytest's 0700 tmp dir, with its own runner copy."""
    _require(IS_ROOT and SETPRIV is not None, "needs root and setpriv to run as uid 1000")
    root = Path(tempfile.mkdtemp(prefix="pikaci-guest-"))
    try:
        shutil.copy(RUNNER, root / "runner.py")
        unprivileged_guest = Guest(root)
        os.chown(root, guest.GUEST_UID, guest.GUEST_GID)
        os.chown(unprivileged_guest.workspace, guest.GUEST_UID, guest.GUEST_GID)
        yield unprivileged_guest
    finally:
        shutil.rmtree(root, ignore_errors=True)


AS_UID_1000 = [
    str(SETPRIV),
    "--reuid",
    str(guest.GUEST_UID),
    "--regid",
    str(guest.GUEST_GID),
    "--clear-groups",
]


def _assert_timestamp(value: str) -> None:
    moment = datetime.fromisoformat(value)
    assert moment.tzinfo is not None
    assert moment.microsecond == 0


def _assert_bootstrap_failure(g: Guest, proc: subprocess.CompletedProcess[str], fragment: str):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "[pikaci] Incus guest bootstrap failed: " in proc.stderr
    assert fragment in proc.stderr
    log = g.guest_log()
    assert "bootstrap failed" in log
    assert fragment in log
    result = g.result()
    assert result["status"] == "failed"
    assert result["exit_code"] == 2
    assert result["message"].startswith("Incus guest bootstrap failed: ")
    assert g.status()["state"] == "failed"
    assert [e["kind"] for e in g.events()] == ["booted", "failed"]


# -- whole runs --------------------------------------------------------------------------------


def test_pass_records_lifecycle_and_streams_output(g: Guest):
    command = "echo one; echo two; echo three"
    proc = g.run(g.request(command), isolated=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == ""

    lines = proc.stdout.splitlines()
    assert lines[0].startswith("[pikaci] incus guest booted at ")  # upstream's wording
    _assert_timestamp(lines[0].rsplit(" ", 1)[1])
    assert lines[-4:] == ["one", "two", "three", "[pikaci] test passed"]
    assert g.guest_log() == proc.stdout

    result = g.result()
    assert list(result) == ["schema_version", "status", "exit_code", "finished_at", "message"]
    assert result["schema_version"] == guest.LIFECYCLE_SCHEMA_VERSION == 1
    assert (result["status"], result["exit_code"], result["message"]) == (
        "completed",
        0,
        "test passed",
    )
    _assert_timestamp(result["finished_at"])

    status = g.status()
    assert status["state"] == "completed"
    assert status["message"] == "test passed"
    assert status["details"] == {"exit_code": 0}
    _assert_timestamp(status["updated_at"])

    events = g.events()
    assert [e["kind"] for e in events] == ["booted", "starting", "completed"]
    assert [e["seq"] for e in events] == [1, 2, 3]
    assert (g.run_dir / guest.EVENTS_SEQ_FILE).read_text().strip() == "3"
    assert events[1]["details"] == {"command": command, "run_as_root": IS_ROOT}
    assert events[2]["details"] == {"exit_code": 0}
    for event in events:
        assert list(event)[:4] == ["schema_version", "kind", "timestamp", "message"]
        assert list(event)[-1] == "seq"
        _assert_timestamp(event["timestamp"])
    boot_id = guest.read_boot_id()
    if boot_id is not None:
        assert status["boot_id"] == boot_id
        assert {e["boot_id"] for e in events} == {boot_id}
    assert (g.run_dir / "artifacts").is_dir()
    for name in ("cargo_home_dir", "cargo_target_dir", "xdg_state_home_dir", "home_dir"):
        assert Path(g.dirs[name]).is_dir()


def test_nonzero_exit_is_propagated(g: Guest):
    proc = g.run(g.request("echo failing; exit 3"))
    assert proc.returncode == 3
    assert "[pikaci] test command exited with 3" in proc.stdout
    result = g.result()
    assert (result["status"], result["exit_code"], result["message"]) == (
        "failed",
        3,
        "test command exited with 3",
    )
    assert g.status()["state"] == "failed"
    assert g.status()["details"] == {"exit_code": 3}
    assert [e["kind"] for e in g.events()] == ["booted", "starting", "failed"]


def test_guest_timeout_exits_124(g: Guest):
    started = time.monotonic()
    proc = g.run(g.request("echo before; sleep 30", timeout_secs=1))
    assert time.monotonic() - started < 10
    assert proc.returncode == 124, proc.stdout + proc.stderr
    assert "before" in proc.stdout.splitlines()
    result = g.result()
    assert (result["status"], result["exit_code"], result["message"]) == (
        "failed",
        124,
        "timed out after 1s",
    )
    assert g.status()["message"] == "timed out after 1s"
    assert "[pikaci] timed out after 1s" in g.guest_log()


def test_command_exiting_124_by_itself_is_not_called_a_timeout(g: Guest):
    proc = g.run(g.request("exit 124", timeout_secs=30))
    assert proc.returncode == 124
    assert g.result()["message"] == "test command exited with 124"


def test_stderr_is_merged_and_a_partial_last_line_kept(g: Guest):
    proc = g.run(g.request("echo out; echo err >&2; echo out2; printf tail"))
    assert proc.returncode == 0
    expected = "out\nerr\nout2\ntail\n[pikaci] test passed\n"
    assert proc.stdout.endswith(expected)
    assert g.guest_log().endswith(expected)
    assert proc.stderr == ""


def test_environment_of_the_command(g: Guest):
    env_file = g.root / "env.bin"
    proc = g.run(g.request(f"pwd > $ARTIFACTS/pwd; env -0 > {env_file}"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    entries = env_file.read_bytes().decode().split("\0")
    env = dict(entry.split("=", 1) for entry in entries if entry)
    artifacts = g.run_dir / "artifacts"
    assert env["ARTIFACTS"] == str(artifacts)
    assert (artifacts / "pwd").read_text().strip() == str(g.workspace)
    assert env["HOME"] == ("/root" if IS_ROOT else g.dirs["home_dir"])
    assert env["PATH"].startswith("/run/current-system/sw/bin:")
    assert env["PATH"].endswith(os.environ["PATH"])
    assert env["CARGO_HOME"] == g.dirs["cargo_home_dir"]
    assert env["CARGO_TARGET_DIR"] == g.dirs["cargo_target_dir"]
    assert env["XDG_CACHE_HOME"] == g.dirs["cargo_home_dir"] + "/xdg-cache"
    assert env["XDG_STATE_HOME"] == g.dirs["xdg_state_home_dir"]
    assert env["CARGO_TERM_COLOR"] == "never"
    assert env["CARGO_INCREMENTAL"] == "0"
    assert env["PGSYSCONFDIR"] == "/run/current-system/sw"
    assert env["PGSHAREDIR"] == "/run/current-system/sw/share/postgresql"
    assert env["SSL_CERT_FILE"] == env["NIX_SSL_CERT_FILE"]
    expected_certs = (
        "/etc/ssl/certs/ca-certificates.crt"
        if not Path("/etc/ssl/certs/ca-bundle.crt").exists()
        and Path("/etc/ssl/certs/ca-certificates.crt").exists()
        else "/etc/ssl/certs/ca-bundle.crt"
    )
    assert env["SSL_CERT_FILE"] == expected_certs
    assert env["PIKACI_GUEST"] == "1"
    assert env[guest.RUN_DIR_ENV] == str(g.run_dir)  # the rest is inherited


def test_default_xdg_state_lives_in_the_run_dir(g: Guest):
    request = g.request("echo $XDG_STATE_HOME")
    del request["xdg_state_home_dir"]
    proc = g.run(request)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert str(g.run_dir / "xdg-state") in proc.stdout.splitlines()
    assert (g.run_dir / "xdg-state").is_dir()


@pytest.mark.parametrize(
    ("request_text", "fragment"),
    [
        pytest.param('{"schema_version": 2, "command": "tr', "not valid JSON", id="truncated"),
        pytest.param("[]", "must be a JSON object", id="not-an-object"),
        pytest.param({"schema_version": 1}, "unsupported schema_version 1", id="schema-1"),
        pytest.param({"schema_version": True}, "schema_version", id="schema-bool"),
        pytest.param({"surprise": 1}, "unknown field 'surprise'", id="unknown-field"),
        pytest.param({"target_dir": "/t"}, "unknown field 'target_dir'", id="v1-field"),
        pytest.param({"timeout_secs": 0}, "timeout_secs", id="timeout-0"),
        pytest.param({"timeout_secs": True}, "timeout_secs", id="timeout-true"),
        pytest.param({"timeout_secs": "5"}, "timeout_secs", id="timeout-string"),
        pytest.param({"command": ""}, "command", id="empty-command"),
        pytest.param({"command": None}, "command", id="null-command"),
        pytest.param({"run_as_root": "yes"}, "run_as_root", id="run-as-root-string"),
        pytest.param({"cargo_home_dir": "cargo"}, "cargo_home_dir", id="relative-dir"),
        pytest.param({"home_dir": "/home/../etc"}, "home_dir", id="unnormalised-dir"),
        pytest.param(
            '{"schema_version": 2, "schema_version": 2, "command": "true", '
            '"timeout_secs": 5, "run_as_root": true}',
            "duplicate field 'schema_version'",
            id="duplicate-field",
        ),
    ],
)
def test_malformed_request_is_a_bootstrap_failure(
    g: Guest, request_text: Union[str, Dict[str, Any]], fragment: str
):
    if isinstance(request_text, str):
        request: Union[str, Dict[str, Any]] = request_text
    else:
        request = {**g.request("true"), **request_text}
    _assert_bootstrap_failure(g, g.run(request), fragment)


def test_missing_field_is_a_bootstrap_failure(g: Guest):
    request = g.request("true")
    del request["timeout_secs"]
    _assert_bootstrap_failure(g, g.run(request), "missing field 'timeout_secs'")


def test_missing_workspace_is_a_bootstrap_failure(g: Guest):
    missing = str(g.root / "no-such-workspace")
    _assert_bootstrap_failure(g, g.run(g.request("true", workspace_dir=missing)), missing)


def test_missing_request_file_is_a_bootstrap_failure(g: Guest):
    proc = subprocess.run(
        [sys.executable, str(RUNNER), str(g.root / "absent.json")],
        env=g.env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    _assert_bootstrap_failure(g, proc, "absent.json")


@pytest.mark.parametrize("args", [[], ["a.json", "b.json"]], ids=["none", "two"])
def test_wrong_arguments_print_usage(g: Guest, args: List[str]):
    proc = subprocess.run(
        [sys.executable, str(RUNNER), *args],
        env=g.env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("usage: pikaci-incus-run <request-path>")
    assert not g.run_dir.exists()


def test_reruns_continue_the_event_sequence_and_drop_a_stale_result(g: Guest):
    assert g.run(g.request("true")).returncode == 0
    assert g.result()["status"] == "completed"
    proc = g.run(g.request("true", timeout_secs=0))
    assert proc.returncode == 2
    assert g.result()["status"] == "failed"
    assert [e["seq"] for e in g.events()] == [1, 2, 3, 4, 5]
    assert [e["kind"] for e in g.events()][3:] == ["booted", "failed"]


def test_sigterm_kills_the_command_and_records_a_failure(g: Guest):
    artifacts = g.run_dir / "artifacts"
    command = (
        "echo $$ > $ARTIFACTS/shell.pid; sleep 60 & echo $! > $ARTIFACTS/bg.pid; echo ready; wait"
    )
    proc = subprocess.Popen(
        g.argv(g.request(command, timeout_secs=120)),
        env=g.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 10
        log = g.run_dir / "logs" / "guest.log"
        # the line itself, not the logged command that contains the word
        while "ready" not in (log.read_text().splitlines() if log.exists() else []):
            assert time.monotonic() < deadline, "the command never started"
            time.sleep(0.02)
        pids = [int((artifacts / name).read_text()) for name in ("shell.pid", "bg.pid")]
        assert all(_alive(pid) for pid in pids)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert time.monotonic() - started < 5
    assert proc.returncode == 128 + signal.SIGTERM, out + err
    assert "runner terminated by SIGTERM" in err
    assert not any(_alive(pid) for pid in pids)
    result = g.result()
    assert (result["status"], result["exit_code"]) == ("failed", 143)
    assert result["message"] == "runner terminated by SIGTERM"
    assert g.status()["state"] == "failed"
    assert [e["kind"] for e in g.events()] == ["booted", "starting", "failed"]


def test_processes_left_holding_the_output_are_stopped(g: Guest):
    pidfile = g.root / "bg.pid"
    started = time.monotonic()
    proc = g.run(g.request(f"sleep 60 & echo $! > {pidfile}; echo done"))
    assert time.monotonic() - started < 8
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "still hold its output" in proc.stdout
    assert not _alive(int(pidfile.read_text()))
    assert g.result()["status"] == "completed"


def test_dropping_to_a_missing_guest_user_is_a_bootstrap_failure(g: Guest):
    _require(IS_ROOT, "needs root: only root drops to the pikaci user")
    try:
        pwd.getpwnam("pikaci")
    except KeyError:
        pass
    else:
        pytest.skip("this machine has a pikaci user")
    proc = g.run(g.request("true", run_as_root=False))
    _assert_bootstrap_failure(g, proc, "no 'pikaci' user")


# -- the unprivileged path (a sandbox that already runs the runner as uid 1000) ---------------


def test_unprivileged_runner_runs_the_command_directly(unprivileged: Guest):
    u = unprivileged
    request = u.request("id -u; id -g; echo HOME=$HOME", run_as_root=False)
    proc = u.run(request, python=DEBIAN_PYTHON, script=u.root / "runner.py", prefix=AS_UID_1000)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[pikaci] the runner already runs unprivileged as uid 1000" in proc.stdout
    lines = proc.stdout.splitlines()
    assert ["1000", "100", f"HOME={u.dirs['home_dir']}"] == lines[-4:-1]
    assert u.result()["status"] == "completed"
    for path in (u.run_dir / guest.RESULT_FILE, Path(u.dirs["cargo_home_dir"])):
        assert path.stat().st_uid == guest.GUEST_UID


def test_unprivileged_runner_refuses_run_as_root(unprivileged: Guest):
    u = unprivileged
    request = u.request("true", run_as_root=True)
    proc = u.run(request, python=DEBIAN_PYTHON, script=u.root / "runner.py", prefix=AS_UID_1000)
    _assert_bootstrap_failure(u, proc, "run_as_root")
    assert "uid 1000" in proc.stderr


def test_root_hands_the_writable_dirs_to_the_guest_user(tmp_path: Path):
    _require(IS_ROOT, "needs root to chown")
    run_dir = tmp_path / "run"
    dirs = {name: str(tmp_path / name) for name in guest.DIR_FIELDS}
    with guest.GuestLog(tmp_path / "guest.log") as log:
        guest.prepare_dirs(dirs, str(run_dir), True, log)
    owned = [dirs[name] for name in guest.DIR_FIELDS if name != "workspace_dir"]
    for path in [*owned, str(run_dir / "artifacts")]:
        info = Path(path).stat()
        assert (info.st_uid, info.st_gid) == (guest.GUEST_UID, guest.GUEST_GID), path
    assert not Path(dirs["workspace_dir"]).exists()  # read-only snapshot: never created


def test_unwritable_ownership_is_left_alone_with_a_note(unprivileged: Guest):
    """chown failing (read-only or virtiofs mounts) is logged, not fatal."""
    u = unprivileged
    shared = u.root / "shared-cache"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)  # owned by root, writable by anyone: chown as uid 1000 fails
    script = (
        "import sys, pathlib; sys.path.insert(0, sys.argv[1]); import runner; "
        "log = runner.GuestLog(pathlib.Path(sys.argv[1]) / 'ownership.log'); "
        "dirs = dict(runner.default_dirs(sys.argv[1])); dirs.update(cargo_home_dir=sys.argv[2], "
        "home_dir=sys.argv[3], cargo_target_dir=sys.argv[3], xdg_state_home_dir=sys.argv[3]); "
        "runner.prepare_dirs(dirs, sys.argv[1], True, log)"
    )
    home = u.root / "home"
    proc = subprocess.run(
        [*AS_UID_1000, DEBIAN_PYTHON, "-I", "-c", script, str(u.root), str(shared), str(home)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"[pikaci] leaving {shared} owned by 0:0" in proc.stdout
    assert home.stat().st_uid == guest.GUEST_UID  # created by the runner: nothing to change
    assert f"leaving {home}" not in proc.stdout


# -- interpreters --------------------------------------------------------------------------------


@pytest.mark.parametrize("python", INTERPRETERS)
def test_runner_is_self_contained_on_every_interpreter(g: Guest, python: str):
    """A lone copy of the file under `-I` (no package, no site paths) on 3.9 up."""
    _require(Path(python).exists(), f"{python} is not installed")
    copy = g.root / "pikaci-incus-run"
    shutil.copy(RUNNER, copy)
    proc = g.run(g.request("echo from-$PIKACI_GUEST"), python=python, script=copy, isolated=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "from-1" in proc.stdout.splitlines()
    assert g.result()["status"] == "completed"


def test_shebang_and_entry_point():
    first = RUNNER.read_text().splitlines()[0]
    assert first == "#!/run/current-system/sw/bin/python3"
    assert 'if __name__ == "__main__":\n    sys.exit(main())' in RUNNER.read_text()


# -- the request in-process ----------------------------------------------------------------------


def test_request_round_trip():
    minimal = {
        "schema_version": 2,
        "command": "just test",
        "timeout_secs": 60,
        "run_as_root": False,
    }
    request = guest.parse_request(minimal)
    assert request.workspace_dir is None
    assert guest.request_to_dict(request) == minimal
    assert list(guest.request_to_dict(request)) == list(minimal)

    full = {**minimal, "workspace_dir": "/w", "cargo_home_dir": "/c", "home_dir": "/h"}
    request = guest.parse_request(full)
    assert guest.request_to_dict(request) == full
    assert guest.parse_request(json.loads(json.dumps(guest.request_to_dict(request)))) == request


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"schema_version": 3}, "schema_version"),
        ({"schema_version": 2.0}, "schema_version"),
        ({"command": "   "}, "command"),
        ({"command": 5}, "command"),
        ({"timeout_secs": -1}, "timeout_secs"),
        ({"timeout_secs": 1.5}, "timeout_secs"),
        ({"timeout_secs": False}, "timeout_secs"),
        ({"run_as_root": 1}, "run_as_root"),
        ({"workspace_dir": ""}, "workspace_dir"),
        ({"cargo_target_dir": "/a/./b"}, "cargo_target_dir"),
        ({"xdg_state_home_dir": "/a/"}, "xdg_state_home_dir"),
        ({"home_dir": "/"}, "home_dir"),
        ({"home_dir": 7}, "home_dir"),
        ({"extra": 1, "more": 2}, "'extra', 'more'"),
    ],
)
def test_rejections_name_the_field(change: Dict[str, Any], field: str):
    data = {"schema_version": 2, "command": "true", "timeout_secs": 5, "run_as_root": True}
    data.update(change)
    with pytest.raises(guest.RequestError, match=field.replace(".", r"\.")):
        guest.parse_request(data)


def test_constructed_requests_are_validated_too():
    with pytest.raises(guest.RequestError, match="timeout_secs"):
        guest.GuestRequest(schema_version=2, command="x", timeout_secs=0, run_as_root=False)


def test_effective_dirs_default_to_the_image_layout():
    assert dict(guest.DEFAULT_DIRS) == {
        "workspace_dir": "/workspace/snapshot",
        "cargo_home_dir": "/cargo-home",
        "cargo_target_dir": "/cargo-target",
        "xdg_state_home_dir": "/run/pika-cloud/xdg-state",
        "home_dir": "/home/pikaci",
    }
    request = guest.GuestRequest(2, "x", 5, False, cargo_home_dir="/c")
    dirs = guest.effective_dirs(request, "/tmp/run")
    assert dirs["cargo_home_dir"] == "/c"
    assert dirs["xdg_state_home_dir"] == "/tmp/run/xdg-state"
    assert dirs["home_dir"] == "/home/pikaci"


def test_command_shape_for_each_identity():
    dropping = guest.GuestRequest(2, "cargo test", 600, False)
    shell = ["timeout", "-k", "5s", "600s", "bash", "--noprofile", "--norc", "-lc", "cargo test"]
    assert guest.build_argv(dropping, 0) == ["runuser", "-u", "pikaci", "-m", "--", *shell]
    assert guest.build_argv(dropping, 1000) == shell
    as_root = guest.GuestRequest(2, "cargo test", 600, True)
    assert guest.build_argv(as_root, 0) == shell
    with pytest.raises(guest.BootstrapError, match="run_as_root"):
        guest.build_argv(as_root, 1000)

    base = {"PATH": "/usr/bin", "KEEP": "1"}
    env = guest.build_env(dropping, "/run/pika-cloud", 0, base)
    assert env["HOME"] == "/home/pikaci"
    assert env["PATH"] == "/run/current-system/sw/bin:/usr/bin"
    assert env["KEEP"] == "1"
    assert env["ARTIFACTS"] == "/run/pika-cloud/artifacts"
    assert guest.build_env(as_root, "/run/pika-cloud", 0, base)["HOME"] == "/root"


def test_event_seq_recovers_from_a_corrupt_counter(tmp_path: Path):
    lifecycle = guest.Lifecycle(str(tmp_path), boot_id=None)
    assert [lifecycle.event("booted", "m") for _ in range(3)] == [1, 2, 3]
    (tmp_path / guest.EVENTS_SEQ_FILE).write_text("garbage")
    assert lifecycle.event("starting", "m") == 4
    (tmp_path / guest.EVENTS_SEQ_FILE).unlink()
    assert lifecycle.event("completed", "m") == 5
    events = [json.loads(line) for line in (tmp_path / guest.EVENTS_FILE).read_text().splitlines()]
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5]
    assert all("boot_id" not in e for e in events)
    with pytest.raises(ValueError, match="unknown lifecycle state"):
        lifecycle.status("running", "m")


def test_atomic_writes_leave_no_temp_files(tmp_path: Path):
    lifecycle = guest.Lifecycle(str(tmp_path), boot_id="b")
    lifecycle.status("ready", "m", {"k": 1})
    lifecycle.result("failed", 7, "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json", "status.json"]
    assert json.loads((tmp_path / "status.json").read_text())["boot_id"] == "b"
