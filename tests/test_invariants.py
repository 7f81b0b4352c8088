"""scripts/check_invariants.py and `doit check_invariants`, on temporary copies of this
repository: each invariant broken in a copy fails with its own id and only it. The import rules
(PIKACI-007, PIKACI-008) are broken in small synthetic repositories instead, so that what they
assert does not depend on the state of the real tree."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

from tests.conftest import REPO_ROOT, Project, require_component

SCRIPT = REPO_ROOT / "scripts" / "check_invariants.py"
COPIED = ("dodo.py", "pikaci", "scripts", "ci", "invariants", "pyproject.toml")
MUST_IDS = (
    "PIKACI-002",
    "PIKACI-003",
    "PIKACI-004",
    "PIKACI-005",
    "PIKACI-006",
    "PIKACI-007",
    "PIKACI-008",
)


def find_python39() -> Optional[str]:
    """A working Python 3.9 that has tomli, which the script reads TOML with below 3.11: this
    interpreter in the suite's Python 3.9 run, the virtualenv that run uses, or a pyenv 3.9
    with tomli installed (a pyenv shim without the version selected does not count)."""
    candidates = [
        sys.executable if sys.version_info[:2] == (3, 9) else None,
        str(REPO_ROOT / ".venv39" / "bin" / "python"),
        shutil.which("python3.9"),
        *map(str, Path.home().glob(".pyenv/versions/3.9*/bin/python3.9")),
    ]
    probe = "import sys, tomli; sys.exit(sys.version_info[:2] != (3, 9))"
    for candidate in candidates:
        if (
            candidate
            and Path(candidate).is_file()
            and subprocess.run(
                [candidate, "-c", probe], capture_output=True, check=False
            ).returncode
            == 0
        ):
            return candidate
    return None


PYTHON39 = find_python39()


def load_checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_invariants", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def copy_repository(root: Path, names: Tuple[str, ...] = COPIED) -> Path:
    root.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in names:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=ignore)
        elif source.is_file():
            shutil.copy2(source, root / name)
    return root


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = copy_repository(tmp_path / "repo")
    # the real manifest, never a stand-in: PIKACI-005 checks it against the catalog
    assert (root / "ci" / "forge-lanes.toml").is_file()
    return root


def project_at(root: Path) -> Project:
    """The copy as a conftest Project: its env (no PIKACI_* leaking in), doit and run."""
    return Project(root=root, state_root=root.parent / "state")


def doit_check(root: Path) -> subprocess.CompletedProcess[str]:
    return project_at(root).doit("check_invariants")


def script(
    root: Path, *args: str, python: str = sys.executable
) -> subprocess.CompletedProcess[str]:
    script_path = str(root / "scripts" / "check_invariants.py")
    return project_at(root).run([python, script_path, *args], timeout=60)


def edit(root: Path, relpath: str, old: str, new: str) -> None:
    path = root / relpath
    text = path.read_text()
    assert old in text, f"{old!r} not in {relpath}"
    path.write_text(text.replace(old, new, 1))


def append(root: Path, relpath: str, text: str) -> None:
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(text)


def statuses(output: str) -> Dict[str, str]:
    return {
        m.group(2): m.group(1) for m in re.finditer(r"^(PASS|FAIL|UNCHECKED) (\S+): ", output, re.M)
    }


# -- the breaks: (invariant id, what it does to the copy) ------------------------------------------


def import_dodo(root: Path) -> None:
    append(root, "pikaci/extra_loader.py", "import dodo\n")


def import_module_dodo(root: Path) -> None:
    append(root, "pikaci/extra_loader.py", 'import importlib\n\nimportlib.import_module("dodo")\n')


def lane_id_literal(root: Path) -> None:
    append(root, "pikaci/extra_ids.py", 'DEFAULT_LANE = "unit-tests"\n')


def task_name_literal(root: Path) -> None:
    append(root, "pikaci/extra_ids.py", 'DEFAULT_TASK = "lane:demo"\n')


def filters_in_dodo(root: Path) -> None:
    append(root, "dodo.py", '\nLINT_FILTERS = {"paths": ["pikaci/**", "dodo.py"]}\n')


def filters_in_library(root: Path) -> None:
    append(root, "pikaci/extra_filters.py", 'path_filters = ("pikaci/**",)\n')


def filters_in_toml(root: Path) -> None:
    append(root, "ci/other-lanes.toml", 'paths = [\n  "pikaci/**",\n]\n')


def filters_in_script(root: Path) -> None:
    append(root, "scripts/select-lanes", '#!/usr/bin/env bash\npaths=("pikaci/**" "dodo.py")\n')


def execution_hidden(root: Path) -> None:
    edit(
        root,
        "dodo.py",
        "LOCAL_HOST = Execution(placement=PLACEMENT_LOCAL, runtime=RUNTIME_HOST_PROCESS)",
        'LOCAL_HOST = Execution(**{"placement": PLACEMENT_LOCAL, "runtime": RUNTIME_HOST_PROCESS})',
    )


def execution_in_library(root: Path) -> None:
    append(
        root,
        "pikaci/extra_exec.py",
        'from pikaci.catalog import Execution\n\nFALLBACK = Execution("local", "host_process")\n',
    )


def runtime_from_id(root: Path) -> None:
    append(
        root,
        "pikaci/extra_infer.py",
        "from pikaci.catalog import RUNTIME_HOST_PROCESS, RUNTIME_TART\n\n\n"
        "def runtime_for(lane):\n"
        '    if lane.id.startswith("tart-"):\n'
        "        return RUNTIME_TART\n"
        "    return RUNTIME_HOST_PROCESS\n",
    )


def placement_from_command(root: Path) -> None:
    append(
        root,
        "pikaci/extra_infer.py",
        "import re\n\n\n"
        "def placement_for(job):\n"
        '    placement = "remote_ssh" if re.match("remote-", job.command) else "local"\n'
        "    return placement\n",
    )


def ghost_lane(root: Path) -> None:
    append(
        root,
        "ci/forge-lanes.toml",
        '\n[[branch.lanes]]\nid = "ghost"\ntitle = "check-ghost"\nstaged_linux_target = "ghost"\n',
    )


def twice_mapped(root: Path) -> None:
    append(
        root,
        "ci/forge-lanes.toml",
        '\n[[branch.lanes]]\nid = "demo_again"\ntitle = "check-demo-again"\n'
        'staged_linux_target = "demo"\n',
    )


def unmapped_target(root: Path) -> None:
    path = root / "ci" / "forge-lanes.toml"
    path.write_text(re.sub(r'(?m)^staged_linux_target = "demo"\n', "", path.read_text()))


def no_manifest(root: Path) -> None:
    (root / "ci" / "forge-lanes.toml").unlink()


def no_timeout(root: Path) -> None:
    edit(root, "dodo.py", "timeout_secs=300,\n", "")


def computed_timeout(root: Path) -> None:
    edit(root, "dodo.py", "timeout_secs=600,", 'timeout_secs=int("600"),')


BREAKS: List[Tuple[str, Callable[[Path], None]]] = [
    ("PIKACI-002", import_dodo),
    ("PIKACI-002", import_module_dodo),
    ("PIKACI-002", lane_id_literal),
    ("PIKACI-002", task_name_literal),
    ("PIKACI-003", filters_in_dodo),
    ("PIKACI-003", filters_in_library),
    ("PIKACI-003", filters_in_toml),
    ("PIKACI-003", filters_in_script),
    ("PIKACI-004", execution_hidden),
    ("PIKACI-004", execution_in_library),
    ("PIKACI-004", runtime_from_id),
    ("PIKACI-004", placement_from_command),
    ("PIKACI-005", ghost_lane),
    ("PIKACI-005", twice_mapped),
    ("PIKACI-005", unmapped_target),
    ("PIKACI-005", no_manifest),
    ("PIKACI-006", no_timeout),
    ("PIKACI-006", computed_timeout),
]


# -- the import rules, in synthetic repositories ------------------------------------------------

SYNTHETIC_DODO = """\
\"\"\"A catalog that is only ever read statically, by scripts/check_invariants.py.\"\"\"

