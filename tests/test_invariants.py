"""scripts/check_invariants.py and `doit check_invariants`, on temporary copies of this
repository: each invariant broken in a copy fails with its own id and only it."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable, Dict, List, Optional

import pytest

from tests.conftest import REPO_ROOT, Project, require_component

SCRIPT = REPO_ROOT / "scripts" / "check_invariants.py"
COPIED = ("dodo.py", "pikaci", "scripts", "ci", "invariants", "pyproject.toml")
MUST_IDS = ("PIKACI-002", "PIKACI-003", "PIKACI-004", "PIKACI-005", "PIKACI-006")


def find_python39() -> Optional[str]:
    """A working Python 3.9 (a pyenv shim without the version selected does not count)."""
    candidates = [
        shutil.which("python3.9"),
        *map(str, Path.home().glob(".pyenv/versions/3.9*/bin/python3.9")),
    ]
    for candidate in candidates:
        if (
            candidate
            and subprocess.run(
                [candidate, "-c", "pass"], capture_output=True, check=False
            ).returncode
            == 0
        ):
            return candidate
    return None


PYTHON39 = find_python39()


def reference_toml() -> ModuleType:
    """The parser to compare against: tomllib, or tomli (its backport, a dependency) below 3.11."""
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    import tomli

    return tomli


def load_checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_invariants", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in COPIED:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=ignore)
        elif source.is_file():
            shutil.copy2(source, root / name)
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


BREAKS: List[tuple] = [
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


def test_every_checked_invariant_has_a_break() -> None:
    checker = load_checker()
    spec = checker.load_spec(REPO_ROOT / "invariants" / "invariants.toml")
    must = {entry["id"] for entry in spec["invariant"] if entry["kind"] == "must"}
    assert must == set(MUST_IDS) == set(checker.CHECKS) == {i for i, _ in BREAKS}


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
    repo: Path, invariant: str, breaker: Callable[[Path], None]
) -> None:
    breaker(repo)
    result = doit_check(repo)
    assert result.returncode == 1, result.stdout + result.stderr
    found = statuses(result.stdout)
    assert found[invariant] == "FAIL", result.stdout
    assert found.pop("PIKACI-001") == "UNCHECKED"
    del found[invariant]
    assert set(found.values()) == {"PASS"}, result.stdout
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
    for extra in ([], ["--builtin-toml"]):
        result = script(repo, *extra)
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


# -- the built-in TOML parser -----------------------------------------------------------------------


@pytest.mark.parametrize("relpath", ["invariants/invariants.toml", "ci/forge-lanes.toml"])
def test_builtin_toml_parser_matches_tomllib(repo: Path, relpath: str) -> None:
    tomllib = reference_toml()
    checker = load_checker()
    text = (repo / relpath).read_text()
    assert checker.parse_toml(text, relpath) == tomllib.loads(text)
    assert checker.load_toml(repo / relpath, builtin=True) == tomllib.loads(text)


def test_builtin_toml_parser_subset() -> None:
    tomllib = reference_toml()
    checker = load_checker()
    text = (
        "# comment\n"
        'a = "x # not a comment" # comment\n'
        "b = 'lit\\eral'\n"
        'c = "esc\\"aped\\u00e9\\n"\n'
        "d = -1_000\n"
        "e = true\n"
        'f = [ "one", # c\n  "two",\n\n  "three" ]\n'
        "g = []\n"
        '"quoted key" = false\n'
        "[t.u]\nk = 1\n"
        "[[t.list]]\nn = 1\n[[t.list]]\nn = 2\n[t.list.sub]\nm = 3\n"
    )
    assert checker.parse_toml(text, "x.toml") == tomllib.loads(text)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("a = 1\nb = { c = 1 }\n", 2),
        ("a = 1.5\n", 1),
        ('a = """\nx"""\n', 1),
        ("a.b = 1\n", 1),
        ("a = 1\na = 2\n", 2),
        ("a = [\n  1,\n", 1),
        ("a = 1979-05-27\n", 1),
        ("just words\n", 1),
        ('a = "x" "y"\n', 1),
        ("[a]\nx = 1\n[a]\n", 3),
    ],
)
def test_builtin_toml_parser_rejects_the_rest(text: str, line: int) -> None:
    checker = load_checker()
    with pytest.raises(checker.SpecError) as caught:
        checker.parse_toml(text, "bad.toml")
    message = str(caught.value)
    assert message.startswith(f"bad.toml:{line}: ")
    assert "\n" not in message


def test_builtin_toml_parser_end_to_end(repo: Path) -> None:
    default = script(repo)
    builtin = script(repo, "--builtin-toml")
    assert builtin.returncode == default.returncode == 0
    assert builtin.stdout == default.stdout


def test_bad_manifest_fails_its_invariant_with_file_and_line(repo: Path) -> None:
    append(repo, "ci/forge-lanes.toml", "\n[[branch.lanes]]\nid = { a = 1 }\n")
    result = script(repo, "--builtin-toml")
    assert result.returncode == 1
    assert re.search(
        r"^FAIL PIKACI-005: .*ci/forge-lanes\.toml:\d+: unsupported TOML", result.stdout, re.M
    )


def test_runs_on_python39(repo: Path) -> None:
    require_component(PYTHON39 is not None, "no Python 3.9 interpreter (pyenv) to run the script")
    result = script(repo, "--json", python=str(PYTHON39))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == json.loads(script(repo, "--json").stdout)
    no_timeout(repo)
    broken = script(repo, python=str(PYTHON39))
    assert broken.returncode == 1
    assert "FAIL PIKACI-006: " in broken.stdout
