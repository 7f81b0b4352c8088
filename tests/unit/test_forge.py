"""`ci/forge-lanes.toml`: loading, the forge's glob semantics, selection and change sets (the
entry points through doit and the console script: `tests/integration/test_forge.py`)."""

from __future__ import annotations

import textwrap

import orjson
import pytest

from pikaci.forge.changes import ChangeSet, ChangeSetError, changed_paths
from pikaci.forge.globs import compile_glob
from pikaci.forge.manifest import (
    MANIFEST_PATH,
    ForgeManifestError,
    filters_for_target,
    load_manifest,
    parse_manifest,
    staged_command,
)
from pikaci.forge.selection import select_branch, select_nightly
from tests.fixtures.projects import new_repository
from tests.fixtures.support import git

RUST_PATHS = (
    '["crates/**", "Cargo.toml", "Cargo.lock", "nix/ci/linux-rust.nix", "ci/forge-lanes.toml"]'
)


def staged(lane_id: str, target: str, paths: str) -> str:
    return textwrap.dedent(
        f"""\
        [[branch.lanes]]
        id = "{lane_id}"
        title = "check-{lane_id.replace("_", "-")}"
        staged_linux_target = "{target}"
        paths = {paths}
        """
    )


def command_lane(section: str, lane_id: str, command: str, paths: str, group: str = "") -> str:
    extra = f'concurrency_group = "{group}"\n' if group else ""
    return (
        f"[[{section}.lanes]]\n"
        f'id = "{lane_id}"\n'
        f'title = "{lane_id}"\n'
        f"entrypoint = {orjson.dumps(' '.join(orjson.loads(command))).decode()}\n"
        f"command = {command}\n"
        f"paths = {paths}\n" + extra
    )


# modelled on the forge's own manifest: ten staged/command lanes plus two more, five nightly
UPSTREAM = "\n".join(
    [
        'version = 1\nnightly_schedule_utc = "08:00"\n',
        staged("pika_rust", "pre-merge-pika-rust", RUST_PATHS),
        staged(
            "pika_followup",
            "pre-merge-pika-followup",
            '["android/**", "crates/pikachat/**", ".github/workflows/*.yml", "docs/**/*.md", '
            '"{Cargo.toml,Cargo.lock}", "ci/forge-lanes.toml"]',
        ),
        staged(
            "notifications",
            "pre-merge-notifications",
            '["crates/pika-server/**", "ci/forge-lanes.toml"]',
        ),
        staged(
            "agent_contracts",
            "pre-merge-agent-contracts",
            '["crates/pika-cloud/**", "crates/pika-agent-*/**", "ci/forge-lanes.toml"]',
        ),
        staged("rmp", "pre-merge-rmp", '["rmp/**", "crates/rmp-*/**", "ci/forge-lanes.toml"]'),
        staged(
            "pikachat", "pre-merge-pikachat-rust", '["crates/pikachat*/**", "ci/forge-lanes.toml"]'
        ),
        staged(
            "pikachat_typescript",
            "pre-merge-pikachat-typescript",
            '["pikachat-openclaw/**/*.{ts,tsx,json}", "ci/forge-lanes.toml"]',
        ),
        command_lane(
            "branch",
            "apple_host_sanity",
            '["./scripts/pikaci-apple-github-step", "remote-run", "--just-recipe", '
            '"apple-host-sanity"]',
            '["ios/**", "crates/pika-desktop/**", "ci/forge-lanes.toml"]',
            "apple-host",
        ),
        staged(
            "pikachat_openclaw_e2e",
            "pre-merge-pikachat-openclaw-e2e",
            '["pikachat-openclaw/**", "ci/forge-lanes.toml"]',
        ),
        staged("fixture", "pre-merge-fixture-rust", '["crates/pikahut/**", "ci/forge-lanes.toml"]'),
        command_lane(
            "branch", "docs_links", '["just", "docs-check"]', '["**/*.md", "ci/forge-lanes.toml"]'
        ),
        command_lane("branch", "sanity", '["just", "sanity"]', "[]"),
        command_lane(
            "nightly",
            "nightly_linux",
            '["nix", "develop", ".#default", "-c", "just", "rmp_tools::rmp-nightly-linux"]',
            "[]",
        ),
        command_lane(
            "nightly",
            "nightly_pika",
            '["nix", "develop", ".#default", "-c", "just", "checks::nightly-pika-e2e"]',
            "[]",
        ),
        command_lane(
            "nightly",
            "nightly_pikachat",
            '["nix", "develop", ".#default", "-c", "just", "checks::nightly-pikachat"]',
            "[]",
        ),
        command_lane(
            "nightly",
            "nightly_pika_ui_android",
            '["./scripts/forge-nightly-pika-ui-android.sh"]',
            "[]",
            "nightly-android",
        ),
        command_lane(
            "nightly",
            "nightly_apple_host_bundle",
            '["./scripts/pikaci-apple-github-step", "remote-run", "--just-recipe", '
            '"apple-host-bundle"]',
            "[]",
            "apple-host",
        ),
    ]
)


