"""Staged lanes end to end: real nix builds, real bubblewrap, the real guest runner."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import orjson
import pytest

from tests.fixtures.projects import LaneSpec, executed_tasks, reused_tasks
from tests.fixtures.staged import nix_calls
from tests.fixtures.support import DOIT

BUILD_ROOT = "/staged/linux-rust/workspace-build"
DEPS_ROOT = "/staged/linux-rust/workspace-deps"

PROBE = f"""
echo "uid=$(id -u) user=$(id -un) home=$HOME"
test -f {DEPS_ROOT}/share/inputs/hello.txt && echo "deps mounted"
cat {BUILD_ROOT}/share/all.txt
if touch /workspace/snapshot/intruder 2>/dev/null; then echo "snapshot WRITABLE"; exit 9; fi
echo "snapshot read-only"
if touch {BUILD_ROOT}/intruder 2>/dev/null; then echo "payload WRITABLE"; exit 9; fi
echo "payload read-only"
touch "$HOME/scratch" && echo "home writable"
echo "interfaces: $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\\n' ' ')"
echo artifact > "$ARTIFACTS/probe.txt"
"""


def build_with_manifest(manifest: str, name: str = "bad-manifest") -> str:
    """Nix overriding the `build` payload with one whose manifest is exactly `manifest`."""
    return (
        f'{{ build = derivation {{ name = "{name}"; system = "x86_64-linux"; '
        'builder = "/bin/sh"; PATH = "/usr/bin:/bin"; args = [ "-c" '
        + '"mkdir -p $out/bin $out/share/pikaci && '
        + "printf '#!/bin/sh\\\\necho ran\\\\n' > $out/bin/run-ok && chmod 555 $out/bin/run-ok && "
        + "cat > $out/share/pikaci/payload-manifest.json <<'EOF'\\n"
        + manifest.replace("\\", "\\\\").replace('"', '\\"')
        + '\\nEOF\\n" ]; }; }'
    )


def sandbox_lane(lane_id: str, wrapper: str, **kwargs) -> LaneSpec:
    return LaneSpec(lane_id, f"{BUILD_ROOT}/bin/{wrapper}", runtime="bubblewrap", **kwargs)


def test_staged_lane_builds_runs_in_the_sandbox_and_is_reused(make_staged_project, nix_counter):
    project = make_staged_project(
        {"run-probe": PROBE}, {"main": [sandbox_lane("probe", "run-probe")]}
    )
    env = {"PATH": f"{nix_counter}:{os.environ['PATH']}"}
    first = project.doit("run", "lane:probe", env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert executed_tasks(first.stdout) == [
        "snapshot:main",
        "build:shared:deps",
        "build:shared:build",
        "execute:probe",
        "collect:probe",
        "lane:probe",
    ]
    out = first.stdout
    assert "uid=1000 user=pikaci home=/home/pikaci" in out
    assert "deps mounted" in out and "[probe] hello" in out
    assert "snapshot read-only" in out and "payload read-only" in out
    assert "home writable" in out
    assert "interfaces: lo " in out  # no network unless the lane asks for it
    assert len([c for c in nix_calls(nix_counter) if c.startswith("nix ") and " build " in c]) == 2

    record = project.latest_run()
    (job,) = record["jobs"]  # type: ignore[misc]
    assert job["status"] == "passed" and job["message"] == "test passed"
    # the reference's vocabulary, and pikaci's sandbox beside it (pikaci.vocabulary)
    assert (job["executor"], job["runtime"], job["sandbox"]) == (
        "host_local",
        "host_process",
        "bubblewrap",
    )
    artifacts = Path(job["artifacts_dir"])
    assert (artifacts / "probe.txt").read_text() == "artifact\n"
    for name in ("guest.log", "events.jsonl", "status.json", "result.json"):
        assert (artifacts / name).is_file(), name
    assert "snapshot read-only" in (artifacts / "guest.log").read_text()
    events = [orjson.loads(line) for line in (artifacts / "events.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in events] == ["booted", "starting", "completed"]
    prepared = orjson.loads(Path(str(record["prepared_outputs_path"])).read_bytes())
    nodes = {o["node_id"]: o for o in prepared["outputs"]}
    assert set(nodes) == {"prepare-shared-workspace-deps", "prepare-shared-workspace-build"}
    build = nodes["prepare-shared-workspace-build"]
    assert build["payload"]["mounts"][0]["guest_path"] == BUILD_ROOT
    assert build["realized_path"].startswith("/nix/store/")
    (exposure,) = build["exposures"]
    assert os.readlink(exposure["path"]) == build["realized_path"]
    host_log = Path(job["host_log_path"]).read_text()
    assert "build:shared:build: $ nix " in host_log  # every nix command, in the consumer's log
    assert "[runner:stdout] snapshot read-only" in host_log

    calls_before = len(nix_calls(nix_counter))
    again = project.doit("run", "lane:probe", env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert executed_tasks(again.stdout) == []
    assert {"build:shared:deps", "build:shared:build", "execute:probe"} <= set(
        reused_tasks(again.stdout)
    )
    assert len(nix_calls(nix_counter)) == calls_before, "a no-op rerun started nix"


def test_payload_inputs_rebuild_and_excluded_files_do_not(make_staged_project, nix_counter):
    project = make_staged_project(
        {"run-cat": f"cat {BUILD_ROOT}/share/all.txt"},
        {"main": [sandbox_lane("cat", "run-cat")]},
        excludes=["/scratch"],
    )
    env = {"PATH": f"{nix_counter}:{os.environ['PATH']}"}
    assert project.doit("run", "lane:cat", env=env).returncode == 0
    first_build = project.latest_run()["jobs"][0]["identity"]  # type: ignore[index]

    project.write("scratch/notes.txt", "excluded\n")
    calls = len(nix_calls(nix_counter))
    untouched = project.doit("run", "lane:cat", env=env)
    assert executed_tasks(untouched.stdout) == []
    assert len(nix_calls(nix_counter)) == calls

    project.write("src/hello.txt", "changed input\n")
    changed = project.doit("run", "lane:cat", env=env)
    assert changed.returncode == 0, changed.stdout + changed.stderr
    ran = executed_tasks(changed.stdout)
    assert {"build:shared:deps", "build:shared:build", "execute:cat"} <= set(ran)
    assert "[cat] changed input" in changed.stdout
    assert project.latest_run()["jobs"][0]["identity"] != first_build  # type: ignore[index]


def test_two_targets_sharing_a_payload_build_it_once(make_staged_project, nix_counter):
    project = make_staged_project(
        {"run-ok": "echo ok"},
        {"alpha": [sandbox_lane("a", "run-ok")], "beta": [sandbox_lane("b", "run-ok")]},
    )
    env = {"PATH": f"{nix_counter}:{os.environ['PATH']}"}
    result = project.doit("run", "target:alpha", "target:beta", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    builds = [c for c in nix_calls(nix_counter) if c.startswith("nix ") and " build " in c]
    assert len(builds) == 2, builds  # deps once, build once, for both targets
    assert executed_tasks(result.stdout).count("build:shared:build") == 1
    record = project.latest_run()
    assert [job["status"] for job in record["jobs"]] == ["passed", "passed"]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("manifest", "expected"),
    [
        (
            '{"schema_version":1,"kind":"k","mounts":[{"name":"m","relative_path":"/etc",'
            '"guest_path":"/staged/x","read_only":true}]}',
            'mounts[0] "m": relative_path "/etc"',
        ),
        (
            '{"schema_version":1,"kind":"k","mounts":[{"name":"a","relative_path":".",'
            '"guest_path":"/staged/x","read_only":true},{"name":"b","relative_path":".",'
            '"guest_path":"/staged/x","read_only":true}]}',
            'duplicate guest_path "/staged/x"',
        ),
        ('{"schema_version":1,"kind":', "invalid JSON"),
    ],
)
def test_bad_manifest_fails_the_build_and_mounts_nothing(make_staged_project, manifest, expected):
    bad_build = build_with_manifest(manifest)
    project = make_staged_project(
        {"run-ok": "echo should-not-run"},
        {"main": [sandbox_lane("victim", "run-ok")]},
        extra_nix=bad_build,
    )
    result = project.doit("run", "lane:victim")
    assert result.returncode != 0
    assert expected in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    record = project.latest_run()
    (job,) = record["jobs"]  # type: ignore[misc]
    assert job["status"] == "failed"
    assert job["message"].startswith(
        "prepare node `prepare-shared-workspace-build` failed before execute: "
    )
    assert expected in job["message"]
    host_log = Path(job["host_log_path"]).read_text()
    assert "sandbox command" not in host_log and "should-not-run" not in host_log


@pytest.mark.parametrize(
    ("body", "timeout", "exit_code", "message"),
    [
        ("echo failing; exit 3", 60, 3, "test command exited with 3"),
        ("sleep 30", 1, 124, "timed out after 1s"),
    ],
)
def test_guest_exit_codes_propagate(make_staged_project, body, timeout, exit_code, message):
    project = make_staged_project(
        {"run-x": body}, {"main": [sandbox_lane("x", "run-x", timeout_secs=timeout)]}
    )
    started = time.monotonic()
    result = project.doit("run", "lane:x")
    assert time.monotonic() - started < 30
    assert result.returncode == 1
    (job,) = project.latest_run()["jobs"]  # type: ignore[misc]
    assert (job["status"], job["exit_code"], job["message"]) == ("failed", exit_code, message)
    guest_result = orjson.loads((Path(job["artifacts_dir"]) / "result.json").read_bytes())
    assert guest_result["status"] == "failed" and guest_result["exit_code"] == exit_code


def test_lane_can_ask_for_the_network(make_staged_project):
    project = make_staged_project(
        {"run-net": "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort"},
        {"main": [sandbox_lane("net", "run-net", network=True)]},
    )
    result = project.doit("run", "lane:net")
    assert result.returncode == 0, result.stdout + result.stderr
    host_interfaces = {
        line.split(":")[0].strip() for line in Path("/proc/net/dev").read_text().splitlines()[2:]
    }
    for interface in host_interfaces:
        assert f"[net] {interface}" in result.stdout


def test_nix_evaluation_error_names_target_attribute_and_message(make_staged_project):
    project = make_staged_project({"run-ok": "true"}, {"main": [sandbox_lane("x", "run-ok")]})
    project.write(
        "flake.nix",
        project.root.joinpath("flake.nix")
        .read_text()
        .replace(
            'ci.stagedPayload {\n          name = "', 'ci.stagedPayload {\n          nme = "', 1
        ),
    )
    result = project.doit("run", "lane:x")
    assert result.returncode != 0
    errors = [
        line for line in result.stdout.splitlines() if "build:shared:deps (target main)" in line
    ]
    assert errors, result.stdout
    assert "nix build of `ci.x86_64-linux.deps` failed:" in errors[0]
    (job,) = project.latest_run()["jobs"]  # type: ignore[misc]
    assert job["message"].startswith("prepare node `prepare-shared-workspace-deps` failed")


def test_missing_nix_is_one_clear_error(make_staged_project, tmp_path):
    project = make_staged_project({"run-ok": "true"}, {"main": [sandbox_lane("x", "run-ok")]})
    bindir = tmp_path / "no-nix-bin"
    bindir.mkdir()
    for tool in ("git", "sh", "bash"):
        (bindir / tool).symlink_to(f"/usr/bin/{tool}")
    result = project.doit("run", "lane:x", env={"PATH": str(bindir)})
    assert result.returncode != 0
    assert "`nix` not found on PATH" in result.stdout
    (job,) = project.latest_run()["jobs"]  # type: ignore[misc]
    assert "`nix` not found on PATH" in job["message"]


def test_interrupt_kills_the_sandbox(make_staged_project):
    project = make_staged_project(
        {"run-sleep": "echo started; sleep 120"}, {"main": [sandbox_lane("s", "run-sleep")]}
    )
    proc = subprocess.Popen(
        [*DOIT, "run", "lane:s"],
        cwd=project.root,
        env=project.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    assert proc.stdout is not None
    for line in proc.stdout:
        if "[s] started" in line or time.monotonic() > deadline:
            break
    runtime_dir = str(project.state_root / "runs")
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    time.sleep(0.5)
    leftovers = []
    for pid_dir in Path("/proc").iterdir():
        if pid_dir.name.isdigit():
            try:
                cmdline = (pid_dir / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if runtime_dir in cmdline:
                leftovers.append(cmdline)
    assert leftovers == []
    (job,) = project.latest_run()["jobs"]  # type: ignore[misc]
    assert job["status"] == "failed" and job["message"].startswith("interrupted by SIGINT")


def test_collect_never_follows_what_the_lane_left_behind(make_staged_project, tmp_path):
    secret_dir = tmp_path / "host-only"
    secret_dir.mkdir()
    (secret_dir / "secret.txt").write_text("HOST-ONLY-SECRET\n")
    victim = secret_dir / "victim.txt"
    victim.write_text("untouched\n")
    attack = f"""