from pikaci.catalog import Catalog, Execution, Installable, Lane, StagedPayloads, Target

CATALOG = Catalog(
    targets=[
        Target(
            id="shop",
            description="a target with staged payloads",
            payloads=StagedPayloads(
                id="shop", deps=Installable("ci.deps"), build=Installable("ci.build")
            ),
            lanes=[
                Lane(
                    id="checkout",
                    command="true",
                    execution=Execution(placement="local", runtime="host_process"),
                    timeout_secs=60,
                ),
            ],
        ),
    ]
)
"""

SYNTHETIC_MANIFEST = """\
version = 1

[[branch.lanes]]
id = "shop"
title = "check-shop"
staged_linux_target = "shop"
paths = ["pikaci/**"]
"""

# a clean library: imports go downwards only and doit is imported in pikaci/tasks/ alone, at
# module level and lazily; `from pikaci import ids` is the `from <package> import <module>` form
SYNTHETIC_LIBRARY = {
    "pikaci/__init__.py": '"""A library small enough to read whole."""\n',
    "pikaci/catalog.py": (
        'PLACEMENT_LOCAL = "local"\nRUNTIME_HOST_PROCESS = "host_process"\n\n\n'
        "class Execution:\n    pass\n"
    ),
    "pikaci/ids.py": "def check_id(value):\n    return value.isidentifier()\n",
    "pikaci/run.py": (
        "from pikaci import ids\nfrom pikaci.catalog import Execution\n\n\n"
        "def start(execution: Execution) -> bool:\n    return ids.check_id(execution)\n"
    ),
    "pikaci/tasks/__init__.py": "import doit\n\nfrom pikaci.run import start\n",
    "pikaci/tasks/loader.py": (
        "from doit.cmd_base import ModuleTaskLoader\n\nfrom . import start\n\n\n"
        "def load():\n    import doit.loader\n\n    return doit.loader, ModuleTaskLoader, start\n"
    ),
    "pikaci/cli/__init__.py": "",
    "pikaci/cli/main.py": (
        "def main() -> int:\n    from pikaci.tasks.loader import load\n\n    load()\n    return 0\n"
    ),
}


@pytest.fixture
def synthetic(tmp_path: Path) -> Path:
    """The checker and the real spec over a tiny repository whose library is the one above."""
    root = copy_repository(tmp_path / "synthetic", ("scripts", "invariants"))
    files = {
        "dodo.py": SYNTHETIC_DODO,
        "ci/forge-lanes.toml": SYNTHETIC_MANIFEST,
        **SYNTHETIC_LIBRARY,
    }
    write_files(root, files)
    return root


def write_files(root: Path, files: Dict[str, str]) -> None:
    for relpath, text in files.items():
        path = root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def json_report(root: Path) -> Tuple[int, Dict[str, Dict[str, Any]]]:
    result = script(root, "--json")
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, {r["id"]: r for r in json.loads(result.stdout)["results"]}


def assert_all_pass(root: Path) -> Dict[str, Dict[str, Any]]:
    returncode, report = json_report(root)
    found = {invariant: result["status"] for invariant, result in report.items()}
    assert found == {"PIKACI-001": "unchecked", **dict.fromkeys(MUST_IDS, "pass")}, report
    assert returncode == 0
    return report


def assert_fails_alone(root: Path, invariant: str) -> Dict[str, Any]:
    returncode, report = json_report(root)
    failed = [i for i, result in report.items() if result["status"] == "fail"]
    assert failed == [invariant], report
    assert returncode == 1
    return report[invariant]


def test_synthetic_repository_passes(synthetic: Path) -> None:
    report = assert_all_pass(synthetic)
    assert report["PIKACI-007"]["reason"] == (
        "no import cycle among the 8 modules of pikaci/, lazy imports included"
    )
    assert report["PIKACI-008"]["reason"] == (
        "`doit` is imported only under pikaci/tasks/ (2 modules there import it)"
    )


# (invariant, name, files written over the clean library, FAIL reason, evidence)
SYNTHETIC_BREAKS: List[Tuple[str, str, Dict[str, str], str, List[str]]] = [
    (
        "PIKACI-007",
        "top_level_cycle",
        {
            "pikaci/alpha.py": "from pikaci.beta import B\n\nA = 1\n",
            "pikaci/beta.py": "import pikaci.alpha\n\nB = 2\n",
        },
        "pikaci/alpha.py:1: import cycle pikaci.alpha -> pikaci.beta -> pikaci.alpha",
        ["pikaci/alpha.py:1"],
    ),
    (
        "PIKACI-007",
        "lazy_import_in_a_function",
        {
            "pikaci/ids.py": "def check_id(value):\n    from pikaci.run import start\n\n    return start\n"
        },
        "pikaci/ids.py:2: import cycle pikaci.ids -> pikaci.run -> pikaci.ids",
        ["pikaci/ids.py:2"],
    ),
    (
        "PIKACI-007",
        "lazy_import_in_a_method",
        {
            "pikaci/ids.py": (
                "class Ids:\n    def load(self):\n        import pikaci.run\n\n"
                "        return pikaci.run\n"
            )
        },
        "pikaci/ids.py:3: import cycle pikaci.ids -> pikaci.run -> pikaci.ids",
        ["pikaci/ids.py:3"],
    ),
    (
        "PIKACI-007",
        "relative_imports",
        {
            "pikaci/store/__init__.py": "",
            "pikaci/store/files.py": "from .records import Record\n",
            "pikaci/store/records.py": "from . import files\n\nRecord = dict\n",
        },
        "pikaci/store/files.py:1: import cycle pikaci.store.files -> pikaci.store.records "
        "-> pikaci.store.files",
        ["pikaci/store/files.py:1"],
    ),
    (
        "PIKACI-007",
        "lazy_relative_import_from_the_parent",
        {
            "pikaci/store/__init__.py": "",
            "pikaci/store/records.py": "def load():\n    from ..run import start\n\n    return start\n",
            "pikaci/run.py": (
                "from pikaci import ids\nfrom pikaci.store.records import load\n\n\n"
                "def start():\n    return ids, load\n"
            ),
        },
        "pikaci/run.py:2: import cycle pikaci.run -> pikaci.store.records -> pikaci.run",
        ["pikaci/run.py:2"],
    ),
    (
        "PIKACI-007",
        "name_imported_from_a_package",
        {
            "pikaci/store/__init__.py": (
                "from pikaci.run import start\n\n\ndef open_store():\n    return start\n"
            ),
            "pikaci/ids.py": "from pikaci.store import open_store\n",
        },
        "pikaci/ids.py:1: import cycle pikaci.ids -> pikaci.store -> pikaci.run -> pikaci.ids",
        ["pikaci/ids.py:1"],
    ),
    (
        "PIKACI-007",
        "else_branch_of_type_checking",
        {
            "pikaci/ids.py": (
                "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    pass\n"
                "else:\n    from pikaci import run\n"
            )
        },
        "pikaci/ids.py:6: import cycle pikaci.ids -> pikaci.run -> pikaci.ids",
        ["pikaci/ids.py:6"],
    ),
    (
        "PIKACI-007",
        "import_module_literal",
        {
            "pikaci/ids.py": (
                "import importlib\n\n\ndef late():\n"
                '    return importlib.import_module("pikaci.run")\n'
            )
        },
        "pikaci/ids.py:5: import cycle pikaci.ids -> pikaci.run -> pikaci.ids",
        ["pikaci/ids.py:5"],
    ),
    (
        "PIKACI-008",
        "top_level_import",
        {"pikaci/store.py": "import doit\n"},
        "pikaci/store.py:1 imports `doit` outside pikaci/tasks/",
        ["pikaci/store.py:1"],
    ),
    (
        "PIKACI-008",
        "from_import_in_a_function",
        {
            "pikaci/cli/main.py": (
                "def main() -> int:\n    from doit.doit_cmd import DoitMain\n\n"
                "    return DoitMain().run([])\n"
            )
        },
        "pikaci/cli/main.py:2 imports `doit.doit_cmd` outside pikaci/tasks/",
        ["pikaci/cli/main.py:2"],
    ),
    (
        "PIKACI-008",
        "import_in_a_method",
        {
            "pikaci/server.py": (
                "class Server:\n    def tasks(self):\n        import doit.loader as loader\n\n"
                "        return loader\n"
            )
        },
        "pikaci/server.py:3 imports `doit.loader` outside pikaci/tasks/",
        ["pikaci/server.py:3"],
    ),
    (
        "PIKACI-008",
        "import_module_literal",
        {
            "pikaci/server.py": (
                "import importlib\n\n\ndef loader():\n"
                '    return importlib.import_module("doit.loader")\n'
            )
        },
        "pikaci/server.py:5 imports `doit.loader` outside pikaci/tasks/",
        ["pikaci/server.py:5"],
    ),
    (
        "PIKACI-008",
        "dunder_import",
        {"pikaci/ids.py": 'DOIT = __import__("doit")\n'},
        "pikaci/ids.py:1 imports `doit` outside pikaci/tasks/",
        ["pikaci/ids.py:1"],
    ),
    (
        "PIKACI-008",
        "among_other_imports",
        {"pikaci/ids.py": "import os, doit.tools\n"},
        "pikaci/ids.py:1 imports `doit.tools` outside pikaci/tasks/",
        ["pikaci/ids.py:1"],
    ),
    (
        "PIKACI-008",
        "for_type_checking",
        {
            "pikaci/ids.py": (
                "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
                "    from doit.task import Task\n"
            )
        },
        "pikaci/ids.py:4 imports `doit.task` outside pikaci/tasks/",
        ["pikaci/ids.py:4"],
    ),
]


@pytest.mark.parametrize(
    ("invariant", "files", "reason", "evidence"),
    [case[:1] + case[2:] for case in SYNTHETIC_BREAKS],
    ids=[f"{case[0]}-{case[1]}" for case in SYNTHETIC_BREAKS],
)
def test_a_broken_import_rule_fails_with_its_id(
    synthetic: Path, invariant: str, files: Dict[str, str], reason: str, evidence: List[str]
) -> None:
    write_files(synthetic, files)
    result = assert_fails_alone(synthetic, invariant)
    assert result["reason"] == reason
    assert result["evidence"] == evidence


# imports that look like a break and are none
IMPORTS_THAT_PASS = {
    "type_checking_imports": {
        "pikaci/ids.py": (
            "import typing\nfrom typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
            "    from pikaci.run import start\nif typing.TYPE_CHECKING:\n    import pikaci.run\n\n\n"
            "def check_id(value: str) -> bool:\n    if TYPE_CHECKING:\n"
            "        from pikaci import run\n    return value.isidentifier()\n"
        )
    },
    # `from pikaci.store import files` imports the module pikaci.store.files, not the package
    "module_imported_from_a_package": {
        "pikaci/store/__init__.py": "from pikaci import run\n",
        "pikaci/store/files.py": "FILES = 1\n",
        "pikaci/ids.py": "from pikaci.store import files\n",
    },
    "self_import": {"pikaci/ids.py": "import pikaci.ids\n"},
    "doit_deeper_in_tasks": {
        "pikaci/tasks/nested/__init__.py": "",
        "pikaci/tasks/nested/deep.py": (
            "import importlib\n\n\ndef tools():\n    import doit.tools\n\n"
            '    return doit.tools, importlib.import_module("doit")\n'
        ),
    },
    # another top-level module, a sibling module named doit, a string that is no import
    "names_like_doit": {
        "pikaci/doit.py": "",
        "pikaci/ids.py": 'import doitlater\n\nfrom . import doit\n\nNOTE = "import doit"\n',
    },
}


@pytest.mark.parametrize("files", IMPORTS_THAT_PASS.values(), ids=IMPORTS_THAT_PASS.keys())
def test_imports_that_break_no_rule(synthetic: Path, files: Dict[str, str]) -> None:
    write_files(synthetic, files)
    assert_all_pass(synthetic)


def test_every_import_cycle_is_reported_in_a_fixed_order(synthetic: Path) -> None:
    write_files(
        synthetic,
        {
            "pikaci/e.py": "from pikaci import c\n",
            "pikaci/d.py": "from pikaci import c, e\n",
            "pikaci/c.py": "from pikaci import d\n",
            "pikaci/b.py": "from pikaci import a\n",
            "pikaci/a.py": "from pikaci import b\n",
        },
    )
    result = assert_fails_alone(synthetic, "PIKACI-007")
    assert result["reason"] == (
        "pikaci/a.py:1: import cycle pikaci.a -> pikaci.b -> pikaci.a; "
        "pikaci/c.py:1: import cycle pikaci.c -> pikaci.d -> pikaci.c; "
        "pikaci/e.py:1: import cycle pikaci.e -> pikaci.c -> pikaci.d -> pikaci.e"
    )
    assert result["evidence"] == ["pikaci/a.py:1", "pikaci/c.py:1", "pikaci/e.py:1"]
    assert script(synthetic).stdout == script(synthetic).stdout


def test_doit_importers_are_read_from_the_spec(synthetic: Path) -> None:
    edit(
        synthetic,
        "invariants/invariants.toml",
        'importers = ["pikaci/tasks/"]',
        'importers = ["pikaci/tasks/", "pikaci/cli/main.py"]',
    )
    files = {"pikaci/cli/main.py": "def main() -> int:\n    import doit\n\n    return 0\n"}
    write_files(synthetic, files)
    _, report = json_report(synthetic)
    assert report["PIKACI-008"]["status"] == "pass", report["PIKACI-008"]
    write_files(synthetic, {"pikaci/cli/other.py": "from doit import loader\n"})
    result = assert_fails_alone(synthetic, "PIKACI-008")
    assert result["reason"] == (
        "pikaci/cli/other.py:1 imports `doit` outside pikaci/tasks/, pikaci/cli/main.py"
    )


def test_doit_rule_without_its_config_fails(synthetic: Path) -> None:
    spec = synthetic / "invariants" / "invariants.toml"
    text = spec.read_text()
    assert text.count("\nconfig = ") == 1
    spec.write_text(re.sub(r"(?m)^config = .*\n", "", text))
    result = assert_fails_alone(synthetic, "PIKACI-008")
    assert result["reason"].startswith("invariants/invariants.toml: PIKACI-008 needs `config = {")
    assert result["evidence"] == ["invariants/invariants.toml"]


def test_unparsable_library_file_fails_the_import_rules(synthetic: Path) -> None:
    write_files(synthetic, {"pikaci/broken.py": "def broken(:\n"})
    _, report = json_report(synthetic)
    for invariant in ("PIKACI-007", "PIKACI-008"):
        assert report[invariant]["status"] == "fail"
        assert report[invariant]["evidence"] == ["pikaci/broken.py:1"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "not UTF-8 text"),
        (b"version = 1\nx = " + b"[" * 5000 + b"]" * 5000 + b"\n", "invalid TOML: "),
        (b"version = 1\nx = " + b"[" * 5000 + b"\n", "invalid TOML: "),
        (b"[" * 5000, "invalid TOML: "),
        (b"version = \n", "invalid TOML: "),
    ],
    ids=["binary", "nested_arrays", "unclosed_nested_arrays", "nested_headers", "no_value"],
)
def test_unreadable_spec_is_a_one_line_error(synthetic: Path, content: bytes, message: str) -> None:
    (synthetic / "invariants" / "invariants.toml").write_bytes(content)
    result = script(synthetic)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert re.match(r"check_invariants: \S*invariants/invariants\.toml: ", result.stderr)
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_every_checked_invariant_has_a_break() -> None:
    checker = load_checker()
    spec = checker.load_spec(REPO_ROOT / "invariants" / "invariants.toml")
    must = {entry["id"] for entry in spec["invariant"] if entry["kind"] == "must"}
    broken = {i for i, _ in BREAKS} | {i for i, *_ in SYNTHETIC_BREAKS}
    assert must == set(MUST_IDS) == set(checker.CHECKS) == broken


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, str]:
    """The statuses of an unchanged copy: a break must change its own id and nothing else."""
    root = copy_repository(tmp_path_factory.mktemp("unbroken") / "repo")
    return statuses(script(root).stdout)


def test_this_repository_passes(repo: Path) -> None:
    result = script(repo)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("invariants: pikaci-invariants\n")
    assert statuses(result.stdout) == {
        "PIKACI-001": "UNCHECKED",
        **dict.fromkeys(MUST_IDS, "PASS"),
    }
    assert "UNCHECKED PIKACI-001: kind allowed: nothing to check" in result.stdout


@pytest.mark.slow
def test_doit_check_invariants_passes(repo: Path) -> None:
    result = doit_check(repo)
    assert result.returncode == 0, result.stdout + result.stderr
    assert statuses(result.stdout) == {
        "PIKACI-001": "UNCHECKED",
        **dict.fromkeys(MUST_IDS, "PASS"),
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    ("invariant", "breaker"), BREAKS, ids=[f"{i}-{b.__name__}" for i, b in BREAKS]
)
def test_a_broken_invariant_fails_with_its_id(
    repo: Path, unbroken: Dict[str, str], invariant: str, breaker: Callable[[Path], None]
) -> None:
    # compared with the unchanged copy rather than with all PASS, so that an invariant the
    # tree does not meet yet (test_this_repository_passes says which) hides no other break
    assert unbroken[invariant] == "PASS", unbroken
    assert unbroken["PIKACI-001"] == "UNCHECKED"
    breaker(repo)
    result = doit_check(repo)
    assert result.returncode == 1, result.stdout + result.stderr
    found = statuses(result.stdout)
    assert found == {**unbroken, invariant: "FAIL"}, result.stdout
    # the failure names where: an evidence line with a path (and a line where there is one)
    block = result.stdout.split(f"FAIL {invariant}: ", 1)[1].split("\n")
    assert block[1].startswith("  evidence: ")


def test_failure_evidence_names_file_and_line(repo: Path) -> None:
    runtime_from_id(repo)
    no_timeout(repo)
    result = script(repo, "--json")
    assert result.returncode == 1
    report = {r["id"]: r for r in json.loads(result.stdout)["results"]}
    assert report["PIKACI-004"]["evidence"] == ["pikaci/extra_infer.py:5"]
    assert "chooses a placement or runtime from an id or command" in report["PIKACI-004"]["reason"]
    (evidence,) = report["PIKACI-006"]["evidence"]
    assert re.fullmatch(r"dodo\.py:\d+", evidence)
    line = int(evidence.split(":")[1])
    assert "Lane(" in (repo / "dodo.py").read_text().splitlines()[line - 1]


def test_json_report(repo: Path, tmp_path: Path) -> None:
    result = script(repo, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == {"name", "results"}
    assert report["name"] == "pikaci-invariants"
    assert [r["id"] for r in report["results"]] == ["PIKACI-001", *MUST_IDS]
    for entry in report["results"]:
        assert set(entry) == {"id", "status", "reason", "evidence"}
        assert entry["status"] in ("pass", "unchecked")
        assert isinstance(entry["evidence"], list)
    out = tmp_path / "report.json"
    text = script(repo, "--json-out", str(out))
    assert text.stdout.startswith("invariants: ")
    assert json.loads(out.read_text()) == report


def test_must_invariant_without_a_check_is_unchecked(repo: Path) -> None:
    append(
        repo,
        "invariants/invariants.toml",
        '\n[[invariant]]\nid = "PIKACI-999"\narea = "x"\nkind = "must"\n'
        'statement = "Something no function decides."\nscope = []\n',
    )
    result = script(repo)
    assert result.returncode == 0, result.stdout
    assert "UNCHECKED PIKACI-999: no deterministic check is registered for this id" in result.stdout
    assert "PASS PIKACI-999" not in result.stdout


BAD_SPECS = [
    ("version = 1\n", "version = 2\n", "unsupported invariants spec version in"),
    ('kind = "allowed"', 'kind = "should"', "invariant PIKACI-001 has unsupported kind 'should'"),
    ('id = "PIKACI-003"', 'id = "PIKACI-002"', "contains duplicate invariant id PIKACI-002"),
    (
        'statement = "Every lane has an explicit timeout',
        'statement = "  "\nnote = "Every lane has an explicit timeout',
        "invariant PIKACI-006 must have a statement",
    ),
    (
        'scope = [\n  "dodo.py",\n]\n',
        'scope = "dodo.py"\n',
        "invariant PIKACI-006 must use a string array for scope",
    ),
    ('id = "PIKACI-001"', 'id = " "', "contains an invariant without a non-empty id"),
]


@pytest.mark.parametrize(("old", "new", "message"), BAD_SPECS)
def test_bad_spec_is_a_one_line_error(repo: Path, old: str, new: str, message: str) -> None:
    spec = repo / "invariants" / "invariants.toml"
    text = spec.read_text()
    if old == 'scope = [\n  "dodo.py",\n]\n':  # the last entry's scope
        head, _, tail = text.rpartition(old)
        spec.write_text(head + new + tail)
    else:
        edit(repo, "invariants/invariants.toml", old, new)
    result = script(repo)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    assert message in result.stderr
    assert result.stderr.count("\n") == 1


def test_spec_without_invariants(repo: Path) -> None:
    (repo / "invariants" / "invariants.toml").write_text('version = 1\nname = "empty"\n')
    result = script(repo)
    assert result.returncode == 2
    assert "must define at least one [[invariant]] entry" in result.stderr


@pytest.mark.slow
def test_doit_fails_on_a_bad_spec(repo: Path) -> None:
    edit(repo, "invariants/invariants.toml", "version = 1\n", "version = 3\n")
    result = doit_check(repo)
    assert result.returncode != 0
    assert "unsupported invariants spec version" in result.stdout + result.stderr


def test_plain_doit_does_not_run_the_check(repo: Path) -> None:
    probe = project_at(repo).run(
        [
            sys.executable,
            "-c",
            "import json, runpy; "
            "print(json.dumps(runpy.run_path('dodo.py')['DOIT_CONFIG']['default_tasks']))",
        ],
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    defaults = json.loads(probe.stdout)
    assert defaults
    assert not any(name.startswith("check_invariants") for name in defaults)


def test_bad_manifest_fails_its_invariant_naming_the_file(repo: Path) -> None:
    append(repo, "ci/forge-lanes.toml", "\n[[branch.lanes]]\nid = \n")
    result = script(repo)
    assert result.returncode == 1
    assert re.search(
        r"^FAIL PIKACI-005: .*ci/forge-lanes\.toml: invalid TOML: .*line \d+", result.stdout, re.M
    )


def test_runs_on_python39(repo: Path) -> None:
    # .ci/run makes .venv39 before the first suite, so CI always has one
    require_component(
        PYTHON39 is not None,
        "a Python 3.9 with tomli (PIKACI_VENV=.venv39 PIKACI_PYTHON=<python3.9> "
        "scripts/bootstrap.sh)",
    )
    result = script(repo, "--json", python=str(PYTHON39))
    default = script(repo, "--json")
    assert result.returncode == default.returncode, result.stderr
    assert result.returncode in (0, 1), result.stderr
    assert json.loads(result.stdout) == json.loads(default.stdout)
    no_timeout(repo)
    broken = script(repo, python=str(PYTHON39))
    assert broken.returncode == 1
    assert "FAIL PIKACI-006: " in broken.stdout