@pytest.fixture
def upstream(tmp_path):
    path = tmp_path / "forge-lanes.toml"
    path.write_text(UPSTREAM)
    return load_manifest(path, MANIFEST_PATH)


def test_upstream_manifest_loads_with_normalisation(upstream):
    assert upstream.version == 1 and upstream.nightly_schedule_utc == "08:00"
    assert len(upstream.branch_lanes) == 12 and len(upstream.nightly_lanes) == 5
    rust = upstream.branch_lanes[0]
    assert rust.id == "pika_rust" and rust.title == "check-pika-rust"
    assert rust.command == staged_command("pre-merge-pika-rust")
    assert rust.command == ("./scripts/pikaci-staged-linux-remote.sh", "run", "pre-merge-pika-rust")
    assert rust.entrypoint == "./scripts/pikaci-staged-linux-remote.sh run pre-merge-pika-rust"
    assert rust.concurrency_group == "staged-linux:pre-merge-pika-rust"
    apple = next(lane for lane in upstream.branch_lanes if lane.id == "apple_host_sanity")
    assert apple.staged_linux_target is None and apple.concurrency_group == "apple-host"
    assert apple.command[0] == "./scripts/pikaci-apple-github-step"
    assert [lane.id for lane in upstream.nightly_lanes][-1] == "nightly_apple_host_bundle"
    assert filters_for_target(upstream, "pre-merge-notifications") == (
        "crates/pika-server/**",
        "ci/forge-lanes.toml",
    )
    with pytest.raises(ForgeManifestError, match="missing forge lane manifest entry for `nope`"):
        filters_for_target(upstream, "nope")


def test_staged_lane_command_is_forced(tmp_path):
    manifest = parse_manifest(
        {
            "version": 1,
            "nightly_schedule_utc": "08:00",
            "branch": {
                "lanes": [
                    {
                        "id": "x",
                        "staged_linux_target": "t",
                        "command": ["something", "else"],
                        "entrypoint": "custom",
                        "concurrency_group": "g",
                    }
                ]
            },
        }
    )
    (lane,) = manifest.branch_lanes
    assert lane.command == staged_command("t")
    assert (lane.entrypoint, lane.concurrency_group) == ("custom", "g")
    assert manifest.nightly_lanes == ()


