"""The Nix expressions, checked without nixpkgs (none is available offline here).

Every .nix file must parse. nix/ci/linux-rust.nix and nix/incus/pikaci-image.nix are evaluated
against stub `pkgs` / `crane` / `lib` written in Nix, where the builders return the attribute
set they were given, so the test sees exactly what would reach crane and the NixOS module
system. The install script linux-rust.nix hands to crane then runs for real (bash, jq, awk)
against a recorded-style cargo JSON log, and its lane wrappers run inside a bubblewrap
namespace laid out like the guest (/staged/..., /workspace/snapshot,
/run/current-system/sw/bin).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from tests.fixtures.support import REPO_ROOT, require_component

LINUX_RUST = REPO_ROOT / "nix/ci/linux-rust.nix"
IMAGE = REPO_ROOT / "nix/incus/pikaci-image.nix"
RUNNER = REPO_ROOT / "pikaci/guest/runner.py"

GUEST_BASH = "#!/run/current-system/sw/bin/bash"
GUEST_PYTHON = "#!/run/current-system/sw/bin/python3"
DEPS_PATH = "/staged/linux-rust/workspace-deps"
BUILD_PATH = "/staged/linux-rust/workspace-build"
STUB_JQ = "/stub/jq/bin/jq"

# Offline and read-only: no binary cache lookups, nothing written to the store (builtins.toFile
# only computes its path).
NIX_OPTIONS = ["--option", "substituters", "", "--readonly-mode"]


def nix_instantiate(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["nix-instantiate", *NIX_OPTIONS, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NIX_PATH": ""},
        check=False,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def nix_eval(expr: str) -> Any:
    return json.loads(nix_instantiate("--eval", "--strict", "--json", "-E", expr).stdout)


def nix_string(path: Path) -> str:
    """A Nix path literal for `path` (absolute paths need no quoting unless they contain spaces)."""
    assert " " not in str(path), path
    return str(path)


# -- every file parses ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "relpath",
    [
        "nix/ci/linux-rust.nix",
        "nix/incus/pikaci-image.nix",
        "nix/ci/lib.nix",
        "nix/ci/demo.nix",
        "flake.nix",
    ],
)
def test_parses(relpath: str):
    nix_instantiate("--parse", str(REPO_ROOT / relpath))


# -- linux-rust.nix against stub nixpkgs and crane ------------------------------------------

LANES = """{
    unit = { package = "core"; testArgs = "--test-threads=1"; };
    it = { binaries = [ "smoke" "api" ]; };
    all = { };
  }"""

LINUX_RUST_STUBS = """
let
  stub = builder: args: args // { __stub = builder; };
  pkgs = {
    jq = "/stub/jq";
    stdenv.hostPlatform.system = "x86_64-linux";
  };
  craneLib = {
    buildDepsOnly = stub "buildDepsOnly";
    mkCargoDerivation = stub "mkCargoDerivation";
  };
  crane = { mkLib = p: assert p == pkgs; craneLib; };  # the flake input's shape
  call = args: import @LINUX_RUST@ ({ inherit pkgs; src = "/stub/src"; } // args);

  # every file lib.nix's installScript copies: builtins.toFile is content-addressed, so the path
  # in the install script proves the installed bytes are these texts
  installed = drv:
    [{ dest = "share/pikaci/payload-manifest.json"; text = drv.passthru.pikaci.manifest;
       path = builtins.toFile "payload-manifest.json" drv.passthru.pikaci.manifest; }]
    ++ map (name: { dest = "bin/${name}"; text = drv.passthru.pikaci.wrappers.${name};
                    path = builtins.toFile name drv.passthru.pikaci.wrappers.${name}; })
      (builtins.attrNames (drv.passthru.pikaci.wrappers or { }));
  fails = args: !(builtins.tryEval (builtins.deepSeq (call args) true)).success;
  install = drv: { script = drv.installPhaseCommand; installed = installed drv; };

  main = call { inherit crane; lanes = @LANES@; };
  viaLib = call { crane = craneLib; lanes = @LANES@; };
in
{
  inherit main;
  installedDeps = installed main.workspaceDeps;
  installedBuild = installed main.workspaceBuild;
  sameWithInstantiatedCraneLib = viaLib == main;
  defaultLanes = (call { inherit crane; }).workspaceBuild.passthru.pikaci;
  missingBinary = install (call { inherit crane; lanes.x.binaries = [ "smoke" "nope" ]; })
    .workspaceBuild;
  unknownPackage = install (call { inherit crane; lanes.x.package = "nope"; }).workspaceBuild;
  rejected = {
    badId = fails { inherit crane; lanes."run/x" = { }; };
    unknownKey = fails { inherit crane; lanes.x.testArg = "-q"; };
    emptyBinaries = fails { inherit crane; lanes.x.binaries = [ ]; };
    testArgsList = fails { inherit crane; lanes.x.testArgs = [ "-q" ]; };
  };
}
"""


@pytest.fixture(scope="module")
def rust() -> Dict[str, Any]:
    expr = LINUX_RUST_STUBS.replace("@LINUX_RUST@", nix_string(LINUX_RUST))
    return nix_eval(expr.replace("@LANES@", LANES))


def test_builders_get_deps_then_build(rust: Dict[str, Any]):
    deps, build = rust["main"]["workspaceDeps"], rust["main"]["workspaceBuild"]
    assert deps["__stub"] == "buildDepsOnly" and build["__stub"] == "mkCargoDerivation"
    assert build["cargoArtifacts"] == deps
    assert build["doInstallCargoArtifacts"] is False
    # the same cargo invocation on both sides, or cargo rebuilds the dependencies
    assert deps["buildPhaseCargoCommand"] == "cargo test --locked --no-run --workspace"
    assert build["buildPhaseCargoCommand"].startswith(
        "cargo test --locked --no-run --workspace --message-format json-render-diagnostics"
        " > cargo-build.json\n"
    )
    for drv in (deps, build):
        assert drv["src"] == "/stub/src" and drv["cargoLock"] == "/stub/src/Cargo.lock"
        # stdenv's fixup would point `#!/run/current-system/sw/bin/bash` at a store bash
        assert drv["dontPatchShebangs"] is True
    assert rust["sameWithInstantiatedCraneLib"] is True


def test_manifests(rust: Dict[str, Any]):
    deps, build = rust["main"]["workspaceDeps"], rust["main"]["workspaceBuild"]
    deps_manifest = json.loads(deps["passthru"]["pikaci"]["manifest"])
    build_manifest = json.loads(build["passthru"]["pikaci"]["manifest"])

    assert deps_manifest["kind"] == "staged_linux_workspace_deps_v1"
    assert deps_manifest["entrypoints"] == []
    assert deps_manifest["mounts"] == [
        {
            "name": "workspace_deps_root",
            "relative_path": ".",
            "guest_path": DEPS_PATH,
            "read_only": True,
        }
    ]
    assert build_manifest["kind"] == "staged_linux_workspace_build_v1"
    assert build_manifest["mounts"] == [
        {
            "name": "workspace_build_root",
            "relative_path": ".",
            "guest_path": BUILD_PATH,
            "read_only": True,
        }
    ]
    assert build_manifest["entrypoints"] == [
        {"name": name, "relative_path": f"bin/{name}"} for name in ["run-all", "run-it", "run-unit"]
    ]
    assert {root["relative_path"] for root in build_manifest["asset_roots"]} == {
        "target",
        "share/pikaci",
    }
    for manifest in (deps_manifest, build_manifest):
        assert manifest["schema_version"] == 1


def test_install_scripts_copy_exactly_the_passthru_texts(rust: Dict[str, Any]):
    deps, build = rust["main"]["workspaceDeps"], rust["main"]["workspaceBuild"]
    scripts = {"deps": deps["postInstall"], "build": build["installPhaseCommand"]}
    for role, files in (("deps", rust["installedDeps"]), ("build", rust["installedBuild"])):
        for entry in files:
            assert f'cp {entry["path"]} "$out/{entry["dest"]}"' in scripts[role], entry["dest"]
    assert [entry["dest"] for entry in rust["installedBuild"]] == [
        "share/pikaci/payload-manifest.json",
        "bin/run-all",
        "bin/run-it",
        "bin/run-unit",
    ]


def test_one_guest_local_wrapper_per_lane(rust: Dict[str, Any]):
    wrappers: Dict[str, str] = rust["main"]["workspaceBuild"]["passthru"]["pikaci"]["wrappers"]
    assert sorted(wrappers) == ["run-all", "run-it", "run-unit"]
    for name, text in wrappers.items():
        assert text.startswith(GUEST_BASH + "\n"), name
        assert "/nix/store" not in text, name
        assert "snapshot=/workspace/snapshot\n" in text and 'cd "$snapshot"\n' in text
        assert f"build_root={BUILD_PATH}\n" in text
        lane = name[len("run-") :]
        assert f'list="$build_root/share/pikaci/lanes/{lane}.tsv"' in text
    assert '"$build_root/target/$test_binary" --test-threads=1 "$@"' in wrappers["run-unit"]


def test_no_lanes_means_one_workspace_lane(rust: Dict[str, Any]):
    pikaci = rust["defaultLanes"]
    assert list(pikaci["wrappers"]) == ["run-workspace"]
    assert pikaci["lanes"] == {"workspace": {"package": None, "binaries": None, "testArgs": ""}}
    assert [e["name"] for e in json.loads(pikaci["manifest"])["entrypoints"]] == ["run-workspace"]


def test_bad_lanes_are_evaluation_errors(rust: Dict[str, Any]):
    assert rust["rejected"] == {
        "badId": True,
        "unknownKey": True,
        "emptyBinaries": True,
        "testArgsList": True,
    }
    expr = LINUX_RUST_STUBS.replace("@LINUX_RUST@", nix_string(LINUX_RUST))
    expr = expr.replace("@LANES@", '{ x = { testArg = "-q"; }; }')
    result = nix_instantiate("--eval", "--strict", "--json", "-E", expr + ".main", check=False)
    assert result.returncode != 0
    assert "lane `x`: unknown attribute(s) testArg" in result.stderr


# -- the install script and wrappers, run for real -------------------------------------------


def artifact(
    package_id: str,
    manifest_path: Path,
    target: str,
    kind: str,
    executable: Optional[Path],
    test: bool = True,
) -> Dict[str, Any]:
    """A cargo `compiler-artifact` message, with the fields linux-rust.nix reads."""
    return {
        "reason": "compiler-artifact",
        "package_id": package_id,
        "manifest_path": str(manifest_path),
        "target": {"kind": [kind], "crate_types": [kind], "name": target, "src_path": "x.rs"},
        "profile": {"opt_level": "0", "debuginfo": 2, "test": test},
        "features": [],
        "filenames": [str(executable) if executable else "/x/libdep.rlib"],
        "executable": str(executable) if executable else None,
        "fresh": False,
    }


FAKE_TEST = """#!/bin/sh
echo "{name} pwd=$(pwd) manifest_dir=$CARGO_MANIFEST_DIR args=$*"
case " $* " in *" --fail-{name} "*) exit 101 ;; esac
"""


@pytest.fixture
def cargo_build_dir(tmp_path: Path) -> Path:
    """What `cargo test --no-run` leaves in the build directory: the two JSON files and the
    test executables (shell scripts standing in for them)."""
    src = tmp_path / "build" / "source"
    target = src / "target"
    core = "path+file:///build/source#core@0.1.0"
    api = "path+file:///build/source/crates/api#api-server@0.1.0"
    executables = {
        "core": target / "debug/deps/core-1111",
        "smoke": target / "debug/deps/smoke-2222",
        "api": target / "debug/deps/api-3333",
    }
    for name, path in executables.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(FAKE_TEST.format(name=name))
        path.chmod(0o755)
    (target / "debug/api-server").write_text("not a test\n")
    messages = [
        artifact("registry+https://x#dep@1.0.0", tmp_path / "dep/Cargo.toml", "dep", "lib", None),
        artifact(core, src / "Cargo.toml", "core", "lib", executables["core"]),
        artifact(core, src / "Cargo.toml", "smoke", "test", executables["smoke"]),
        artifact(api, src / "crates/api/Cargo.toml", "api", "lib", executables["api"]),
        artifact(
            api,
            src / "crates/api/Cargo.toml",
            "api-server",
            "bin",
            target / "debug/api-server",
            test=False,
        ),
        {"reason": "build-finished", "success": True},
    ]
    (src / "cargo-build.json").write_text("".join(json.dumps(m) + "\n" for m in messages))
    metadata = {
        "packages": [
            {"id": core, "name": "core", "manifest_path": str(src / "Cargo.toml")},
            {"id": api, "name": "api-server", "manifest_path": str(src / "crates/api/Cargo.toml")},
        ],
        "workspace_root": str(src),
        "target_directory": str(target),
        "version": 1,
    }
    (src / "cargo-metadata.json").write_text(json.dumps(metadata))
    return src


def run_install(script: str, installed: List[Dict[str, str]], build_dir: Path, out: Path):
    """Run an install script the way stdenv would (bash, errexit, nounset, pipefail), with the
    toFile paths it copies replaced by the texts they stand for."""
    jq = shutil.which("jq")
    require_component(jq is not None, "jq is not installed (apt-get install jq)")
    assert jq is not None
    files = build_dir.parent / "files"
    files.mkdir(exist_ok=True)
    for index, entry in enumerate(installed):
        local = files / str(index)
        local.write_text(entry["text"])
        script = script.replace(entry["path"], str(local))
    assert "/nix/store" not in script
    return subprocess.run(
        ["bash", "-c", "set -eu -o pipefail\n" + script.replace(STUB_JQ, jq)],
        cwd=build_dir,
        env={"PATH": os.environ["PATH"], "out": str(out)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_install_selects_copies_and_installs(
    rust: Dict[str, Any], cargo_build_dir: Path, tmp_path: Path
):
    out = tmp_path / "out"
    build = rust["main"]["workspaceBuild"]
    result = run_install(build["installPhaseCommand"], rust["installedBuild"], cargo_build_dir, out)
    assert result.returncode == 0, result.stderr

    lanes = out / "share/pikaci/lanes"
    # package dir (relative to the workspace root), executable (relative to target/)
    assert (lanes / "unit.tsv").read_text() == ".\tdebug/deps/core-1111\n.\tdebug/deps/smoke-2222\n"
    it_lane = "crates/api\tdebug/deps/api-3333\n.\tdebug/deps/smoke-2222\n"
    assert (lanes / "it.tsv").read_text() == it_lane
    assert len((lanes / "all.tsv").read_text().splitlines()) == 3
    copied = sorted(str(p.relative_to(out / "target")) for p in (out / "target").rglob("*-*"))
    assert copied == ["debug/deps/api-3333", "debug/deps/core-1111", "debug/deps/smoke-2222"]
    assert sorted(p.name for p in (out / "bin").iterdir()) == ["run-all", "run-it", "run-unit"]
    for wrapper in (out / "bin").iterdir():
        assert wrapper.read_text() == build["passthru"]["pikaci"]["wrappers"][wrapper.name]
        assert os.access(wrapper, os.X_OK)
    manifest = (out / "share/pikaci/payload-manifest.json").read_text()
    assert manifest == build["passthru"]["pikaci"]["manifest"]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missingBinary", "lane x: no test executable for target nope"),
        ("unknownPackage", "lane x: selects no test executable"),
    ],
)
def test_install_fails_on_a_lane_that_selects_wrongly(
    rust: Dict[str, Any], cargo_build_dir: Path, tmp_path: Path, case: str, message: str
):
    install = rust[case]
    result = run_install(install["script"], install["installed"], cargo_build_dir, tmp_path / "out")
    assert result.returncode != 0
    assert message in result.stderr


def guest_namespace(out: Path, snapshot: Path) -> List[str]:
    """bwrap arguments for a root laid out like the guest: payload and snapshot mounted
    read-only, /run/current-system/sw/bin = the host's /usr/bin, nothing from /nix."""
    args = ["bwrap", "--die-with-parent", "--ro-bind", "/usr", "/usr"]
    for link in ("bin", "lib", "lib64", "sbin"):
        if Path(f"/{link}").is_symlink():
            args += ["--symlink", f"usr/{link}", f"/{link}"]
        elif Path(f"/{link}").is_dir():
            args += ["--ro-bind", f"/{link}", f"/{link}"]
    return [
        *args,
        *["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"],
        *["--ro-bind", str(out), BUILD_PATH, "--ro-bind", str(snapshot), "/workspace/snapshot"],
        *["--symlink", "/usr/bin", "/run/current-system/sw/bin"],
    ]