ln -s {secret_dir}/secret.txt "$ARTIFACTS/leak.txt"
ln -s {victim} "$ARTIFACTS/status.json"
mkdir "$ARTIFACTS/sub" && ln -s {secret_dir} "$ARTIFACTS/sub/dir"
echo kept > "$ARTIFACTS/sub/real.txt"
rm -f /run/pika-cloud/logs/guest.log && ln -s {secret_dir}/secret.txt /run/pika-cloud/logs/guest.log
"""
    project = make_staged_project(
        {"run-attack": attack}, {"main": [sandbox_lane("evil", "run-attack")]}
    )
    project.doit("run", "lane:evil")
    (job,) = project.latest_run()["jobs"]  # type: ignore[misc]
    artifacts = Path(job["artifacts_dir"])
    assert victim.read_text() == "untouched\n"
    everything = list(artifacts.rglob("*"))
    assert not any(p.is_symlink() for p in everything), everything
    for path in everything:
        if path.is_file():
            assert "HOST-ONLY-SECRET" not in path.read_text(errors="replace"), path
    assert (artifacts / "sub" / "real.txt").read_text() == "kept\n"
    assert "collect: skipped" in Path(job["host_log_path"]).read_text()


def test_a_lane_cannot_forge_its_verdict(make_staged_project):
    forge = """