BASE = 'version = 1\nnightly_schedule_utc = "08:00"\n'


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("", None),
        (
            "version = 2\n" + BASE.split("\n", 1)[1],
            "ci/forge-lanes.toml: key `version` must be 1, got 2",
        ),
        ("version = 1\n", 'key `nightly_schedule_utc` must be "HH:MM" (UTC), got None'),
        ('version = 1\nnightly_schedule_utc = "8am"\n', "got '8am'"),
        (BASE + "branch = 3\n", "ci/forge-lanes.toml: key `branch` must be a table"),
        (BASE + "[branch]\nlanes = 1\n", "key `branch.lanes` must be an array of tables"),
        (
            BASE + '[[branch.lanes]]\ntitle = "x"\ncommand = ["a"]\n',
            "ci/forge-lanes.toml: branch.lanes[0]: key `id` must be a non-empty string",
        ),
        (
            BASE + '[[branch.lanes]]\nid = "x"\ncommand = ["a"]\npaths = "src/**"\n',
            "ci/forge-lanes.toml: branch lane `x`: key `paths` must be a list of strings",
        ),
        (
            BASE + '[[branch.lanes]]\nid = "x"\ncommand = ["a"]\npaths = [1]\n',
            "branch lane `x`: key `paths` must be a list of strings",
        ),
        (
            BASE + '[[nightly.lanes]]\nid = "n"\ncommand = "make"\n',
            "ci/forge-lanes.toml: nightly lane `n`: key `command` must be a list of strings",
        ),
        (
            BASE + '[[branch.lanes]]\nid = "x"\ntitle = 3\ncommand = ["a"]\n',
            "branch lane `x`: key `title` must be a string",
        ),
        (
            BASE + '[[branch.lanes]]\nid = "x"\ntitle = "x"\n',
            "branch lane `x`: needs `staged_linux_target` or a non-empty `command`",
        ),
        (
            BASE + '[[branch.lanes]]\nid = "x"\ncommand = []\n',
            "branch lane `x`: needs `staged_linux_target` or a non-empty `command`",
        ),
        (
            BASE + '[[branch.lanes]]\nid = "x"\ncommand = ["a"]\n[[branch.lanes]]\nid = "x"\n'
            'command = ["b"]\n',
            "ci/forge-lanes.toml: branch lane `x`: duplicate lane id (branch.lanes[0] and [1])",
        ),
        (
            BASE + '[[branch.lanes]]\nid = "a"\nstaged_linux_target = "t"\n'
            '[[branch.lanes]]\nid = "b"\nstaged_linux_target = "t"\n',
            "branch lane `b`: key `staged_linux_target`: `t` is already the target of lane `a`",
        ),
        (
            BASE + '[[branch.lanes]]\nid = "a"\nstaged_linux_target = "a/b"\n',
            "branch lane `a`: key `staged_linux_target` must be a target id",
        ),
        (
            BASE + '[[branch.lanes]]\nid = "a"\ncommand = ["x"]\npath = ["src/**"]\n',
            "branch lane `a`: unknown key `path`",
        ),
        (
            BASE + '[[branch.lanes]]\nid = "a"\ncommand = ["x"]\npaths = ["{src,lib"]\n',
            "branch lane `a`: key `paths`: invalid glob '{src,lib': unclosed alternate group",
        ),
        (BASE + "[[branch.lanes]\n", "ci/forge-lanes.toml: invalid TOML"),
    ],
)
def test_manifest_errors(tmp_path, body, message):
    path = tmp_path / "forge-lanes.toml"
    path.write_text(body)
    with pytest.raises(ForgeManifestError) as caught:
        load_manifest(path, MANIFEST_PATH)
    text = str(caught.value)
    assert "\n" not in text and text.startswith("ci/forge-lanes.toml: ")
    if message is not None:
        assert message in text


