"""`pikaci staged-linux-target-info` over the example monorepo catalog (examples/pika): the
reference's JSON object and human lines, and one-line errors."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from pikaci.staged_info import single_quoted
from tests.fixtures.support import PIKACI, REPO_ROOT

DODO = REPO_ROOT / "examples" / "pika" / "dodo.py"


def info(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PIKACI, "-f", str(DODO), "staged-linux-target-info", *args],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PIKACI_STATE_ROOT": str(tmp_path / "state")},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_staged_target_as_json_and_as_lines(tmp_path: Path) -> None:
    done = info(tmp_path, "pre-merge-pikachat-typescript", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "target_id": "pre-merge-pikachat-typescript",
        "target_description": json.loads(done.stdout)["target_description"],
        "shared_prepare_node_prefix": "pikachat-linux-rust",  # shared with pikachat-rust
        "shared_prepare_description": "staged payloads `pikachat-linux-rust`",
        "workspace_deps_output_name": "ci.x86_64-linux.pikachatWorkspaceDeps",
        "workspace_build_output_name": "ci.x86_64-linux.pikachatWorkspaceBuild",
        "workspace_output_system": "x86_64-linux",
        "workspace_deps_installable": ".#ci.x86_64-linux.pikachatWorkspaceDeps",
        "workspace_build_installable": ".#ci.x86_64-linux.pikachatWorkspaceBuild",
        "shadow_recipe": None,
    }
    lines = info(tmp_path, "pre-merge-pika-rust").stdout.splitlines()
    assert lines[0] == "target_id=pre-merge-pika-rust"
    assert lines[1].startswith("target_description='") and lines[1].endswith("'")
    assert lines[2:] == [
        "payload_workspace-deps_installable=.#ci.x86_64-linux.workspaceDeps",
        "payload_workspace-build_installable=.#ci.x86_64-linux.workspaceBuild",
        "shadow_recipe=''",
    ]


def test_errors_are_one_line(tmp_path: Path) -> None:
    unknown = info(tmp_path, "nope")
    assert (unknown.returncode, unknown.stderr) == (1, "pikaci: error: unknown target `nope`\n")
    plain = info(tmp_path, "pre-merge-pikachat-apple-followup")
    assert plain.returncode == 1
    assert plain.stderr == (
        "pikaci: error: target `pre-merge-pikachat-apple-followup` has no staged payloads\n"
    )


def test_a_description_with_quotes_reads_back_in_a_shell() -> None:
    text = 'it\'s `$(not run)` "quoted"'
    done = subprocess.run(
        ["sh", "-c", f'x={single_quoted(text)}; printf %s "$x"'], capture_output=True, text=True
    )
    assert done.stdout == text