def test_wrappers_run_in_a_guest_layout(
    rust: Dict[str, Any], cargo_build_dir: Path, tmp_path: Path
):
    out = tmp_path / "out"
    build = rust["main"]["workspaceBuild"]
    result = run_install(build["installPhaseCommand"], rust["installedBuild"], cargo_build_dir, out)
    assert result.returncode == 0, result.stderr
    snapshot = tmp_path / "snapshot"
    (snapshot / "crates/api").mkdir(parents=True)
    namespace = guest_namespace(out, snapshot)
    probe = subprocess.run([*namespace, "/run/current-system/sw/bin/true"], capture_output=True)
    require_component(
        probe.returncode == 0,
        f"bubblewrap cannot make a namespace here: {probe.stderr.decode().strip()}",
    )

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*namespace, *argv], capture_output=True, text=True, timeout=30, check=False
        )

    passed = run(f"{BUILD_PATH}/bin/run-it", "--exact")
    assert passed.returncode == 0, passed.stderr
    assert "api pwd=/workspace/snapshot/crates/api" in passed.stdout
    assert "manifest_dir=/workspace/snapshot/crates/api args=--exact" in passed.stdout
    assert "smoke pwd=/workspace/snapshot manifest_dir=/workspace/snapshot/. " in passed.stdout
    assert "it: 2 test executables passed" in passed.stdout

    unit = run(f"{BUILD_PATH}/bin/run-unit")
    assert unit.returncode == 0, unit.stderr
    assert unit.stdout.count("args=--test-threads=1\n") == 2

    # every executable runs; the wrapper fails when any of them did
    failed = run(f"{BUILD_PATH}/bin/run-all", "--fail-core")
    assert failed.returncode == 1
    assert [line.split()[0] for line in failed.stdout.splitlines() if "pwd=" in line] == [
        "api",
        "core",
        "smoke",
    ]
    assert "all: 1 of 3 test executables failed: debug/deps/core-1111" in failed.stderr


