"""Payload manifests: a corpus of bad manifests on disk, good ones, and mount-source resolution."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple, Union

import orjson
import pytest

from pikaci.payloads.manifest import (
    MANIFEST_RELATIVE_PATH,
    MANIFEST_SCHEMA_VERSION,
    AssetRoot,
    Entrypoint,
    ManifestError,
    MountSource,
    PayloadManifest,
    PayloadMount,
    mount_sources,
    parse_manifest,
    read_manifest,
)

LABEL = "build:demo:build (/nix/store/0123456789abcdfghijklmnpqrsvwxyz-x)"

# Byte for byte what nix/ci/lib.nix `manifestJson` writes for a workspaceBuild payload with one
# wrapper (`run-demo`) and one asset root (`demo`).
LIB_NIX_BYTES = (
    b'{"asset_roots":[{"name":"demo","relative_path":"share/demo"}],'
    b'"entrypoints":[{"name":"run-demo","relative_path":"bin/run-demo"}],'
    b'"kind":"staged_linux_workspace_build_v1",'
    b'"mounts":[{"guest_path":"/staged/linux-rust/workspace-build",'
    b'"name":"workspace_build_root","read_only":true,"relative_path":"."}],'
    b'"schema_version":1}\n'
)
GOOD: Dict[str, Any] = orjson.loads(LIB_NIX_BYTES)
MOUNT: Dict[str, Any] = GOOD["mounts"][0]
MOUNT_LABEL = 'mounts[0] "workspace_build_root"'

Content = Union[bytes, Dict[str, Any], List[Any], None]  # None: no manifest file at all
_SENTINEL: Any = object()


def make_root(tmp_path: Path) -> Path:
    """A fake staged output: bin/run-demo, share/demo, share/pikaci, lib/."""
    root = tmp_path / "out"
    for sub in ("bin", "share/demo", "share/pikaci", "lib/sub"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "bin/run-demo").write_text("#!/bin/sh\n")
    return root


def write_manifest(root: Path, content: Content) -> None:
    path = root / MANIFEST_RELATIVE_PATH
    if content is None:
        if path.exists():
            path.unlink()
        return
    path.write_bytes(content if isinstance(content, bytes) else orjson.dumps(content))


def manifest(**top: Any) -> Dict[str, Any]:
    data = copy.deepcopy(GOOD)
    data.update(top)
    return data


def mount(**fields: Any) -> Dict[str, Any]:
    data = dict(MOUNT)
    data.update(fields)
    return data


def without(data: Dict[str, Any], *path: Any) -> Dict[str, Any]:
    data = copy.deepcopy(data)
    target: Any = data
    for step in path[:-1]:
        target = target[step]
    del target[path[-1]]
    return data


def replaced(data: Dict[str, Any], path: Tuple[Any, ...], value: Any) -> Dict[str, Any]:
    data = copy.deepcopy(data)
    target: Any = data
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return data


def assert_one_line_error(message: str, *fragments: str) -> None:
    assert message.startswith(LABEL + ": "), message
    assert len(message.splitlines()) == 1, message
    assert "\n" not in message and "\r" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def read_expect_error(root: Path) -> str:
    result = _SENTINEL
    with pytest.raises(ManifestError) as info:
        result = read_manifest(root, LABEL)
    assert result is _SENTINEL  # nothing returned, not even a partial manifest
    return str(info.value)


# -- corpus of manifests that read_manifest rejects -----------------------------------------

# (id, file content, fragments the one-line message must contain)
BAD: List[Tuple[str, Content, Tuple[str, ...]]] = [
    # file level
    ("missing-file", None, ("missing payload manifest for staged output ",)),
    ("empty-file", b"", ("invalid JSON in share/pikaci/payload-manifest.json: ",)),
    ("whitespace-file", b" \n\n", ("invalid JSON in share/pikaci/payload-manifest.json",)),
    ("truncated", LIB_NIX_BYTES[:57], ("invalid JSON in share/pikaci/payload-manifest.json",)),
    ("trailing-garbage", LIB_NIX_BYTES + b"}", ("invalid JSON in",)),
    ("not-utf8", b'{"kind":"\xff"}', ("invalid JSON in",)),
    ("json-list", [GOOD], ("payload manifest must be a JSON object, got array",)),
    ("json-string", b'"hello"', ("must be a JSON object, got string",)),
    ("json-null", b"null", ("must be a JSON object, got null",)),
    ("json-number", b"1", ("must be a JSON object, got integer",)),
    # schema_version and kind
    ("schema-missing", without(GOOD, "schema_version"), ('missing field "schema_version"',)),
    ("schema-bool", manifest(schema_version=True), ("schema_version must be an integer",)),
    ("schema-float", manifest(schema_version=1.0), ("schema_version must be an integer",)),
    ("schema-string", manifest(schema_version="1"), ("got string",)),
    ("schema-2", manifest(schema_version=2), ("unsupported schema_version 2 (supported: 1)",)),
    ("schema-0", manifest(schema_version=0), ("unsupported schema_version 0 (supported: 1)",)),
    ("schema-negative", manifest(schema_version=-1), ("unsupported schema_version -1",)),
    ("kind-missing", without(GOOD, "kind"), ('missing field "kind"',)),
    ("kind-blank", manifest(kind=" \t"), ("kind must not be blank",)),
    ("kind-empty", manifest(kind=""), ("kind must not be blank",)),
    # lists and items that are not objects
    ("mounts-null", manifest(mounts=None), ("mounts must be a list, got null",)),
    ("mounts-object", manifest(mounts=MOUNT), ("mounts must be a list, got object",)),
    ("mount-not-object", manifest(mounts=[MOUNT, "x"]), ("mounts[1] must be a JSON object",)),
    ("entrypoint-string", manifest(entrypoints=["bin/x"]), ("entrypoints[0] must be a JSON",)),
    ("asset-root-list", manifest(asset_roots=[[]]), ("asset_roots[0] must be a JSON object",)),
    # missing item fields
    (
        "mount-no-name",
        manifest(mounts=[without(MOUNT, "name")]),
        ('mounts[0]: missing field "name"',),
    ),
    (
        "mount-no-read-only",
        manifest(mounts=[without(MOUNT, "read_only")]),
        (MOUNT_LABEL, 'missing field "read_only"'),
    ),
    (
        "mount-no-guest-path",
        manifest(mounts=[without(MOUNT, "guest_path")]),
        (MOUNT_LABEL, 'missing field "guest_path"'),
    ),
    (
        "mount-no-relative-path",
        manifest(mounts=[without(MOUNT, "relative_path")]),
        (MOUNT_LABEL, 'missing field "relative_path"'),
    ),
    (
        "entrypoint-no-relative-path",
        manifest(entrypoints=[{"name": "run"}]),
        ('entrypoints[0] "run": missing field "relative_path"',),
    ),
    # mount relative_path
    (
        "relative-absolute",
        manifest(mounts=[mount(relative_path="/etc")]),
        (MOUNT_LABEL, 'relative_path "/etc" must not be absolute'),
    ),
    (
        "relative-absolute-root",
        manifest(mounts=[mount(relative_path="/")]),
        (MOUNT_LABEL, "must not be absolute"),
    ),
    *[
        (
            f"relative-dotdot-{spelling}",
            manifest(mounts=[mount(relative_path=spelling)]),
            (MOUNT_LABEL, f"relative_path \"{spelling}\" must not contain '..'"),
        )
        for spelling in ("..", "a/../..", "./..", "a/..", "../x", "share/../../etc", "../", "a//..")
    ],
    (
        "relative-nul",
        manifest(mounts=[mount(relative_path="a\x00b")]),
        (MOUNT_LABEL, "contains NUL"),
    ),
    # guest_path
    *[
        (
            f"guest-{case_id}",
            manifest(mounts=[mount(guest_path=guest)]),
            (MOUNT_LABEL, f"guest_path {orjson.dumps(guest).decode()} {problem}"),
        )
        for case_id, guest, problem in [
            ("relative", "staged/x", "must be absolute"),
            ("empty", "", "must be absolute"),
            ("dot-relative", "./staged", "must be absolute"),
            ("dotdot-inside", "/staged/../etc", "must not contain '..'"),
            ("dotdot-end", "/staged/..", "must not contain '..'"),
            ("dotdot-only", "/..", "must not contain '..'"),
            ("dot-inside", "/a/./b", "must not contain '.' components"),
            ("dot-end", "/a/.", "must not contain '.' components"),
            ("double-slash-start", "//a", "must not contain '//'"),
            ("double-slash-inside", "/a//b", "must not contain '//'"),
            ("trailing-slash", "/a/", "must not end with '/'"),
            ("root", "/", "must not be the guest root"),
            ("nul", "/a\x00", "contains NUL"),
        ]
    ],
    # names and duplicates
    (
        "mount-name-blank",
        manifest(mounts=[mount(name="  ")]),
        ("mounts[0]: name must not be blank",),
    ),
    ("mount-name-empty", manifest(mounts=[mount(name="")]), ("mounts[0]: name must not be blank",)),
    (
        "mount-name-duplicate",
        manifest(mounts=[mount(name="a", guest_path="/a"), mount(name="a", guest_path="/b")]),
        ('duplicate name "a" in mounts (mounts[0] and mounts[1])',),
    ),
    (
        "guest-path-duplicate",
        manifest(
            mounts=[
                mount(name="a", guest_path="/staged/a"),
                mount(name="b", guest_path="/staged/b"),
                mount(name="c", guest_path="/staged/a"),
            ]
        ),
        ('duplicate guest_path "/staged/a" (mounts[0] "a" and mounts[2] "c")',),
    ),
    (
        "entrypoint-name-duplicate",
        manifest(
            entrypoints=[
                {"name": "run", "relative_path": "bin/run"},
                {"name": "run", "relative_path": "bin/run2"},
            ]
        ),
        ('duplicate name "run" in entrypoints (entrypoints[0] and entrypoints[1])',),
    ),
    (
        "asset-root-name-duplicate",
        manifest(
            asset_roots=[
                {"name": "lib", "relative_path": "lib"},
                {"name": "x", "relative_path": "x"},
                {"name": "lib", "relative_path": "lib64"},
            ]
        ),
        ('duplicate name "lib" in asset_roots (asset_roots[0] and asset_roots[2])',),
    ),
    (
        "entrypoint-name-blank",
        manifest(entrypoints=[{"name": "", "relative_path": "bin/x"}]),
        ("entrypoints[0]: name must not be blank",),
    ),
    (
        "asset-root-name-blank",
        manifest(asset_roots=[{"name": "\t", "relative_path": "lib"}]),
        ("asset_roots[0]: name must not be blank",),
    ),
    # entrypoint and asset-root paths follow the mount relative_path rule
    (
        "entrypoint-absolute",
        manifest(entrypoints=[{"name": "sh", "relative_path": "/bin/sh"}]),
        ('entrypoints[0] "sh": relative_path "/bin/sh" must not be absolute',),
    ),
    (
        "entrypoint-dotdot",
        manifest(entrypoints=[{"name": "x", "relative_path": "bin/../../x"}]),
        ('entrypoints[0] "x": relative_path "bin/../../x" must not contain',),
    ),
    (
        "asset-root-dotdot",
        manifest(asset_roots=[{"name": "up", "relative_path": "./.."}]),
        ('asset_roots[0] "up": relative_path "./.." must not contain',),
    ),
    # values that would break a one-line message are escaped
    (
        "newline-in-name",
        manifest(mounts=[mount(name="a\nb\u2028c", guest_path="rel")]),
        ('mounts[0] "a\\nb', "must be absolute"),
    ),
    (
        "newline-in-guest-path",
        manifest(mounts=[mount(guest_path="/a\n/b/")]),
        ('guest_path "/a\\n/b/" must not end with',),
    ),
]


@pytest.mark.parametrize(
    ("content", "fragments"), [case[1:] for case in BAD], ids=[case[0] for case in BAD]
)
def test_bad_manifest_is_rejected(tmp_path: Path, content: Content, fragments: Tuple[str, ...]):
    root = make_root(tmp_path)
    write_manifest(root, content)
    assert_one_line_error(read_expect_error(root), *fragments)


# -- wrong type for every field, and every required field missing ---------------------------

_VALUES: Dict[str, Any] = {
    "null": None,
    "bool": True,
    "int": 7,
    "float": 1.5,
    "str": "x",
    "list": [],
    "object": {},
}
_ACCEPTED: Dict[Tuple[Any, ...], Tuple[str, ...]] = {
    ("schema_version",): ("int",),
    ("kind",): ("str",),
    ("entrypoints",): ("list",),
    ("asset_roots",): ("list",),
    ("mounts",): ("list",),
    ("entrypoints", 0, "name"): ("str",),
    ("entrypoints", 0, "relative_path"): ("str",),
    ("asset_roots", 0, "name"): ("str",),
    ("asset_roots", 0, "relative_path"): ("str",),
    ("mounts", 0, "name"): ("str",),
    ("mounts", 0, "relative_path"): ("str",),
    ("mounts", 0, "guest_path"): ("str",),
    ("mounts", 0, "read_only"): ("bool",),
}
WRONG_TYPES = [
    (path, value_id)
    for path, accepted in _ACCEPTED.items()
    for value_id in _VALUES
    if value_id not in accepted
]


@pytest.mark.parametrize(
    ("path", "value_id"),
    WRONG_TYPES,
    ids=[f"{'.'.join(map(str, path))}={value_id}" for path, value_id in WRONG_TYPES],
)
def test_wrong_type_is_rejected(tmp_path: Path, path: Tuple[Any, ...], value_id: str):
    root = make_root(tmp_path)
    write_manifest(root, replaced(GOOD, path, _VALUES[value_id]))
    message = read_expect_error(root)
    field = path[-1]
    if len(path) == 1:
        assert_one_line_error(message, f"{field} must be a")
    elif field == "name":
        assert_one_line_error(message, f"{path[0]}[0]: name must be a string")
    else:
        item_name = GOOD[path[0]][0]["name"]
        assert_one_line_error(message, f'{path[0]}[0] "{item_name}": {field} must be a')


REQUIRED = [
    ("schema_version",),
    ("kind",),
    *[(lst, 0, key) for lst in ("entrypoints", "asset_roots") for key in ("name", "relative_path")],
    *[("mounts", 0, key) for key in ("name", "relative_path", "guest_path", "read_only")],
]


@pytest.mark.parametrize("path", REQUIRED, ids=[".".join(map(str, p)) for p in REQUIRED])
def test_missing_required_field_is_rejected(tmp_path: Path, path: Tuple[Any, ...]):
    root = make_root(tmp_path)
    write_manifest(root, without(GOOD, *path))
    assert_one_line_error(read_expect_error(root), f'missing field "{path[-1]}"')


def test_every_truncation_of_the_lib_nix_manifest_is_rejected(tmp_path: Path):
    root = make_root(tmp_path)
    body = LIB_NIX_BYTES.rstrip(b"\n")
    for end in range(len(body)):
        write_manifest(root, body[:end])
        assert_one_line_error(read_expect_error(root), "invalid JSON in")


def test_unreadable_manifest_path_is_an_error(tmp_path: Path):
    root = make_root(tmp_path)
    (root / MANIFEST_RELATIVE_PATH).mkdir()
    assert_one_line_error(read_expect_error(root), f"cannot read {MANIFEST_RELATIVE_PATH}")


def test_missing_manifest_names_the_root(tmp_path: Path):
    root = make_root(tmp_path)
    message = read_expect_error(root)
    assert message == f"{LABEL}: missing payload manifest for staged output {root}"
    assert read_expect_error(tmp_path / "absent").endswith(f"staged output {tmp_path}/absent")
    share_is_a_file = tmp_path / "flat"
    share_is_a_file.mkdir()
    (share_is_a_file / "share").write_text("")
    assert "missing payload manifest" in read_expect_error(share_is_a_file)


def test_exact_messages(tmp_path: Path):
    root = make_root(tmp_path)
    write_manifest(
        root,
        manifest(mounts=[mount(name="a", guest_path="/a"), mount(guest_path="staged/x")]),
    )
    assert read_expect_error(root) == (
        f'{LABEL}: mounts[1] "workspace_build_root": guest_path "staged/x" must be absolute'
    )
    write_manifest(root, manifest(schema_version=2))
    assert read_expect_error(root) == f"{LABEL}: unsupported schema_version 2 (supported: 1)"


def test_parse_manifest_rejects_non_objects():
    for value in (None, [], "{}", b"{}", 1, (GOOD,)):
        result = _SENTINEL
        with pytest.raises(ManifestError) as info:
            result = parse_manifest(value, LABEL)
        assert result is _SENTINEL
        assert_one_line_error(str(info.value), "payload manifest must be a JSON object")


def test_label_with_control_characters_stays_one_line():
    with pytest.raises(ManifestError) as info:
        parse_manifest([], "build:x\n(/nix/store/a\tb)")
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert message.startswith("build:x\\n(/nix/store/a\\tb): ")


def test_manifest_error_is_a_value_error_and_pickles():
    error = ManifestError(LABEL, "kind must not be blank")
    assert isinstance(error, ValueError)
    assert (error.output, error.detail) == (LABEL, "kind must not be blank")
    clone = pickle.loads(pickle.dumps(error))
    assert str(clone) == str(error) == f"{LABEL}: kind must not be blank"


# -- good manifests -------------------------------------------------------------------------


def test_lib_nix_manifest_parses_and_round_trips(tmp_path: Path):
    root = make_root(tmp_path)
    write_manifest(root, LIB_NIX_BYTES)
    parsed = read_manifest(root, LABEL)
    assert parsed == PayloadManifest(
        schema_version=MANIFEST_SCHEMA_VERSION,
        kind="staged_linux_workspace_build_v1",
        entrypoints=(Entrypoint("run-demo", "bin/run-demo"),),
        asset_roots=(AssetRoot("demo", "share/demo"),),
        mounts=(
            PayloadMount(
                name="workspace_build_root",
                relative_path=".",
                guest_path="/staged/linux-rust/workspace-build",
                read_only=True,
            ),
        ),
    )
    assert parsed.to_dict() == GOOD
    assert list(parsed.to_dict()) == sorted(GOOD)
    assert list(parsed.to_dict()["mounts"][0]) == sorted(MOUNT)
    # same bytes as the Nix writer: compact, key-sorted, newline-terminated
    assert orjson.dumps(parsed.to_dict()) + b"\n" == LIB_NIX_BYTES
    assert parse_manifest(parsed.to_dict(), LABEL) == parsed
    assert mount_sources(root, parsed, LABEL) == [
        MountSource(mount=parsed.mounts[0], source=root.resolve())
    ]


CANONICAL: List[Tuple[str, Dict[str, Any]]] = [
    ("lib-nix", GOOD),
    (
        "deps-no-entrypoints",
        {
            "asset_roots": [
                {"name": "lib", "relative_path": "lib"},
                {"name": "pikaci_share", "relative_path": "share/pikaci"},
            ],
            "entrypoints": [],
            "kind": "staged_linux_workspace_deps_v1",
            "mounts": [
                {
                    "guest_path": "/staged/linux-rust/workspace-deps",
                    "name": "workspace_deps_root",
                    "read_only": True,
                    "relative_path": "",
                }
            ],
            "schema_version": 1,
        },
    ),
    (
        "several-mounts",
        {
            "asset_roots": [],
            "entrypoints": [{"name": "run-demo", "relative_path": "bin/run-demo"}],
            "kind": "some_future_kind_v9",
            "mounts": [
                {"guest_path": "/w", "name": "root", "read_only": True, "relative_path": "."},
                {
                    "guest_path": "/w/lib",
                    "name": "lib",
                    "read_only": False,
                    "relative_path": "lib/sub",
                },
                {
                    "guest_path": "/é/ü ...",
                    "name": "dämo",
                    "read_only": True,
                    "relative_path": "./share//demo/",
                },
            ],
            "schema_version": 1,
        },
    ),
    (
        "empty-lists",
        {"asset_roots": [], "entrypoints": [], "kind": "k", "mounts": [], "schema_version": 1},
    ),
]


@pytest.mark.parametrize("data", [c[1] for c in CANONICAL], ids=[c[0] for c in CANONICAL])
def test_canonical_manifest_round_trips(tmp_path: Path, data: Dict[str, Any]):
    root = make_root(tmp_path)
    write_manifest(root, orjson.dumps(data, option=orjson.OPT_SORT_KEYS) + b"\n")
    parsed = read_manifest(root, LABEL)
    assert parsed.to_dict() == data
    assert orjson.dumps(parsed.to_dict()) == orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
    sources = mount_sources(root, parsed, LABEL)
    assert [s.mount for s in sources] == list(parsed.mounts)
    for source in sources:
        assert source.source.is_relative_to(root.resolve())
        assert source.source == (root / source.mount.relative_path).resolve()


def test_absent_optional_lists_mean_empty(tmp_path: Path):
    root = make_root(tmp_path)
    write_manifest(root, {"schema_version": 1, "kind": "staged_linux_workspace_deps_v1"})
    parsed = read_manifest(root, LABEL)
    assert (parsed.entrypoints, parsed.asset_roots, parsed.mounts) == ((), (), ())
    assert parsed.to_dict() == {
        "asset_roots": [],
        "entrypoints": [],
        "kind": "staged_linux_workspace_deps_v1",
        "mounts": [],
        "schema_version": 1,
    }
    assert mount_sources(root, parsed, LABEL) == []


def test_unknown_fields_are_tolerated_and_dropped(tmp_path: Path):
    root = make_root(tmp_path)
    data = manifest(future_top={"x": 1}, comment=None)
    data["mounts"][0]["propagation"] = "rslave"
    data["entrypoints"][0]["mode"] = 0o555
    data["asset_roots"][0]["size"] = None
    write_manifest(root, data)
    parsed = read_manifest(root, LABEL)
    assert parsed.to_dict() == GOOD


@pytest.mark.parametrize(
    ("relative", "expected"),
    [("", "."), (".", "."), ("./", "."), ("share/demo", "share/demo"), ("lib/sub/", "lib/sub")],
)
def test_mount_relative_path_forms(tmp_path: Path, relative: str, expected: str):
    root = make_root(tmp_path)
    write_manifest(root, manifest(mounts=[mount(relative_path=relative)]))
    parsed = read_manifest(root, LABEL)
    assert parsed.mounts[0].relative_path == relative  # kept as written
    (resolved,) = mount_sources(root, parsed, LABEL)
    assert resolved.source == (root / expected).resolve()


def test_symlinks_inside_the_root_are_followed(tmp_path: Path):
    real = make_root(tmp_path)
    (real / "current").symlink_to("share/demo")
    linked_root = tmp_path / "result"  # like a `result` symlink into the store
    linked_root.symlink_to(real)
    write_manifest(
        real,
        manifest(
            mounts=[
                mount(name="root", relative_path="."),
                mount(name="demo", relative_path="current", guest_path="/demo"),
            ]
        ),
    )
    parsed = read_manifest(linked_root, LABEL)
    sources = mount_sources(linked_root, parsed, LABEL)
    assert [s.source for s in sources] == [real.resolve(), (real / "share/demo").resolve()]


# -- mount sources that mount_sources rejects -----------------------------------------------


def _escape_link(root: Path, outside: Path) -> str:
    (root / "escape").symlink_to(outside)
    return "escape"


def _escape_through_parent(root: Path, outside: Path) -> str:
    (outside / "inner").mkdir()
    (root / "lib/outlink").symlink_to(outside)
    return "lib/outlink/inner"


def _escape_relative_link(root: Path, outside: Path) -> str:
    (root / "share/up").symlink_to(Path("..") / ".." / outside.name)
    return "share/up"


def _missing(root: Path, outside: Path) -> str:
    return "share/absent"


def _dangling(root: Path, outside: Path) -> str:
    (root / "dangling").symlink_to(root / "nowhere")
    return "dangling"


def _loop(root: Path, outside: Path) -> str:
    (root / "loop-a").symlink_to(root / "loop-b")
    (root / "loop-b").symlink_to(root / "loop-a")
    return "loop-a"


SOURCE_CASES: List[Tuple[str, Callable[[Path, Path], str], str]] = [
    ("symlink-escapes", _escape_link, "outside the output root"),
    ("parent-symlink-escapes", _escape_through_parent, "outside the output root"),
    ("relative-symlink-escapes", _escape_relative_link, "outside the output root"),
    ("missing-source", _missing, "does not exist under the output root"),
    ("dangling-symlink", _dangling, "does not exist under the output root"),
    ("symlink-loop", _loop, "does not exist under the output root"),
]


@pytest.mark.parametrize(
    ("setup", "problem"), [c[1:] for c in SOURCE_CASES], ids=[c[0] for c in SOURCE_CASES]
)
@pytest.mark.parametrize("position", [0, 1])
def test_bad_mount_source_is_rejected(
    tmp_path: Path, setup: Callable[[Path, Path], str], problem: str, position: int
):
    root = make_root(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    relative = setup(root, outside)
    bad = mount(name="bad", relative_path=relative, guest_path="/bad")
    good = mount(name="good", relative_path="share/demo", guest_path="/good")
    mounts = [bad, good] if position == 0 else [good, bad]
    write_manifest(root, manifest(mounts=mounts))
    parsed = read_manifest(root, LABEL)  # the manifest itself is fine
    result = _SENTINEL
    with pytest.raises(ManifestError) as info:
        result = mount_sources(root, parsed, LABEL)
    assert result is _SENTINEL  # no partial list, even when the good mount came first
    assert_one_line_error(str(info.value), f'mounts[{position}] "bad"', f'"{relative}"', problem)


def test_mount_sources_rechecks_hand_built_manifests(tmp_path: Path):
    root = make_root(tmp_path)
    for relative in ("/etc", "..", "a\x00b"):
        parsed = PayloadManifest(
            schema_version=1,
            kind="k",
            mounts=(PayloadMount("m", relative, "/m", True),),
        )
        with pytest.raises(ManifestError) as info:
            mount_sources(root, parsed, LABEL)
        assert_one_line_error(str(info.value), 'mounts[0] "m"')


def test_mount_sources_missing_root(tmp_path: Path):
    parsed = parse_manifest(GOOD, LABEL)
    with pytest.raises(ManifestError) as info:
        mount_sources(tmp_path / "gone", parsed, LABEL)
    assert_one_line_error(str(info.value), "does not exist")


def test_corpus_ids_are_unique():
    ids = [case[0] for case in BAD] + [case[0] for case in SOURCE_CASES]
    assert len(ids) == len(set(ids))
