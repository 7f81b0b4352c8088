"""`pikaci pin` and `doit pin_sources` against local git repositories: the hash is the one
nix-prefetch-git computes (a checkout without .git, hashed as a NAR), a pin is refreshed only
when its ref moved, and bad input is one line naming the file, field or argument."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Dict

import orjson
import pytest

from tests.fixtures.projects import LaneSpec
from tests.fixtures.support import git


def upstream_repo(root: Path) -> Path:
    """A source with the things a naive hash gets wrong: a symlink, an executable, and a file
    `git archive` would drop (export-ignore)."""
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / "lib").mkdir()
    (root / "lib" / "default.nix").write_text("{ }: { }\n")
    (root / "build.sh").write_text("#!/bin/sh\necho build\n")
    (root / "build.sh").chmod(0o755)
    (root / "link").symlink_to("lib/default.nix")
    (root / ".gitattributes").write_text("build.sh export-ignore\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "one")
    return root


def nar_hash_of_a_clone(url: str, rev: str, scratch: Path) -> str:
    """What nix-prefetch-git does: clone, check out the revision, drop .git, nix-hash."""
    clone = scratch / "clone"
    subprocess.run(["git", "clone", "-q", url, str(clone)], check=True)
    git(clone, "checkout", "-q", rev)
    shutil.rmtree(clone / ".git")
    done = subprocess.run(
        ["nix-hash", "--type", "sha256", "--base32", str(clone)],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def head(repo: Path) -> str:
    return git(repo, "rev-parse", "HEAD").strip()


@pytest.fixture
def pinned(make_project, tmp_path):
    project = make_project([LaneSpec("a", "true")])
    upstream = upstream_repo(tmp_path / "upstream")
    return project, upstream


def pins_of(project) -> Dict[str, Dict[str, object]]:
    return orjson.loads((project.root / "nix" / "pins.json").read_bytes())["pins"]


def test_a_pin_records_what_nix_prefetch_git_would(pinned, tmp_path) -> None:
    project, upstream = pinned
    done = project.pikaci("pin", "add", "lib", str(upstream), "--ref", "main")
    assert done.returncode == 0, done.stderr
    pin = pins_of(project)["lib"]
    assert pin["ref"] == "main" and pin["rev"] == head(upstream) and pin["url"] == str(upstream)
    assert pin["sha256"] == nar_hash_of_a_clone(str(upstream), head(upstream), tmp_path)
    assert str(pin["hash"]).startswith("sha256-") and pin["fetchSubmodules"] is False
    assert pin["date"]
    # a file:// URL of the same revision gives the same hash
    again = project.pikaci("pin", "add", "lib2", f"file://{upstream}", "--ref", "main")
    assert again.returncode == 0, again.stderr
    assert pins_of(project)["lib2"]["sha256"] == pin["sha256"]


def test_update_refetches_only_what_moved(pinned) -> None:
    project, upstream = pinned
    assert project.pikaci("pin", "add", "lib", str(upstream), "--ref", "main").returncode == 0
    fixed = head(upstream)
    assert project.pikaci("pin", "add", "fixed", str(upstream), "--ref", fixed).returncode == 0
    check = project.pikaci("pin", "check")
    assert check.returncode == 0 and check.stdout.count("up to date") == 2
    before = pins_of(project)
    (upstream / "lib" / "default.nix").write_text("{ }: { changed = true; }\n")
    git(upstream, "commit", "-q", "-am", "two")
    check = project.pikaci("pin", "check")
    assert check.returncode == 1
    assert f"lib: moved {fixed[:12]} -> {head(upstream)[:12]}" in check.stdout
    assert f"fixed: up to date at {fixed[:12]}" in check.stdout  # a revision never moves
    update = project.pikaci("pin", "update")
    assert update.returncode == 0, update.stderr
    after = pins_of(project)
    assert (
        after["lib"]["rev"] == head(upstream) and after["lib"]["sha256"] != before["lib"]["sha256"]
    )
    assert after["fixed"] == before["fixed"]
    assert project.pikaci("pin", "check").returncode == 0


def test_the_doit_task_is_up_to_date_while_no_ref_moved(pinned) -> None:
    project, upstream = pinned
    nothing = project.doit("pin_sources")
    assert nothing.returncode == 0 and "no nix/pins.json" in nothing.stdout
    assert project.pikaci("pin", "add", "lib", str(upstream), "--ref", "main").returncode == 0
    first = project.doit("pin_sources")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "-- pin_sources" in first.stdout  # nothing moved since the pin was added
    git(upstream, "commit", "-q", "--allow-empty", "-m", "moved")
    moved = project.doit("pin_sources")
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert ".  pin_sources" in moved.stdout and "lib: moved" in moved.stdout
    assert pins_of(project)["lib"]["rev"] == head(upstream)
    plain = project.doit("run")
    assert "pin_sources" not in plain.stdout  # never run by plain doit


def test_bad_input_is_one_line(pinned) -> None:
    project, upstream = pinned
    gone = project.pikaci("pin", "add", "x", str(upstream), "--ref", "no-such-branch")
    assert gone.returncode == 1
    assert gone.stderr == f"pikaci: error: ref `no-such-branch` not found at {upstream}\n"
    bad_name = project.pikaci("pin", "add", "../x", str(upstream))
    assert bad_name.returncode == 1 and "pin name '../x'" in bad_name.stderr
    nowhere = project.pikaci("pin", "add", "x", str(upstream.parent / "missing"))
    assert nowhere.returncode == 1 and nowhere.stderr.startswith("pikaci: error: git ls-remote")
    assert len(nowhere.stderr.splitlines()) == 1
    missing = project.pikaci("pin", "update", "nope")
    assert missing.returncode == 1 and "no pin named nope" in missing.stderr
    pins = project.root / "nix" / "pins.json"
    assert not pins.exists()  # nothing failed half-way into the file
    pins.parent.mkdir()
    pins.write_text('{"version": 1, "pins": {"lib": {"url": "u", "ref": "main", "rev": "abc"}}}')
    corrupt = project.pikaci("pin", "check")
    assert corrupt.returncode == 1
    assert corrupt.stderr == (
        "pikaci: error: nix/pins.json: pin `lib`: field `sha256`: expected a non-empty string\n"
    )


def test_nix_prefetch_git_is_used_when_it_is_on_path(pinned, tmp_path) -> None:
    """nix-prefetch-git is not packaged for this machine: a stand-in on PATH checks the exact
    argv pikaci passes and answers in its format; the real one prints the same fields."""
    project, upstream = pinned
    bindir = tmp_path / "bin"
    bindir.mkdir()
    rev = head(upstream)
    script = bindir / "nix-prefetch-git"
    script.write_text(
        "#!/bin/sh\n"
        f'[ "$*" = "--url {upstream} --rev {rev} --quiet" ] || {{ echo "argv: $*" >&2; exit 9; }}\n'
        f'echo \'{{"url": "{upstream}", "rev": "{rev}", "date": "2026-01-01T00:00:00+00:00", '
        '"path": "/nix/store/x-src", "sha256": "0000000000000000000000000000000000000000000000000000", '
        '"hash": "sha256-AAAA", "fetchLFS": false, "fetchSubmodules": false, "deepClone": false, '
        '"leaveDotGit": false}\'\n'
    )
    script.chmod(0o755)
    env = {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    done = project.pikaci("pin", "add", "lib", str(upstream), "--ref", "main", env=env)
    assert done.returncode == 0, done.stderr
    pin = pins_of(project)["lib"]
    assert pin["path"] == "/nix/store/x-src" and pin["sha256"].startswith("0000")