def test_missing_manifest(tmp_path):
    with pytest.raises(ForgeManifestError, match=r"ci/forge-lanes.toml: no such file"):
        load_manifest(tmp_path / "absent.toml", MANIFEST_PATH)


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        # `*` crosses `/`, and the whole path must match
        ("*.rs", "main.rs", True),
        ("*.rs", "crates/a/src/lib.rs", True),
        ("*.rs", "Cargo.toml", False),
        ("crates/*", "crates/a/b/c.rs", True),
        ("src", "src/a.rs", False),
        ("src/a.rs", "x/src/a.rs", False),
        ("Cargo.toml", "crates/x/Cargo.toml", False),
        # `**` at the start, in the middle, at the end, alone and elsewhere
        ("**/Cargo.toml", "Cargo.toml", True),
        ("**/Cargo.toml", "crates/x/Cargo.toml", True),
        ("**/Cargo.toml", "Cargo.toml/x", False),
        ("crates/**/lib.rs", "crates/lib.rs", True),
        ("crates/**/lib.rs", "crates/a/b/lib.rs", True),
        ("crates/**/lib.rs", "crates/a/b/lib.rsx", False),
        ("crates/**", "crates/a", True),
        ("crates/**", "crates/a/b/c", True),
        ("crates/**", "crates", False),
        ("crates/**", "cratesx/a", False),
        ("**", "any/thing/at/all", True),
        ("crates/a**", "crates/ab/c", True),
        # `?`, classes, negated classes, ranges
        ("src/?.rs", "src/a.rs", True),
        ("src/?.rs", "src/ab.rs", False),
        ("a?b", "a/b", True),
        ("[abc].md", "b.md", True),
        ("[abc].md", "d.md", False),
        ("[!a].md", "a.md", False),
        ("[!a].md", "b.md", True),
        ("[^a].md", "b.md", True),
        ("v[0-9].txt", "v7.txt", True),
        ("v[0-9].txt", "vx.txt", False),
        ("[]]", "]", True),
        ("[*]", "*", True),
        ("[*]", "a", False),
        # braces, nested braces
        ("{Cargo.toml,Cargo.lock}", "Cargo.lock", True),
        ("{Cargo.toml,Cargo.lock}", "Cargo.nix", False),
        ("src/**/*.{ts,tsx}", "src/a/b.tsx", True),
        ("src/**/*.{ts,tsx}", "src/a/b.js", False),
        ("{a,{b,c}d}/x", "cd/x", True),
        ("{a,{b,c}d}/x", "a/x", True),
        ("{a,{b,c}d}/x", "c/x", False),
        ("a,b", "a,b", True),
        # case-sensitive; special characters are literal; `\` escapes
        ("README.md", "readme.md", False),
        ("*.MD", "a.md", False),
        ("a+b(1).txt", "a+b(1).txt", True),
        ("a.b", "axb", False),
        ("$x^", "$x^", True),
        ("\\*.rs", "*.rs", True),
        ("\\*.rs", "a.rs", False),
        ("\\{a\\}", "{a}", True),
    ],
)
def test_glob_semantics(pattern, path, expected):
    assert bool(compile_glob(pattern).match(path)) is expected


@pytest.mark.parametrize("pattern", ["{a", "a}", "[ab", "x\\", "[z-a]"])
def test_invalid_globs(pattern):
    with pytest.raises(ValueError, match="invalid glob"):
        compile_glob(pattern)


def selected(manifest, paths):
    return {
        s.lane.id: s
        for s in select_branch(manifest, ChangeSet(paths=tuple(sorted(paths))))
        if s.selected
    }


def test_selection_for_realistic_changes(upstream):
    chosen = selected(upstream, ["crates/pika-server/src/push.rs"])
    # pika_rust (crates/**) and the lane without paths come along
    assert sorted(chosen) == ["notifications", "pika_rust", "sanity"]
    assert (
        chosen["notifications"].reason
        == "crates/pika-server/src/push.rs matches crates/pika-server/**"
    )
    assert chosen["sanity"].reason == "no paths: always"

    chosen = selected(upstream, ["pikachat-openclaw/src/deep/gateway.tsx"])
    assert sorted(chosen) == ["pikachat_openclaw_e2e", "pikachat_typescript", "sanity"]

    chosen = selected(upstream, ["docs/guide/setup.md"])
    assert sorted(chosen) == ["docs_links", "pika_followup", "sanity"]
    assert chosen["pika_followup"].matched_pattern == "docs/**/*.md"

    chosen = selected(upstream, ["Cargo.lock"])
    assert sorted(chosen) == ["pika_followup", "pika_rust", "sanity"]

    skipped = [
        s for s in select_branch(upstream, ChangeSet(paths=("ios/App.swift",))) if not s.selected
    ]
    assert "apple_host_sanity" not in [s.lane.id for s in skipped]
    rmp = next(s for s in skipped if s.lane.id == "rmp")
    assert rmp.reason == (
        "no changed path matches (patterns: rmp/**, crates/rmp-*/**, ci/forge-lanes.toml)"
    )
    assert rmp.line() == f"SKIPPED rmp (target:pre-merge-rmp): {rmp.reason}"


