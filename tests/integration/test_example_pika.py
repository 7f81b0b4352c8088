"""examples/pika: the pika monorepo's catalog and forge lanes.

The example is copied into a git repository of its own (inside a stand-in checkout that holds
the invariants checker, as the pikaci checkout does) and driven with real `doit` and `pikaci`
subprocesses; the catalog and manifest are also compared with the reference's tables."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, List, Tuple

import orjson
import pytest

from pikaci.catalog import REALIZE_ON_BUILDER, Catalog
from pikaci.forge.manifest import filters_for_target, load_manifest, staged_command
from tests.fixtures.support import DOIT, PIKACI, REPO_ROOT, git

EXAMPLE = REPO_ROOT / "examples" / "pika"
WRAPPERS = "/staged/linux-rust/workspace-build/bin/"

# The reference's staged Linux targets: target -> (payload id, output names without their
# `Deps`/`Build` ending, lanes), each lane (id, wrapper, timeout_secs).
STAGED: Dict[str, Tuple[str, str, List[Tuple[str, str, int]]]] = {
    "pre-merge-pika-rust": (
        "pika-core-linux-rust",
        "ci.x86_64-linux.workspace",
        [
            ("pika-core-lib-app-flows-tests", "run-pika-core-lib-app-flows-tests", 1800),
            ("pika-core-messaging-e2e-tests", "run-pika-core-messaging-e2e-tests", 1800),
        ],
    ),
    "pre-merge-pika-followup": (
        "pika-followup-linux-rust",
        "ci.x86_64-linux.pikaFollowupWorkspace",
        [
            ("pika-android-test-compile", "run-pika-android-test-compile", 3600),
            ("pikachat-build", "run-pika-followup-pikachat-build", 1800),
            ("pika-desktop-check", "run-pika-desktop-check", 1800),
            ("pika-actionlint", "run-pika-actionlint", 600),
            ("pika-doc-contracts", "run-pika-doc-contracts", 900),
            ("pika-rust-deps-hygiene", "run-pika-rust-deps-hygiene", 900),
        ],
    ),
    "pre-merge-agent-contracts": (
        "agent-contracts-linux-rust",
        "ci.x86_64-linux.agentContractsWorkspace",
        [
            ("agent-control-plane-unit", "run-pika-cloud-unit-tests", 1800),
            ("server-agent-api-tests", "run-server-agent-api-tests", 1800),
            ("core-agent-nip98-test", "run-core-agent-nip98-test", 1800),
        ],
    ),
    "pre-merge-notifications": (
        "notifications-linux-rust",
        "ci.x86_64-linux.notificationsWorkspace",
        [("pika-server-package-tests", "run-pika-server-package-tests", 1800)],
    ),
    "pre-merge-fixture-rust": (
        "fixture-linux-rust",
        "ci.x86_64-linux.fixtureWorkspace",
        [
            ("pikahut-clippy", "run-pikahut-clippy", 1800),
            ("fixture-relay-smoke", "run-fixture-relay-smoke", 300),
        ],
    ),
    "pre-merge-rmp": (
        "rmp-linux-rust",
        "ci.x86_64-linux.rmpWorkspace",
        [("rmp-init-smoke-ci", "run-rmp-init-smoke-ci", 1800)],
    ),
    "pre-merge-pikachat-rust": (
        "pikachat-linux-rust",
        "ci.x86_64-linux.pikachatWorkspace",
        [
            (job, f"run-{job}", 1800)
            for job in (
                "pikachat-package-tests",
                "pikachat-sidecar-package-tests",
                "pika-desktop-package-tests",
                "pikachat-cli-smoke-local",
                "pikachat-post-rebase-invalid-event",
                "pikachat-post-rebase-logout-session",
                "openclaw-invite-and-chat",
                "openclaw-invite-and-chat-rust-bot",
                "openclaw-invite-and-chat-daemon",
                "openclaw-audio-echo",
            )
        ],
    ),
    "pre-merge-pikachat-typescript": (
        "pikachat-linux-rust",
        "ci.x86_64-linux.pikachatWorkspace",
        [("pikachat-typescript", "run-pikachat-typescript", 1800)],
    ),
    "pre-merge-pikachat-openclaw-e2e": (
        "pikachat-openclaw-linux-rust",
        "ci.x86_64-linux.pikachatWorkspace",
        [("pikachat-openclaw-gateway-e2e", "run-openclaw-gateway-e2e", 3600)],
    ),
}
STAGED_LANES = [lane for _, _, lanes in STAGED.values() for lane, _, _ in lanes]
APPLE_TARGET = "pre-merge-pikachat-apple-followup"
# every target id of the reference's CLI: declared, or left out with a reason
REFERENCE_TARGETS = {
    *STAGED,
    APPLE_TARGET,
    "agent-control-plane-unit",
    "server-agent-api-tests",
    "core-agent-nip98-test",
    "pika-actionlint",
    "pika-doc-contracts",
    "pika-rust-deps-hygiene",
    "pika-core-lib-app-flows-tests",
    "pika-server-package-tests",
    "pikachat-package-tests",
    "pikahut-clippy",
    "pika-desktop-package-tests",
    "rmp-init-smoke-ci",
    "agent-contracts-smoke",
    "tart-beachhead",
    "tart-env-probe",
    "tart-ios-agent-button-state-test",
    "tart-ios-unit-tests",
    "tart-ios-ui-test",
    "tart-ios-ui-note-to-self",
    "tart-desktop-package-tests",
    "pre-merge-apple-deterministic",
    "android-sdk-probe",
    "android-nostr-connect-intent-test",
}
# the forge's lanes: id -> (title, staged target or None)
BRANCH_LANES = {
    "pika_rust": ("check-pika-rust", "pre-merge-pika-rust"),
    "pika_followup": ("check-pika-followup", "pre-merge-pika-followup"),
    "notifications": ("check-notifications", "pre-merge-notifications"),
    "agent_contracts": ("check-agent-contracts", "pre-merge-agent-contracts"),
    "rmp": ("check-rmp", "pre-merge-rmp"),
    "pikachat": ("check-pikachat", "pre-merge-pikachat-rust"),
    "pikachat_typescript": ("check-pikachat-typescript", "pre-merge-pikachat-typescript"),
    "apple_host_sanity": ("check-apple-host-sanity", None),
    "pikachat_openclaw_e2e": ("check-pikachat-openclaw-e2e", "pre-merge-pikachat-openclaw-e2e"),
    "fixture": ("check-fixture", "pre-merge-fixture-rust"),
}
NIGHTLY_LANES = {
    "nightly_linux": "nightly-linux",
    "nightly_pika": "nightly-pika",
    "nightly_pikachat": "nightly-pikachat",
    "nightly_pika_ui_android": "nightly-pika-ui-android",
    "nightly_apple_host_bundle": "nightly-apple-host-bundle",
}


# -- the declarations, in process ------------------------------------------------------------


@pytest.fixture(scope="module")
def example_dodo(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """examples/pika/dodo.py loaded by path, its state root somewhere harmless."""
    with pytest.MonkeyPatch.context() as patch:
        for name in [name for name in os.environ if name.startswith("PIKACI_")]:
            patch.delenv(name)
        patch.setenv("PIKACI_STATE_ROOT", str(tmp_path_factory.mktemp("dodo-state")))
        spec = importlib.util.spec_from_file_location("pika_example_dodo", EXAMPLE / "dodo.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


def test_staged_targets_match_the_reference_table(example_dodo: ModuleType) -> None:
    catalog = example_dodo.CATALOG
    assert isinstance(catalog, Catalog)
    catalog.validate()
    staged = [target for target in catalog.targets if target.payloads is not None]
    assert [target.id for target in staged] == list(STAGED)
    for target in staged:
        payload_id, outputs, lanes = STAGED[target.id]
        payloads = target.payloads
        assert payloads is not None
        assert payloads.id == payload_id
        assert payloads.deps.attr == f"{outputs}Deps"
        assert payloads.build.attr == f"{outputs}Build"
        assert payloads.deps.file is None and payloads.build.file is None
        assert payloads.realize == REALIZE_ON_BUILDER
        assert target.realization == REALIZE_ON_BUILDER
        declared = [(lane.id, lane.command, lane.timeout_secs) for lane in target.lanes]
        assert declared == [(job, WRAPPERS + wrapper, secs) for job, wrapper, secs in lanes]
        for lane in target.lanes:
            assert lane.execution.pair == ("remote_ssh", "incus"), lane.id
    assert len(STAGED_LANES) == 27
    # one pair of builds for both pikachat targets
    rust, typescript = (
        catalog.target("pre-merge-pikachat-rust"),
        catalog.target("pre-merge-pikachat-typescript"),
    )
    assert rust is not None and typescript is not None
    assert rust.payloads == typescript.payloads
    assert rust.snapshot_excludes == typescript.snapshot_excludes


def test_apple_host_lanes_and_left_out_targets(example_dodo: ModuleType) -> None:
    catalog = example_dodo.CATALOG
    apple = catalog.target(APPLE_TARGET)
    assert apple is not None and apple.payloads is None
    assert [lane.id for lane in apple.lanes] == [
        "pikachat-clippy",
        "pikachat-sidecar-clippy",
        "pikachat-ui-e2e-local-desktop",
        "pikachat-openclaw-channel-behavior",
    ]
    for lane in apple.lanes:
        assert lane.execution.pair == ("local", "host_process")
        assert lane.command.startswith("./scripts/apple-host-record-phase ")
    assert len(REFERENCE_TARGETS) == 33  # the reference's CLI target ids
    left_out = dict(example_dodo.LEFT_OUT)
    declared = {target.id for target in catalog.targets}
    assert not declared & set(left_out)
    assert declared | set(left_out) == REFERENCE_TARGETS
    assert all(reason.strip() for reason in left_out.values())


def test_the_manifest_loads_with_the_reference_lanes() -> None:
    manifest = load_manifest(EXAMPLE / "ci" / "forge-lanes.toml")
    assert manifest.nightly_schedule_utc == "08:00"
    branch = {lane.id: (lane.title, lane.staged_linux_target) for lane in manifest.branch_lanes}
    assert branch == BRANCH_LANES
    assert {lane.id: lane.title for lane in manifest.nightly_lanes} == NIGHTLY_LANES
    for lane in manifest.branch_lanes:
        assert "ci/forge-lanes.toml" in lane.paths, lane.id
        if lane.staged_linux_target is not None:
            assert lane.command == staged_command(lane.staged_linux_target)
            assert filters_for_target(manifest, lane.staged_linux_target) == lane.paths
    groups = {lane.id: lane.concurrency_group for lane in manifest.nightly_lanes}
    assert groups["nightly_pika_ui_android"] == "nightly-android"
    assert groups["nightly_apple_host_bundle"] == "apple-host"


# -- a repository of its own, through subprocesses --------------------------------------------


class Example:
    def __init__(self, root: Path, state_root: Path) -> None:
        self.root = root
        self.state_root = state_root

    @property
    def env(self) -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIKACI_")}
        env["PIKACI_STATE_ROOT"] = str(self.state_root)
        env["PYTHONPATH"] = str(REPO_ROOT)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        return env

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv),
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def commit_change(self, relpath: str, text: str) -> None:
        path = self.root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as handle:
            handle.write(text)
        git(self.root, "add", "-A")
        git(self.root, "commit", "-q", "-m", f"change {relpath}")

    def plan(self, *args: str) -> Dict[str, Any]:
        result = self.run(*PIKACI, "ci-plan", *args, "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        data = orjson.loads(result.stdout)
        assert isinstance(data, dict)
        return data


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Example:
    base = tmp_path_factory.mktemp("example-pika")
    checkout = base / "checkout"
    root = checkout / "examples" / "pika"
    skip = shutil.ignore_patterns("__pycache__", ".pikaci")
    shutil.copytree(EXAMPLE, root, ignore=skip)
    # check_invariants runs the checker of the checkout around the example
    scripts = checkout / "scripts"
    shutil.copytree(
        REPO_ROOT / "scripts" / "invariant_checks", scripts / "invariant_checks", ignore=skip
    )
    shutil.copy2(REPO_ROOT / "scripts" / "check_invariants.py", scripts / "check_invariants.py")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "the pika catalog")
    return Example(root, base / "state")


def test_doit_lists_every_staged_target_and_lane(example: Example) -> None:
    result = example.run(*DOIT, "list", "--all")
    assert result.returncode == 0, result.stdout + result.stderr
    listed = {line.split()[0] for line in result.stdout.splitlines() if line.strip()}
    expected = {f"target:{t}" for t in STAGED} | {f"lane:{lane}" for lane in STAGED_LANES}
    assert expected <= listed, sorted(expected - listed)
    assert len([name for name in listed if name.startswith("lane:")]) == 27 + 4
    assert f"target:{APPLE_TARGET}" in listed
    assert {"ci:plan", "ci:branch", "ci:nightly", "check_invariants"} <= listed


@pytest.mark.parametrize(
    ("path", "lane"),
    [
        ("crates/rmp-cli/src/main.rs", "rmp"),
        ("crates/pika-notifications/src/lib.rs", "notifications"),
        ("crates/pika-agent-protocol/src/lib.rs", "agent_contracts"),
        ("android/app/build.gradle.kts", "pika_followup"),
        ("uniffi-bindgen/src/main.rs", "pika_rust"),
        ("ios/Pika/ContentView.swift", "apple_host_sanity"),
        ("fixtures/relay/config.json", "fixture"),
        ("pikachat-openclaw/README.md", "pikachat"),
    ],
)
def test_a_change_only_one_lane_watches_selects_that_lane(
    example: Example, path: str, lane: str
) -> None:
    example.commit_change(path, "changed\n")
    plan = example.plan("--base", "HEAD~1")
    changes = plan["changes"]
    assert isinstance(changes, dict) and changes["paths"] == [path]
    lanes = plan["lanes"]
    assert isinstance(lanes, list) and len(lanes) == len(BRANCH_LANES)
    assert [entry["id"] for entry in lanes if entry["selected"]] == [lane]
    chosen = next(entry for entry in lanes if entry["selected"])
    assert chosen["matched_path"] == path
    assert chosen["reason"] == f"{path} matches {chosen['matched_pattern']}"


def test_a_manifest_change_selects_every_branch_lane(example: Example) -> None:
    example.commit_change("ci/forge-lanes.toml", "# touched\n")
    plan = example.plan("--base", "HEAD~1")
    lanes = plan["lanes"]
    assert isinstance(lanes, list)
    assert [entry["id"] for entry in lanes] == list(BRANCH_LANES)
    assert all(entry["selected"] for entry in lanes)
    assert {entry["reason"] for entry in lanes} == {
        "ci/forge-lanes.toml changed: every branch lane"
    }
    nightly = example.plan("--nightly")
    assert [entry["id"] for entry in nightly["lanes"]] == list(NIGHTLY_LANES)


def test_doit_check_invariants_passes(example: Example) -> None:
    result = example.run(*DOIT, "check_invariants")
    assert result.returncode == 0, result.stdout + result.stderr
    verdicts = [line for line in result.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert [line.split(":")[0] for line in verdicts] == [
        "PASS PIKACI-003",
        "PASS PIKACI-004",
        "PASS PIKACI-005",
        "PASS PIKACI-006",
    ]
    assert "UNCHECKED" not in result.stdout