# -- pikaci-image.nix against a stub module system ------------------------------------------

IMAGE_PACKAGES = [
    "bash",
    "coreutils",
    "python3",
    "git",
    "cacert",
    "util-linux",
    "procps",
    "findutils",
    "gnugrep",
    "gnused",
    "gawk",
    "gnutar",
    "jq",
    "which",
]

IMAGE_STUBS = """
let
  lib = { mkDefault = x: x; mkForce = x: x; };
  pkgs = builtins.listToAttrs (map (name: { inherit name; value = "/stub/pkgs/${name}"; }) @NAMES@)
    // { writeScriptBin = name: text: { inherit name text; }; };
in
import @IMAGE@ { config = { }; inherit lib pkgs; modulesPath = "/stub"; }
"""


@pytest.fixture(scope="module")
def image_config(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    module = IMAGE
    if not RUNNER.is_file():
        # The runner is written alongside; evaluate a copy of the module next to a placeholder.
        root = tmp_path_factory.mktemp("image")
        module = root / "nix/incus/pikaci-image.nix"
        module.parent.mkdir(parents=True)
        shutil.copy2(IMAGE, module)
        (root / "pikaci/guest").mkdir(parents=True)
        (root / "pikaci/guest/runner.py").write_text(GUEST_PYTHON + "\n# placeholder\n")
    names = "[ " + " ".join(f'"{name}"' for name in IMAGE_PACKAGES) + " ]"
    expr = IMAGE_STUBS.replace("@NAMES@", names).replace("@IMAGE@", nix_string(module))
    return nix_eval(expr)


def test_image_imports_the_incus_vm_profile(image_config: Dict[str, Any]):
    assert image_config["imports"] == ["/stub/virtualisation/incus-virtual-machine.nix"]
    assert image_config["networking"]["hostName"] == "pikaci-incus-dev"
    assert image_config["networking"]["useNetworkd"] is True
    [network] = image_config["systemd"]["network"]["networks"].values()
    assert network["networkConfig"]["DHCP"] == "ipv4"
    assert image_config["virtualisation"]["incus"]["agent"]["enable"] is True
    assert image_config["services"]["openssh"]["enable"] is False
    assert image_config["documentation"]["enable"] is False
    assert image_config["nix"]["settings"]["experimental-features"] == ["nix-command", "flakes"]
    assert all(check["assertion"] for check in image_config["assertions"])


def test_image_user(image_config: Dict[str, Any]):
    user = image_config["users"]["users"]["pikaci"]
    assert (user["uid"], user["group"], user["home"]) == (1000, "users", "/home/pikaci")
    assert user["isNormalUser"] is True


def test_image_tmpfiles(image_config: Dict[str, Any]):
    rules = {}
    for rule in image_config["systemd"]["tmpfiles"]["rules"]:
        kind, path, mode, user, group, _age = rule.split()
        assert kind == "d"
        rules[path] = (mode, user, group)
    for path in (
        "/workspace",
        "/workspace/snapshot",
        DEPS_PATH,
        BUILD_PATH,
    ):
        assert rules[path] == ("0755", "root", "root"), path
    for path in ("/run/pika-cloud", "/run/pika-cloud/logs", "/cargo-home", "/cargo-target"):
        assert rules[path] == ("0755", "pikaci", "users"), path
    readme = image_config["environment"]["etc"]["pikaci-incus.README"]["text"]
    for path in rules:
        assert path in readme or path in ("/staged", "/staged/linux-rust"), path


def test_image_packages_and_runner(image_config: Dict[str, Any]):
    packages = image_config["environment"]["systemPackages"]
    assert packages[:-1] == [f"/stub/pkgs/{name}" for name in IMAGE_PACKAGES]
    runner = packages[-1]
    assert runner["name"] == "pikaci-incus-run"
    assert runner["text"].startswith(GUEST_PYTHON + "\n")
    assert runner["text"] == RUNNER.read_text()
