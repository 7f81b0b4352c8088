"""scripts/check_invariants.py on temporary copies of this repository (`doit check_invariants`
and each invariant broken in a copy: `tests/integration/test_invariants.py`). The import rules
(PIKACI-007, PIKACI-008) are broken in small synthetic repositories instead, so that what they
assert does not depend on the state of the real tree."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

from tests.fixtures.invariants import (
    BREAKS,
    MUST_IDS,
    append,
    copy_repository,
    edit,
    load_checker,
    no_timeout,
    project_at,
    runtime_from_id,
    script,
    statuses,
)
from tests.fixtures.support import REPO_ROOT, require_component


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


def test_this_repository_passes(repo_copy: Path) -> None:
    result = script(repo_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("invariants: pikaci-invariants\n")
    assert statuses(result.stdout) == {
        "PIKACI-001": "UNCHECKED",
        **dict.fromkeys(MUST_IDS, "PASS"),
    }
    assert "UNCHECKED PIKACI-001: kind allowed: nothing to check" in result.stdout


def test_failure_evidence_names_file_and_line(repo_copy: Path) -> None:
    runtime_from_id(repo_copy)
    no_timeout(repo_copy)
    result = script(repo_copy, "--json")
    assert result.returncode == 1
    report = {r["id"]: r for r in json.loads(result.stdout)["results"]}
    assert report["PIKACI-004"]["evidence"] == ["pikaci/extra_infer.py:5"]
    assert "chooses a placement or runtime from an id or command" in report["PIKACI-004"]["reason"]
    (evidence,) = report["PIKACI-006"]["evidence"]
    assert re.fullmatch(r"dodo\.py:\d+", evidence)
    line = int(evidence.split(":")[1])
    assert "Lane(" in (repo_copy / "dodo.py").read_text().splitlines()[line - 1]


def test_json_report(repo_copy: Path, tmp_path: Path) -> None:
    result = script(repo_copy, "--json")
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
    text = script(repo_copy, "--json-out", str(out))
    assert text.stdout.startswith("invariants: ")
    assert json.loads(out.read_text()) == report


def test_must_invariant_without_a_check_is_unchecked(repo_copy: Path) -> None:
    append(
        repo_copy,
        "invariants/invariants.toml",
        '\n[[invariant]]\nid = "PIKACI-999"\narea = "x"\nkind = "must"\n'
        'statement = "Something no function decides."\nscope = []\n',
    )
    result = script(repo_copy)
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
def test_bad_spec_is_a_one_line_error(repo_copy: Path, old: str, new: str, message: str) -> None:
    spec = repo_copy / "invariants" / "invariants.toml"
    text = spec.read_text()
    if old == 'scope = [\n  "dodo.py",\n]\n':  # the last entry's scope
        head, _, tail = text.rpartition(old)
        spec.write_text(head + new + tail)
    else:
        edit(repo_copy, "invariants/invariants.toml", old, new)
    result = script(repo_copy)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    assert message in result.stderr
    assert result.stderr.count("\n") == 1


def test_spec_without_invariants(repo_copy: Path) -> None:
    (repo_copy / "invariants" / "invariants.toml").write_text('version = 1\nname = "empty"\n')
    result = script(repo_copy)
    assert result.returncode == 2
    assert "must define at least one [[invariant]] entry" in result.stderr


def test_plain_doit_does_not_run_the_check(repo_copy: Path) -> None:
    probe = project_at(repo_copy).run(
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


def test_bad_manifest_fails_its_invariant_naming_the_file(repo_copy: Path) -> None:
    append(repo_copy, "ci/forge-lanes.toml", "\n[[branch.lanes]]\nid = \n")
    result = script(repo_copy)
    assert result.returncode == 1
    assert re.search(
        r"^FAIL PIKACI-005: .*ci/forge-lanes\.toml: invalid TOML: .*line \d+", result.stdout, re.M
    )


def test_runs_on_python39(repo_copy: Path) -> None:
    # .ci/run makes .venv39 before the first suite, so CI always has one
    require_component(
        PYTHON39 is not None,
        "a Python 3.9 with tomli (PIKACI_VENV=.venv39 PIKACI_PYTHON=<python3.9> "
        "scripts/bootstrap.sh)",
    )
    result = script(repo_copy, "--json", python=str(PYTHON39))
    default = script(repo_copy, "--json")
    assert result.returncode == default.returncode, result.stderr
    assert result.returncode in (0, 1), result.stderr
    assert json.loads(result.stdout) == json.loads(default.stdout)
    no_timeout(repo_copy)
    broken = script(repo_copy, python=str(PYTHON39))
    assert broken.returncode == 1
    assert "FAIL PIKACI-006: " in broken.stdout


def test_a_nested_repository_keeps_its_own_path_filters(repo_copy: Path) -> None:
    """examples/pika is a repository of its own (its dodo.py, its manifest): its filters are
    not a second filter list of this one; the same TOML in a plain directory is."""
    manifest = 'version = 1\n\n[[branch.lanes]]\nid = "x"\ntitle = "x"\npaths = ["x/**"]\n'
    nested = repo_copy / "examples" / "shop"
    (nested / "ci").mkdir(parents=True)
    (nested / "ci" / "forge-lanes.toml").write_text(manifest)
    (nested / "dodo.py").write_text("CATALOG = None\n")
    assert statuses(script(repo_copy).stdout)["PIKACI-003"] == "PASS"
    (nested / "dodo.py").unlink()
    result = script(repo_copy)
    assert statuses(result.stdout)["PIKACI-003"] == "FAIL"
    assert (
        "examples/shop/ci/forge-lanes.toml:6 declares a path-filter list `paths`" in result.stdout
    )
