from __future__ import annotations

import hashlib
import multiprocessing
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any, List, Tuple

import orjson
import pytest

from pikaci.git import GitState, git_state
from pikaci.snapshot import (
    SNAPSHOT_METADATA_FILE,
    SnapshotError,
    SnapshotFilter,
    SnapshotMetadata,
    content_hash,
    create_snapshot,
    read_metadata,
    source_fingerprint,
)

NO_FILTER = SnapshotFilter()


@pytest.fixture(autouse=True)
def _isolated_git(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The developer's global git config (excludesFile, hooks) must not leak into results.
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Test")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "test@example.invalid")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "Test")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "test@example.invalid")
    monkeypatch.setenv("HOME", str(tmp_path))


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(repo), "-c", "init.defaultBranch=main", *args],
        check=True,
        capture_output=True,
    )
    return out.stdout.decode()


def write(path: Path, text: str = "x\n", mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def init_repo(repo: Path) -> Path:
    repo.mkdir(parents=True, exist_ok=True)
    git(repo, "init", "-q")
    return repo


def commit_all(repo: Path, message: str = "commit") -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)


def tree_listing(root: Path) -> List[str]:
    """Every path under root, symlinks not followed, as sorted relative POSIX strings."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            found.append(Path(dirpath, name).relative_to(root).as_posix())
    return sorted(found)


def reference_hash(root: Path) -> str:
    """Straightforward, independent re-statement of the content hash contract."""
    digest = hashlib.sha256()

    def visit(directory: Path, prefix: str) -> None:
        for name in sorted(os.listdir(directory)):
            if not prefix and name == SNAPSHOT_METADATA_FILE:
                continue
            path = directory / name
            rel = (prefix + name).encode()
            if path.is_symlink():
                digest.update(b"symlink\0" + rel + b"\0" + os.readlink(path).encode() + b"\0")
            elif path.is_dir():
                digest.update(b"dir\0" + rel + b"\0")
                visit(path, prefix + name + "/")
            else:
                digest.update(b"file\0" + rel + b"\0" + path.read_bytes() + b"\0")

    visit(root, "")
    return digest.hexdigest()


def tmp_leftovers(store: Path) -> List[str]:
    return [p.name for p in store.iterdir() if p.name.startswith(".tmp-")]


# --- filter -------------------------------------------------------------------------


def test_filter_fixed_names() -> None:
    filt = SnapshotFilter()
    for name in (".git", ".pikaci", ".direnv", "target"):
        assert filt.skips(name, name, 0)
        assert filt.skips(f"a/b/{name}", name, 2)
    for name in ("node_modules", ".gradle", "DerivedData", "build"):
        assert not filt.skips(name, name, 0)
        assert filt.skips(f"a/{name}", name, 1)
    assert not filt.skips("src", "src", 0)
    assert not filt.skips("Target", "Target", 0)


def test_filter_extra_patterns() -> None:
    filt = SnapshotFilter(("__pycache__", "*.pyc", "/ios", "/docs/build*"))
    assert filt.skips("__pycache__", "__pycache__", 0)
    assert filt.skips("a/b/__pycache__", "__pycache__", 2)
    assert filt.skips("a/m.pyc", "m.pyc", 1)
    assert not filt.skips("a/m.PYC", "m.PYC", 1)  # case-sensitive
    assert filt.skips("ios", "ios", 0)
    assert not filt.skips("app/ios", "ios", 1)  # anchored patterns only match from the root
    assert filt.skips("docs/build-out", "build-out", 1)
    assert not filt.skips("docs", "docs", 0)


def test_snapshot_applies_filter(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for rel in (
        "keep.txt",
        "build/top-level-build-is-kept",
        "node_modules/top-level-kept",
        "target/x",
        ".git/config",
        ".direnv/x",
        ".pikaci/x",
        "app/build/x",
        "app/node_modules/x",
        "app/.gradle/x",
        "app/DerivedData/x",
        "app/target/x",
        "app/.git",
        "app/ios/kept",
        "app/__pycache__/m.pyc",
        "app/m.pyc",
        "ios/dropped",
        "docs/build/dropped",
        "docs/keep.md",
    ):
        write(src / rel)
    filt = SnapshotFilter(("__pycache__", "*.pyc", "/ios", "/docs/build"))
    meta = create_snapshot(src, tmp_path / "store", filt)
    assert tree_listing(Path(meta.snapshot_dir)) == [
        "app",
        "app/ios",
        "app/ios/kept",
        "build",
        "build/top-level-build-is-kept",
        "docs",
        "docs/keep.md",
        "keep.txt",
        "node_modules",
        "node_modules/top-level-kept",
        SNAPSHOT_METADATA_FILE,
    ]


@pytest.mark.parametrize("bad", ["", "a/b", "/", "/a/../b", "..", "a\0b", "/ios/"])
def test_filter_rejects_bad_patterns(bad: str) -> None:
    with pytest.raises(ValueError, match="pattern"):
        SnapshotFilter((bad,))


def test_filter_key_is_stable() -> None:
    a = SnapshotFilter(("*.pyc", "/ios"))
    assert a.key() == SnapshotFilter(("/ios", "*.pyc", "/ios")).key()
    assert a.key() != SnapshotFilter(("*.pyc",)).key()
    assert SnapshotFilter().key() != a.key()
    assert a.key().startswith("v1:")


# --- copy fidelity ------------------------------------------------------------------


def test_symlinks_are_copied_verbatim(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "real/file.txt", "content\n")
    (src / "rel").symlink_to("real/file.txt")
    (src / "dotted").symlink_to("./real//file.txt")
    (src / "dangling").symlink_to("does/not/exist")
    (src / "dirlink").symlink_to("real")
    (src / "abs").symlink_to("/etc/hostname-does-not-matter")
    meta = create_snapshot(src, tmp_path / "store", NO_FILTER)
    snap = Path(meta.snapshot_dir)
    expected = {
        "rel": "real/file.txt",
        "dotted": "./real//file.txt",
        "dangling": "does/not/exist",
        "dirlink": "real",
        "abs": "/etc/hostname-does-not-matter",
    }
    for name, target in expected.items():
        assert (snap / name).is_symlink()
        assert os.readlink(snap / name) == target
    assert "dirlink/file.txt" not in tree_listing(snap)  # never followed


def test_mode_bits_are_preserved(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "run.sh", "#!/bin/sh\n", mode=0o755)
    write(src / "data.txt", mode=0o640)
    write(src / "readonly.txt", mode=0o444)
    snap = Path(create_snapshot(src, tmp_path / "store", NO_FILTER).snapshot_dir)
    assert stat.S_IMODE((snap / "run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((snap / "data.txt").stat().st_mode) == 0o640
    assert stat.S_IMODE((snap / "readonly.txt").stat().st_mode) == 0o444
    assert (snap / "run.sh").read_text() == "#!/bin/sh\n"


def test_fifo_is_an_error_naming_the_path(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "a.txt")
    (src / "sub").mkdir()
    os.mkfifo(src / "sub" / "pipe")
    store = tmp_path / "store"
    with pytest.raises(SnapshotError, match=re.escape(str(src / "sub" / "pipe"))):
        create_snapshot(src, store, NO_FILTER)
    assert list(store.iterdir()) == []  # the temp dir is cleaned up
    # Excluded special files are never looked at.
    create_snapshot(src, store, SnapshotFilter(("pipe",)))


# --- content hash -------------------------------------------------------------------

# Tiny fixed tree: a.txt = "hi\n", d/ (dir), d/l -> ../a.txt
TINY_TREE_STREAM = (
    b"file\0a.txt\0hi\n\0"  # root entries sorted by name: "a.txt" < "d"
    b"dir\0d\0"
    b"symlink\0d/l\0../a.txt\0"
)
TINY_TREE_HASH = "e092e5c535ae64f29aa5b476d2744c559bdb939688fbafc8814a3474d4ca4d12"


def make_tiny_tree(root: Path) -> None:
    write(root / "a.txt", "hi\n")
    (root / "d").mkdir()
    (root / "d" / "l").symlink_to("../a.txt")


def test_content_hash_known_value(tmp_path: Path) -> None:
    assert hashlib.sha256(TINY_TREE_STREAM).hexdigest() == TINY_TREE_HASH
    make_tiny_tree(tmp_path / "tiny")
    assert content_hash(tmp_path / "tiny") == TINY_TREE_HASH
    meta = create_snapshot(tmp_path / "tiny", tmp_path / "store", NO_FILTER)
    assert meta.content_hash == TINY_TREE_HASH
    assert meta.tree_id is not None and meta.tree_id.startswith(TINY_TREE_HASH + "-")
    assert Path(meta.snapshot_dir) == (tmp_path / "store" / meta.tree_id).resolve()


def test_content_hash_matches_reference(tmp_path: Path) -> None:
    src = tmp_path / "src"
    # Mixed case and punctuation pin the sort order ("B" < "_" < "a" by code point).
    for rel in ("B.txt", "_x", "a/z", "a/B", "a/nested/deep.bin", "a-b", "a.b"):
        write(src / rel, f"data for {rel}\n")
    (src / "empty-dir").mkdir()
    (src / "a" / "link").symlink_to("../B.txt")
    (src / "dangling").symlink_to("nowhere")
    write(src / "a" / SNAPSHOT_METADATA_FILE, "nested metadata-named files are content\n")
    meta = create_snapshot(src, tmp_path / "store", NO_FILTER)
    snap = Path(meta.snapshot_dir)
    assert meta.content_hash == reference_hash(snap) == content_hash(snap)
    assert content_hash(src) == meta.content_hash


def test_metadata_file_is_excluded_from_hash(tmp_path: Path) -> None:
    make_tiny_tree(tmp_path / "tiny")
    write(tmp_path / "tiny" / SNAPSHOT_METADATA_FILE, "{}")
    assert content_hash(tmp_path / "tiny") == TINY_TREE_HASH
    meta = create_snapshot(tmp_path / "tiny", tmp_path / "store", NO_FILTER)
    # The source's root-level file of that name is not copied: the real metadata replaces it.
    assert read_metadata(Path(meta.snapshot_dir)) == meta


# --- metadata -----------------------------------------------------------------------


def test_metadata_file_layout(tmp_path: Path) -> None:
    make_tiny_tree(tmp_path / "tiny")
    state = GitState(head="a" * 40, dirty=True, changed=())
    filt = SnapshotFilter(("*.pyc",))
    meta = create_snapshot(tmp_path / "tiny", tmp_path / "store", filt, state)
    raw = (Path(meta.snapshot_dir) / SNAPSHOT_METADATA_FILE).read_bytes()
    data = orjson.loads(raw)
    assert list(data) == [
        "source_root",
        "snapshot_dir",
        "git_head",
        "git_dirty",
        "created_at",
        "content_hash",
        "filter",
        "schema_version",
        "tree_id",
    ]
    assert raw.startswith(b'{\n  "source_root": ')
    assert data["source_root"] == str((tmp_path / "tiny").resolve())
    assert data["snapshot_dir"] == meta.snapshot_dir
    assert data["git_head"] == "a" * 40
    assert data["git_dirty"] is True
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", data["created_at"])
    assert data["filter"] == filt.key()
    assert data["schema_version"] == 1
    assert SnapshotMetadata.from_dict(data) == meta


def test_metadata_without_git(tmp_path: Path) -> None:
    make_tiny_tree(tmp_path / "tiny")
    meta = create_snapshot(tmp_path / "tiny", tmp_path / "store", NO_FILTER)
    assert meta.git_head is None
    assert meta.git_dirty is False


def test_metadata_from_dict_is_tolerant() -> None:
    meta = SnapshotMetadata.from_dict({"content_hash": "abc", "unknown": [1, 2], "git_dirty": None})
    assert meta.content_hash == "abc"
    assert meta.git_head is None
    assert meta.git_dirty is False
    with pytest.raises(ValueError, match="content_hash"):
        SnapshotMetadata.from_dict({"source_root": "/x"})
    with pytest.raises(ValueError, match="git_dirty"):
        SnapshotMetadata.from_dict({"content_hash": "abc", "git_dirty": "yes"})


def test_read_metadata(tmp_path: Path) -> None:
    assert read_metadata(tmp_path) is None
    (tmp_path / SNAPSHOT_METADATA_FILE).write_text("{not json")
    with pytest.raises(SnapshotError, match=re.escape(str(tmp_path / SNAPSHOT_METADATA_FILE))):
        read_metadata(tmp_path)
    (tmp_path / SNAPSHOT_METADATA_FILE).write_text('{"source_root": "/x"}')
    with pytest.raises(SnapshotError, match="content_hash"):
        read_metadata(tmp_path)


# --- publishing ---------------------------------------------------------------------


def test_same_tree_publishes_once(tmp_path: Path) -> None:
    make_tiny_tree(tmp_path / "tiny")
    store = tmp_path / "store"
    first = create_snapshot(tmp_path / "tiny", store, NO_FILTER)
    second = create_snapshot(tmp_path / "tiny", store, NO_FILTER, GitState("b" * 40, True, ()))
    assert second == first  # the existing snapshot's own metadata wins
    assert [p.name for p in store.iterdir()] == [first.tree_id]
    write(tmp_path / "tiny" / "new.txt")
    third = create_snapshot(tmp_path / "tiny", store, NO_FILTER)
    assert third.content_hash != first.content_hash
    assert sorted(p.name for p in store.iterdir()) == sorted([first.tree_id, third.tree_id])
    assert tmp_leftovers(store) == []


def test_store_inside_source(tmp_path: Path) -> None:
    make_tiny_tree(tmp_path / "src")
    with pytest.raises(SnapshotError, match="inside the copied source"):
        create_snapshot(tmp_path / "src", tmp_path / "src" / "snaps", NO_FILTER)
    meta = create_snapshot(tmp_path / "src", tmp_path / "src" / ".pikaci" / "snaps", NO_FILTER)
    assert meta.content_hash == TINY_TREE_HASH
    meta = create_snapshot(
        tmp_path / "src", tmp_path / "src" / "snaps", SnapshotFilter(("/snaps",))
    )
    assert meta.content_hash == TINY_TREE_HASH


def _snapshot_worker(src: str, store: str, barrier: Any, results: Any) -> None:
    barrier.wait()
    try:
        meta = create_snapshot(Path(src), Path(store), NO_FILTER)
        results.put(("ok", meta.content_hash))
    except BaseException as exc:  # report everything to the parent
        results.put(("error", repr(exc)))


def test_concurrent_snapshots_of_same_tree(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(150):
        write(src / f"dir{i % 7}" / f"file{i}.txt", f"{i}\n" * 200)
    store = tmp_path / "store"
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(4)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_snapshot_worker, args=(str(src), str(store), barrier, results))
        for _ in range(4)
    ]
    for proc in procs:
        proc.start()
    outcomes: List[Tuple[str, str]] = [results.get(timeout=30) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
    assert [kind for kind, _ in outcomes] == ["ok"] * 4, outcomes
    assert len({digest for _, digest in outcomes}) == 1
    digest = outcomes[0][1]
    (published,) = store.iterdir()
    assert published.name.startswith(digest + "-")
    final = published
    assert content_hash(final) == digest == reference_hash(final)
    assert len(tree_listing(final)) == 150 + 7 + 1


# --- git state ----------------------------------------------------------------------


def test_git_state_outside_git(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    assert git_state(tmp_path / "plain") is None
    assert git_state(tmp_path / "missing") is None
    assert source_fingerprint(tmp_path / "plain", NO_FILTER, None) is None


def test_git_state_without_commits(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo")
    assert git_state(repo) == GitState(head=None, dirty=False, changed=())
    write(repo / "a.txt")
    assert git_state(repo) == GitState(head=None, dirty=True, changed=("a.txt",))


def test_git_state_entries(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo")
    write(repo / ".gitignore", "*.log\nignored-dir/\n")
    write(repo / "old.txt")
    write(repo / "tracked.txt")
    commit_all(repo)
    head = git(repo, "rev-parse", "HEAD").strip()
    assert git_state(repo) == GitState(head=head, dirty=False, changed=())

    write(repo / "x.log")
    write(repo / "ignored-dir" / "a")
    assert git_state(repo) == GitState(head, False, ("ignored-dir/", "x.log"))

    git(repo, "mv", "old.txt", "new.txt")
    write(repo / "tracked.txt", "changed\n")
    write(repo / "untracked-dir" / "f")
    state = git_state(repo)
    assert state == GitState(
        head,
        True,
        ("ignored-dir/", "new.txt", "old.txt", "tracked.txt", "untracked-dir/", "x.log"),
    )


def test_git_state_on_subdirectory(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo")
    write(repo / "sub" / "tracked.txt")
    write(repo / "outside.txt")
    commit_all(repo)
    write(repo / "outside.txt", "changed\n")
    write(repo / "new-outside.txt")
    state = git_state(repo / "sub")
    assert state is not None
    assert (state.dirty, state.changed) == (False, ())

    write(repo / "sub" / "tracked.txt", "changed\n")
    write(repo / "sub" / "deeper" / "new.txt")
    state = git_state(repo / "sub")
    assert state is not None
    assert state.head == git(repo, "rev-parse", "HEAD").strip()
    assert (state.dirty, state.changed) == (True, ("deeper/", "tracked.txt"))


def test_git_state_on_untracked_subdirectory(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo")
    write(repo / "tracked.txt")
    commit_all(repo)
    write(repo / "fresh" / "a.txt")
    write(repo / "fresh" / "inner" / "b.txt")
    state = git_state(repo / "fresh")
    assert state is not None
    # git reports "fresh/" collapsed; relative to the root that means every child.
    assert (state.dirty, state.changed) == (True, ("a.txt", "inner/"))


# --- fingerprint --------------------------------------------------------------------


def fingerprint(repo: Path, filt: SnapshotFilter = NO_FILTER) -> str:
    value = source_fingerprint(repo, filt, git_state(repo))
    assert value is not None
    return value


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = init_repo(tmp_path / "repo")
    write(repo / ".gitignore", "*.log\n")
    write(repo / "src" / "main.py", "print('hi')\n")
    write(repo / "app" / "package.json", "{}\n")
    commit_all(repo)
    return repo


def test_fingerprint_of_unchanged_tree_is_stable(repo: Path) -> None:
    assert fingerprint(repo) == fingerprint(repo)
    assert fingerprint(repo) != fingerprint(repo, SnapshotFilter(("*.md",)))


def test_fingerprint_tracks_tracked_edits(repo: Path) -> None:
    clean = fingerprint(repo)
    write(repo / "src" / "main.py", "print('bye')\n")
    edited = fingerprint(repo)
    assert edited != clean
    write(repo / "src" / "main.py", "print('bye!')\n")
    assert fingerprint(repo) not in (clean, edited)
    write(repo / "src" / "main.py", "print('hi')\n")
    assert fingerprint(repo) == clean
    (repo / "src" / "main.py").chmod(0o755)
    assert fingerprint(repo) != clean
    (repo / "src" / "main.py").unlink()
    assert fingerprint(repo) != clean


def test_fingerprint_tracks_untracked_and_ignored(repo: Path) -> None:
    clean = fingerprint(repo)
    write(repo / "notes.txt", "a\n")
    untracked = fingerprint(repo)
    assert untracked != clean
    write(repo / "notes.txt", "b\n")
    assert fingerprint(repo) != untracked
    (repo / "notes.txt").unlink()
    assert fingerprint(repo) == clean

    no_logs = SnapshotFilter(("*.log",))
    clean_no_logs = fingerprint(repo, no_logs)
    write(repo / "debug.log", "1\n")  # ignored by .gitignore but still copied
    ignored = fingerprint(repo)
    assert ignored != clean
    write(repo / "debug.log", "2\n")
    assert fingerprint(repo) != ignored
    assert fingerprint(repo, no_logs) == clean_no_logs  # excluded from the copy: irrelevant
    (repo / "debug.log").unlink()
    assert fingerprint(repo) == clean

    write(repo / "newdir" / "inner" / "f.txt", "1\n")
    collapsed = fingerprint(repo)
    assert collapsed != clean
    write(repo / "newdir" / "inner" / "f.txt", "2\n")
    assert fingerprint(repo) != collapsed
    (repo / "newdir" / "inner" / "link").symlink_to("f.txt")
    assert fingerprint(repo) != collapsed


def test_fingerprint_ignores_excluded_paths(repo: Path) -> None:
    clean = fingerprint(repo)
    write(repo / "target" / "debug" / "bin")
    write(repo / "app" / "node_modules" / "dep" / "index.js")
    write(repo / "app" / "build" / "out.o")
    assert fingerprint(repo) == clean
    # Inside a collapsed untracked directory the filter applies while walking it.
    write(repo / "newdir" / "keep.txt")
    write(repo / "newdir" / "target" / "x")
    with_newdir = fingerprint(repo)
    assert with_newdir != clean
    (repo / "newdir" / "target" / "x").unlink()
    assert fingerprint(repo) == with_newdir
    shutil.rmtree(repo / "newdir")
    assert fingerprint(repo) == clean
    write(repo / "node_modules" / "dep.js")  # top-level node_modules is kept by the copy
    assert fingerprint(repo) != clean


def test_fingerprint_changes_with_commit(repo: Path) -> None:
    write(repo / "notes.txt")
    before = fingerprint(repo)
    commit_all(repo, "add notes")
    after = fingerprint(repo)
    assert after != before
    git(repo, "commit", "-q", "--allow-empty", "-m", "empty")
    assert fingerprint(repo) != after


def test_fingerprint_requires_git_state(repo: Path) -> None:
    assert source_fingerprint(repo, NO_FILTER, None) is None


def test_equal_fingerprint_means_equal_snapshot(repo: Path, tmp_path: Path) -> None:
    filt = SnapshotFilter(("*.log",))
    store = tmp_path / "store"
    write(repo / "notes.txt")
    first_fp = fingerprint(repo, filt)
    first = create_snapshot(repo, store, filt, git_state(repo))
    write(repo / "target" / "x")
    write(repo / "app" / "node_modules" / "y")
    write(repo / "z.log")
    assert fingerprint(repo, filt) == first_fp
    assert create_snapshot(repo, store, filt, git_state(repo)).content_hash == first.content_hash
    write(repo / "notes.txt", "changed\n")
    assert fingerprint(repo, filt) != first_fp
    assert create_snapshot(repo, store, filt).content_hash != first.content_hash


def test_executable_bit_changes_the_tree_id_but_not_the_content_hash(tmp_path):
    make_tiny_tree(tmp_path / "tiny")
    plain = create_snapshot(tmp_path / "tiny", tmp_path / "store", NO_FILTER)
    script = next(p for p in (tmp_path / "tiny").rglob("*") if p.is_file() and not p.is_symlink())
    script.chmod(script.stat().st_mode ^ 0o111)
    flipped = create_snapshot(tmp_path / "tiny", tmp_path / "store", NO_FILTER)
    assert flipped.content_hash == plain.content_hash  # the upstream hash ignores modes
    assert flipped.tree_id != plain.tree_id  # but a lane sees them: a different snapshot
    assert Path(flipped.snapshot_dir) != Path(plain.snapshot_dir)
    copied = Path(flipped.snapshot_dir) / script.relative_to(tmp_path / "tiny")
    assert (copied.stat().st_mode & 0o111) == (script.stat().st_mode & 0o111)