def test_manifest_change_empty_set_and_no_information_select_everything(upstream):
    every = [lane.id for lane in upstream.branch_lanes]
    for changes, reason in [
        (
            ChangeSet(paths=("ci/forge-lanes.toml", "README")),
            "ci/forge-lanes.toml changed: every branch lane",
        ),
        (ChangeSet(paths=()), "no changed paths: every branch lane"),
        (
            ChangeSet(paths=(), known=False),
            "no change information (no base, clean working tree): every branch lane",
        ),
    ]:
        selections = select_branch(upstream, changes)
        assert [s.lane.id for s in selections if s.selected] == every
        assert {s.reason for s in selections} == {reason}
    assert [s.lane.id for s in select_nightly(upstream)] == [
        lane.id for lane in upstream.nightly_lanes
    ]


# -- changed paths from git --------------------------------------------------------------------


@pytest.fixture
def repo(tmp_path):
    return new_repository(tmp_path / "repo", tmp_path / "state", {"README.md": "r\n"})


def test_changed_paths_from_the_merge_base(repo):
    root = repo.root
    git(root, "checkout", "-q", "-b", "feature")
    repo.write("crates/a/lib.rs", "fn main() {}\n")
    repo.commit("feature work")
    git(root, "checkout", "-q", "main")
    repo.write("docs/only-on-main.md", "x\n")  # after the fork: not the feature's change
    repo.commit("main moves on")
    git(root, "checkout", "-q", "feature")
    changes = changed_paths(root, "main")
    assert changes.paths == ("crates/a/lib.rs",)
    assert changes.known and changes.merge_base == git(root, "merge-base", "main", "HEAD").strip()
    assert "merge base with main" in changes.source

    # working tree: modified and untracked files, ignored ones left out
    repo.write(".gitignore", "*.log\n")
    repo.write("README.md", "changed\n")
    repo.write("new/file.txt", "n\n")
    repo.write("noise.log", "n\n")
    changes = changed_paths(root, "main", include_worktree=True)
    assert changes.paths == (".gitignore", "README.md", "crates/a/lib.rs", "new/file.txt")

    only_tree = changed_paths(root, None, include_worktree=True)
    assert only_tree.known and "crates/a/lib.rs" not in only_tree.paths


def test_changed_paths_edge_cases(repo):
    root = repo.root
    same = changed_paths(root, "main")
    assert same.known and same.paths == ()  # base == HEAD: empty set, every lane (forge rule)
    clean = changed_paths(root, None, include_worktree=True)
    assert not clean.known and clean.paths == ()
    assert not changed_paths(root, None).known
    with pytest.raises(ChangeSetError, match="base `nope` does not name a commit"):
        changed_paths(root, "nope")
    # unrelated history: no merge base, so every file at HEAD counts as changed
    git(root, "checkout", "-q", "--orphan", "other")
    git(root, "rm", "-rq", "--cached", ".")
    repo.write("other.txt", "o\n")
    git(root, "add", "other.txt")
    git(root, "commit", "-q", "-m", "other")
    git(root, "checkout", "-q", "-f", "main")
    unrelated = changed_paths(root, "other")
    assert unrelated.merge_base is None
    assert set(unrelated.paths) >= {"README.md", "src/hello.txt"}
