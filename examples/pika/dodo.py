"""The pika monorepo's CI catalog as pikaci declares it. Declarations only.

The lanes run the monorepo's staged wrappers, built from its flake outputs, in Incus guests on a
builder; this directory holds neither, so none of them can run here (see README.md). What works
here:

doit list --all                        every task (`target:<id>`, `lane:<id>`, `build:<payload>:*`)
pikaci ci-plan --base <ref> [--json]   which lanes of ci/forge-lanes.toml a change selects
doit check_invariants                  invariants/invariants.toml
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, Tuple

from pikaci.catalog import (
    REALIZE_ON_BUILDER,
    Catalog,
    Execution,
    Installable,
    Lane,
    StagedPayloads,
    Target,
)
from pikaci.graph import declare

# Spelled out as strings: scripts/check_invariants.py reads them from this file's source.
STAGED_GUEST = Execution(placement="remote_ssh", runtime="incus")
APPLE_HOST = Execution(placement="local", runtime="host_process")
DEFAULT_TIMEOUT_SECS = 1800  # the reference's default job timeout
BIN = "/staged/linux-rust/workspace-build/bin"  # the wrappers of the workspace-build payload
# the reference's snapshot profiles: the staged Rust one leaves out both mobile trees, the
# follow-up one keeps android/ (it compiles the Android tests)
RUST_SNAPSHOT = ("/ios", "/android")
FOLLOWUP_SNAPSHOT = ("/ios",)
# shared by pre-merge-pikachat-rust and pre-merge-pikachat-typescript: built once per run
PIKACHAT_PAYLOADS = StagedPayloads(
    id="pikachat-linux-rust",
    deps=Installable("ci.x86_64-linux.pikachatWorkspaceDeps"),
    build=Installable("ci.x86_64-linux.pikachatWorkspaceBuild"),
    realize=REALIZE_ON_BUILDER,
)

CATALOG = Catalog(
    targets=[
        Target(
            id="pre-merge-pika-rust",
            description="pika core: library app-flow and messaging end-to-end tests",
            snapshot_excludes=RUST_SNAPSHOT,
            payloads=StagedPayloads(
                id="pika-core-linux-rust",
                deps=Installable("ci.x86_64-linux.workspaceDeps"),
                build=Installable("ci.x86_64-linux.workspaceBuild"),
                realize=REALIZE_ON_BUILDER,
            ),
            lanes=[
                Lane(
                    id="pika-core-lib-app-flows-tests",
                    description="pika_core library app-flow tests",
                    command=f"{BIN}/run-pika-core-lib-app-flows-tests",
                    execution=STAGED_GUEST,
                    timeout_secs=DEFAULT_TIMEOUT_SECS,
                ),
                Lane(
                    id="pika-core-messaging-e2e-tests",
                    description="pika_core messaging end-to-end tests",
                    command=f"{BIN}/run-pika-core-messaging-e2e-tests",
                    execution=STAGED_GUEST,
                    timeout_secs=DEFAULT_TIMEOUT_SECS,
                ),
            ],
        ),
        Target(
            id="pre-merge-pika-followup",
            description="pika follow-up checks: Android test compile, desktop, docs, hygiene",
            snapshot_excludes=FOLLOWUP_SNAPSHOT,
            payloads=StagedPayloads(
                id="pika-followup-linux-rust",
                deps=Installable("ci.x86_64-linux.pikaFollowupWorkspaceDeps"),
                build=Installable("ci.x86_64-linux.pikaFollowupWorkspaceBuild"),
                realize=REALIZE_ON_BUILDER,
            ),
            lanes=[
                Lane(
                    id="pika-android-test-compile",
                    description="compile the Android instrumentation tests",
                    command=f"{BIN}/run-pika-android-test-compile",
                    execution=STAGED_GUEST,
                    timeout_secs=3600,
                ),
                Lane(
                    id="pikachat-build",
                    description="build pikachat",
                    command=f"{BIN}/run-pika-followup-pikachat-build",
                    execution=STAGED_GUEST,
                    timeout_secs=DEFAULT_TIMEOUT_SECS,
                ),
                Lane(
                    id="pika-desktop-check",
                    description="check pika-desktop",
                    command=f"{BIN}/run-pika-desktop-check",
                    execution=STAGED_GUEST,
                    timeout_secs=DEFAULT_TIMEOUT_SECS,
                ),
                Lane(
                    id="pika-actionlint",
                    description="actionlint over the workflows",
                    command=f"{BIN}/run-pika-actionlint",
                    execution=STAGED_GUEST,
                    timeout_secs=600,
                ),
                Lane(
                    id="pika-doc-contracts",
                    description="documentation contracts",
                    command=f"{BIN}/run-pika-doc-contracts",
                    execution=STAGED_GUEST,
                    timeout_secs=900,
                ),
                Lane(
                    id="pika-rust-deps-hygiene",
                    description="Rust dependency hygiene",
                    command=f"{BIN}/run-pika-rust-deps-hygiene",
                    execution=STAGED_GUEST,
                    timeout_secs=900,
                ),
            ],
        ),
        Target(
            id="pre-merge-agent-contracts",
            description="agent contracts: control plane, server agent API, NIP-98 signing",
            snapshot_excludes=RUST_SNAPSHOT,
            payloads=StagedPayloads(
                id="agent-contracts-linux-rust",
                deps=Installable("ci.x86_64-linux.agentContractsWorkspaceDeps"),
                build=Installable("ci.x86_64-linux.agentContractsWorkspaceBuild"),
                realize=REALIZE_ON_BUILDER,
            ),
            lanes=[
                Lane(
                    id="agent-control-plane-unit",
                    description="pika-cloud unit tests",
                    command=f"{BIN}/run-pika-cloud-unit-tests",
                    execution=STAGED_GUEST,
                    timeout_secs=DEFAULT_TIMEOUT_SECS,
                ),
                Lane(
                    id="server-agent-api-tests",
                    description="pika-server agent_api tests",
                    command=f"{BIN}/run-server-agent-api-tests",
                    execution=STAGED_GUEST,
                    timeout_secs=DEFAULT_TIMEOUT_SECS,
                ),
                Lane(
                    id="core-agent-nip98-test",
                    description="pika_core NIP-98 signing contract test",
                    command=f"{BIN}/run-core-agent-nip98-test",
                    execution=STAGED_GUEST,
                    timeout_secs=DEFAULT_TIMEOUT_SECS,
                ),
            ],
        ),
        Target(
            id="pre-merge-notifications",
            description="notifications: pika-server package tests",
            snapshot_excludes=RUST_SNAPSHOT,
            payloads=StagedPayloads(
                id="notifications-linux-rust",
                deps=Installable("ci.x86_64-linux.notificationsWorkspaceDeps"),
                build=Installable("ci.x86_64-linux.notificationsWorkspaceBuild"),
                realize=REALIZE_ON_BUILDER,
            ),
            lanes=[
                Lane(
                    id="pika-server-package-tests",
                    description="pika-server package tests",
                    command=f"{BIN}/run-pika-server-package-tests",
                    execution=STAGED_GUEST,
                    timeout_secs=DEFAULT_TIMEOUT_SECS,
                ),
            ],
        ),
        Target(
            id="pre-merge-fixture-rust",
            description="test fixtures: pikahut clippy and the relay smoke",
            snapshot_excludes=RUST_SNAPSHOT,
            payloads=StagedPayloads(
                id="fixture-linux-rust",
                deps=Installable("ci.x86_64-linux.fixtureWorkspaceDeps"),
                build=Installable("ci.x86_64-linux.fixtureWorkspaceBuild"),
                realize=REALIZE_ON_BUILDER,
            ),
            lanes=[
                Lane(
                    id="pikahut-clippy",
                    description="pikahut clippy",
                    command=f"{BIN}/run-pikahut-clippy",
                    execution=STAGED_GUEST,
                    timeout_secs=DEFAULT_TIMEOUT_SECS,
                ),
                Lane(
                    id="fixture-relay-smoke",
                    description="the relay-profile pikahut smoke flow",
                    command=f"{BIN}/run-fixture-relay-smoke",
                    execution=STAGED_GUEST,
                    timeout_secs=300,
                ),
            ],
        ),
        Target(
            id="pre-merge-rmp",
            description="rmp: the init smoke checks",
            snapshot_excludes=RUST_SNAPSHOT,
            payloads=StagedPayloads(
                id="rmp-linux-rust",
                deps=Installable("ci.x86_64-linux.rmpWorkspaceDeps"),
                build=Installable("ci.x86_64-linux.rmpWorkspaceBuild"),
                realize=REALIZE_ON_BUILDER,
            ),
            lanes=[
                Lane(
                    id="rmp-init-smoke-ci",
                    description="rmp init smoke checks",
                    command=f"{BIN}/run-rmp-init-smoke-ci",
                    execution=STAGED_GUEST,
                    timeout_secs=DEFAULT_TIMEOUT_SECS,
                ),
            ],
        ),
        Target(
            id="pre-merge-pikachat-rust",
            description="pikachat: package tests, CLI smoke, OpenClaw invite and chat",
            snapshot_excludes=RUST_SNAPSHOT,
            payloads=PIKACHAT_PAYLOADS,
            lanes=[
                Lane(
                    id="pikachat-package-tests",
                    description="pikachat package tests",
                    command=f"{BIN}/run-pikachat-package-tests",
                    execution=STAGED_GUEST,
                    timeout_secs=DEFAULT_TIMEOUT_SECS,
                ),
                Lane(
                    id="pikachat-sidecar-package-tests",
                    description="pikachat-sidecar package tests",
                    command=f"{BIN}/run-pikachat-sidecar-package-tests",
                    execution=STAGED_GUEST,
                    timeout_secs=DEFAULT_TIMEOUT_SECS,
                ),
                Lane(
                    id="pika-desktop-package-tests",
                    description="pika-desktop package tests",
                    command=f"{BIN}/run-pika-desktop-package-tests",
                    execution=STAGED_GUEST,
                    timeout_secs=DEFAULT_TIMEOUT_SECS,
                ),
                Lane(
                    id="pikachat-cli-smoke-local",
                    description="pikachat CLI smoke against a local relay",
                    command=f"{BIN}/run-pikachat-cli-smoke-local",
                    execution=STAGED_GUEST,
                    timeout_secs=DEFAULT_TIMEOUT_SECS,
                ),
                Lane(
                    id="pikachat-post-rebase-invalid-event",
                    description="post-rebase: an invalid event",
                    command=f"{BIN}/run-pikachat-post-rebase-invalid-event",
                    execution=STAGED_GUEST,
                    timeout_secs=DEFAULT_TIMEOUT_SECS,
                ),
                Lane(
                    id="pikachat-post-rebase-logout-session",
                    description="post-rebase: logging a session out",
                    command=f"{BIN}/run-pikachat-post-rebase-logout-session",
                    execution=STAGED_GUEST,
                    timeout_secs=DEFAULT_TIMEOUT_SECS,
                ),
                Lane(
                    id="openclaw-invite-and-chat",
                    description="OpenClaw: invite and chat",
                    command=f"{BIN}/run-openclaw-invite-and-chat",
                    execution=STAGED_GUEST,
                    timeout_secs=DEFAULT_TIMEOUT_SECS,
                ),
                Lane(
                    id="openclaw-invite-and-chat-rust-bot",
                    description="OpenClaw: invite and chat with the Rust bot",
                    command=f"{BIN}/run-openclaw-invite-and-chat-rust-bot",
                    execution=STAGED_GUEST,
                    timeout_secs=DEFAULT_TIMEOUT_SECS,
                ),
                Lane(
                    id="openclaw-invite-and-chat-daemon",
                    description="OpenClaw: invite and chat through the daemon",
                    command=f"{BIN}/run-openclaw-invite-and-chat-daemon",
                    execution=STAGED_GUEST,
                    timeout_secs=DEFAULT_TIMEOUT_SECS,
                ),
                Lane(
                    id="openclaw-audio-echo",
                    description="OpenClaw: audio echo",
                    command=f"{BIN}/run-openclaw-audio-echo",
                    execution=STAGED_GUEST,
                    timeout_secs=DEFAULT_TIMEOUT_SECS,
                ),
            ],
        ),
        Target(
            id="pre-merge-pikachat-typescript",
            description="pikachat: the TypeScript checks",
            snapshot_excludes=RUST_SNAPSHOT,
            payloads=PIKACHAT_PAYLOADS,
            lanes=[
                Lane(
                    id="pikachat-typescript",
                    description="pikachat TypeScript checks",
                    command=f"{BIN}/run-pikachat-typescript",
                    execution=STAGED_GUEST,
                    timeout_secs=DEFAULT_TIMEOUT_SECS,
                ),
            ],
        ),
        Target(
            id="pre-merge-pikachat-openclaw-e2e",
            description="pikachat: the OpenClaw gateway end-to-end test",
            snapshot_excludes=RUST_SNAPSHOT,
            # the pikachat outputs under a payload id of their own, as in the reference
            payloads=StagedPayloads(
                id="pikachat-openclaw-linux-rust",
                deps=Installable("ci.x86_64-linux.pikachatWorkspaceDeps"),
                build=Installable("ci.x86_64-linux.pikachatWorkspaceBuild"),
                realize=REALIZE_ON_BUILDER,
            ),
            lanes=[
                Lane(
                    id="pikachat-openclaw-gateway-e2e",
                    description="OpenClaw gateway end-to-end",
                    command=f"{BIN}/run-openclaw-gateway-e2e",
                    execution=STAGED_GUEST,
                    timeout_secs=3600,
                ),
            ],
        ),
        # Runs where pikaci runs, which must be the Apple host (macOS with the toolchains). The
        # reference's 20-path filter list of this target is not declared: path filters live in
        # ci/forge-lanes.toml only, and no branch lane runs this target.
        Target(
            id="pre-merge-pikachat-apple-followup",
            description="pikachat follow-up checks on the Apple host",
            lanes=[
                Lane(
                    id="pikachat-clippy",
                    description="pikachat clippy on the Apple host",
                    command="./scripts/apple-host-record-phase "
                    "pikachat-followup.pikachat-clippy rust-live-clippy -- "
                    "cargo clippy -p pikachat -- -D warnings",
                    execution=APPLE_HOST,
                    timeout_secs=DEFAULT_TIMEOUT_SECS,
                ),
                Lane(
                    id="pikachat-sidecar-clippy",
                    description="pikachat-sidecar clippy on the Apple host",
                    command="./scripts/apple-host-record-phase "
                    "pikachat-followup.pikachat-sidecar-clippy rust-live-clippy -- "
                    "cargo clippy -p pikachat-sidecar -- -D warnings",
                    execution=APPLE_HOST,
                    timeout_secs=DEFAULT_TIMEOUT_SECS,
                ),
                Lane(
                    id="pikachat-ui-e2e-local-desktop",
                    description="the desktop local UI end-to-end selector on the Apple host",
                    command="./scripts/apple-host-record-phase "
                    "pikachat-followup.pikachat-ui-e2e-local-desktop rust-prepared -- "
                    "cargo test -p pikahut --test integration_deterministic "
                    "ui_e2e_local_desktop -- --ignored --nocapture",
                    execution=APPLE_HOST,
                    timeout_secs=DEFAULT_TIMEOUT_SECS,
                ),
                Lane(
                    id="pikachat-openclaw-channel-behavior",
                    description="the OpenClaw channel-behavior TypeScript test on the Apple host",
                    command="./scripts/apple-host-record-phase "
                    "pikachat-followup.pikachat-openclaw-channel-behavior js-live -- "
                    "npx --yes tsx --test pikachat-openclaw/openclaw/extensions/"
                    "pikachat-openclaw/src/channel-behavior.test.ts",
                    execution=APPLE_HOST,
                    timeout_secs=DEFAULT_TIMEOUT_SECS,
                ),
            ],
        ),
    ]
)

_ALIAS = (
    "single-job alias of the lane of the same id; pikaci refuses a lane id in two targets, and "
    "`doit run lane:{0}` already runs that one lane with its payloads"
)
# The reference's targets this catalog does not declare, and why.
LEFT_OUT: Tuple[Tuple[str, str], ...] = (
    *(
        (alias, _ALIAS.format(alias))
        for alias in (
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
        )
    ),
    (
        "agent-contracts-smoke",
        "the three lanes of pre-merge-agent-contracts under a second target; pikaci refuses a "
        "lane id in two targets, and `doit run target:pre-merge-agent-contracts` runs them",
    ),
    *(
        (tart, "macOS guests under Tart: runtime `tart` is not supported yet (a later change)")
        for tart in (
            "tart-beachhead",
            "tart-env-probe",
            "tart-ios-agent-button-state-test",
            "tart-ios-unit-tests",
            "tart-ios-ui-test",
            "tart-ios-ui-note-to-self",
            "tart-desktop-package-tests",
            "pre-merge-apple-deterministic",
        )
    ),
    *(
        (
            android,
            "needs a writable workspace in its Incus guest; pikaci's Incus guests mount the "
            "snapshot read-only and a lane cannot ask for more (broken in the reference too)",
        )
        for android in ("android-sdk-probe", "android-nostr-connect-intent-test")
    ),
)

DOIT_CONFIG, task_pikaci = declare(CATALOG, __file__)


def task_check_invariants() -> Dict[str, Any]:
    """check invariants/invariants.toml with pikaci's checker (never run by plain `doit`)"""
    root = Path(__file__).resolve().parent
    # the checker of the pikaci checkout this example lives in
    script = Path(__file__).resolve().parents[2] / "scripts" / "check_invariants.py"
    return {
        "actions": [[sys.executable, str(script), "--root", str(root)]],
        "verbosity": 2,
        "uptodate": [False],
    }