printf '{"schema_version":1,"status":"completed","exit_code":0,"finished_at":"x","message":"forged"}' > "$ARTIFACTS/result.json"
trap '' TERM
exec sleep 1000
"""
    project = make_staged_project(
        {"run-forge": forge}, {"main": [sandbox_lane("forge", "run-forge", timeout_secs=1)]}
    )
    started = time.monotonic()
    result = project.doit("run", "lane:forge")
    assert time.monotonic() - started < 25  # the runner's kill-after, not the host's grace
    assert result.returncode == 1
    (job,) = project.latest_run()["jobs"]  # type: ignore[misc]
    assert job["status"] == "failed"
    assert job["message"] != "forged"
    result_file = orjson.loads((Path(job["artifacts_dir"]) / "result.json").read_bytes())
    assert result_file["message"] != "forged"
    host_log = Path(job["host_log_path"]).read_text()
    assert "collect: skipped artifact `result.json`: the name is the runner's" in host_log


def test_lane_env_root_home_and_localhost_in_the_sandbox(make_staged_project):
    probe = """
echo "FOO=${FOO:-unset}"
echo "home=$HOME uid=$(id -u)"
touch "$HOME/.probe" && echo "home writable"
python3 -c 'import socket; print("localhost resolves to", socket.getaddrinfo("localhost", 80)[0][4][0])'
"""
    project = make_staged_project(
        {"run-env": probe},
        {
            "main": [
                sandbox_lane("env", "run-env", env={"FOO": "bar"}),
                sandbox_lane("root", "run-env", run_as_root=True),
            ]
        },
    )
    result = project.doit("run", "--continue", "target:main")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[env] FOO=bar" in result.stdout
    assert "[env] home=/home/pikaci uid=1000" in result.stdout
    assert "[root] home=/root uid=0" in result.stdout
    assert result.stdout.count("home writable") == 2
    assert "[env] localhost resolves to" in result.stdout


def test_a_payload_may_not_mount_over_the_guest_layout(make_staged_project):
    manifest = (
        '{"schema_version":1,"kind":"k","entrypoints":[{"name":"run-ok","relative_path":"bin/run-ok"}],'
        '"mounts":[{"name":"sneaky","relative_path":".","guest_path":"/run/pika-cloud",'
        '"read_only":true}]}'
    )
    project = make_staged_project(
        {"run-ok": "true"},
        {"main": [LaneSpec("x", "/run/pika-cloud/bin/run-ok", runtime="bubblewrap")]},
        extra_nix=build_with_manifest(manifest, "reserved-mount"),
    )
    result = project.doit("run", "lane:x")
    assert result.returncode != 0
    (job,) = project.latest_run()["jobs"]  # type: ignore[misc]
    assert job["status"] == "failed"
    assert "collides with the guest layout (/run)" in job["message"]
    assert "sandbox command" not in Path(job["host_log_path"]).read_text()


def test_realized_outputs_are_recorded_even_when_a_later_build_fails(make_staged_project):
    failing = (
        '{ build = derivation { name = "fails"; system = "x86_64-linux"; builder = "/bin/sh"; '
        'PATH = "/usr/bin:/bin"; args = [ "-c" "echo compiling; echo boom-last-words; exit 3" ]; }; }'
    )
    project = make_staged_project(
        {"run-ok": "true"}, {"main": [sandbox_lane("x", "run-ok")]}, extra_nix=failing
    )
    result = project.doit("run", "lane:x")
    assert result.returncode != 0
    record = project.latest_run()
    prepared = orjson.loads(Path(str(record["prepared_outputs_path"])).read_bytes())
    assert [o["node_id"] for o in prepared["outputs"]] == ["prepare-shared-workspace-deps"]
    (job,) = record["jobs"]  # type: ignore[misc]
    assert "boom-last-words" in job["message"]  # the builder's own last line, in one line


def test_plan_of_a_shared_payload_names_the_snapshot_it_is_built_from(make_staged_project):
    project = make_staged_project(
        {"run-ok": "true"},
        {"alpha": [sandbox_lane("a", "run-ok")], "beta": [sandbox_lane("b", "run-ok")]},
    )
    assert project.doit("run", "target:beta").returncode == 0
    record = project.latest_run()
    plan = orjson.loads(Path(str(record["plan_path"])).read_bytes())
    nodes = {node["id"]: node for node in [*plan["nodes"], *plan["pikaci_nodes"]]}
    assert nodes["prepare-shared-workspace-deps"]["depends_on"] == ["snapshot-alpha"]
    assert "snapshot-beta" in nodes["execute-b"]["depends_on"]
    timed = {t["node_id"] for t in record["prepare_timings"]}  # type: ignore[union-attr]
    assert timed <= set(nodes)
