"""pikaci.payloads.nix against Debian's real nix: flake and classic builds, validity, closures, errors."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import List

import pytest

from pikaci.payloads import nix

TAG = f"pikaci-nix-test-{os.getpid()}"

CLASSIC = textwrap.dedent(
    """\
    rec {
      leaf = derivation {
        name = "TAG-leaf"; system = "x86_64-linux"; builder = "/bin/sh";
        args = [ "-c" "echo leaf > $out" ];
      };
      root = derivation {
        name = "TAG-root"; system = "x86_64-linux"; builder = "/bin/sh";
        args = [ "-c" "echo ${leaf} > $out" ];
      };
      broken = derivation {
        name = "TAG-broken"; system = "x86_64-linux"; builder = "/bin/sh";
        args = [ "-c" "echo compiling; echo 'boom: the build failed' >&2; exit 7" ];
      };
    }
    """
).replace("TAG", TAG)

FLAKE = textwrap.dedent(
    """\
    {
      outputs = { self }: {
        thing = derivation {
          name = "TAG-flake"; system = "x86_64-linux"; builder = "/bin/sh";
          args = [ "-c" "echo flake > $out" ];
        };
        typo = { broken = builtins.abort "no such payload"; }.broken;
      };
    }
    """
).replace("TAG", TAG)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    root.mkdir()
    (root / "default.nix").write_text(CLASSIC)
    (root / "flake.nix").write_text(FLAKE)
    (root / "flake.lock").write_text('{"nodes": {"root": {}}, "root": "root", "version": 7}\n')
    return root


def test_flake_and_classic_builds_return_store_paths(source: Path):
    log: List[str] = []
    (flake_out,) = nix.build(nix.BuildRef("thing"), source, log.append)
    assert flake_out.startswith("/nix/store/") and flake_out.endswith(f"{TAG}-flake")
    assert Path(flake_out).read_text() == "flake\n"
    (classic_out,) = nix.build(nix.BuildRef("root", file="default.nix"), source, log.append)
    assert classic_out.endswith(f"{TAG}-root")
    commands = [line for line in log if line.startswith("$ ")]
    assert commands[0] == (
        "$ nix --extra-experimental-features 'nix-command flakes' build --no-link --json "
        f"'path:{source}#thing'"  # shell-quoted: the log line can be pasted into a shell
    )
    assert commands[1].endswith(f"--json --file {source}/default.nix root")
    assert nix.BuildRef("root", "default.nix").describe(source) == f"{source}/default.nix#root"


def test_validity_and_closure(source: Path):
    log: List[str] = []
    (root,) = nix.build(nix.BuildRef("root", file="default.nix"), source, log.append)
    (leaf,) = nix.build(nix.BuildRef("leaf", file="default.nix"), source, log.append)
    assert nix.is_valid(root, log.append)
    assert not nix.is_valid(f"/nix/store/{'0' * 32}-{TAG}-never-built", log.append)
    assert set(nix.closure([root], log.append)) == {root, leaf}
    assert nix.closure([leaf], log.append) == [leaf]


def test_a_failed_build_is_one_line_with_nix_message_and_full_output_logged(source: Path):
    log: List[str] = []
    with pytest.raises(nix.NixError) as caught:
        nix.build(nix.BuildRef("broken", file="default.nix"), source, log.append)
    message = str(caught.value)
    assert message.startswith("nix build of `broken` failed: ")
    assert "\n" not in message
    assert "boom: the build failed" in "\n".join(log)  # the builder's own output is logged


def test_an_evaluation_error_names_the_attribute_and_where(source: Path):
    with pytest.raises(nix.NixError) as caught:
        nix.build(nix.BuildRef("typo"), source, lambda line: None)
    message = str(caught.value)
    assert message.startswith("nix build of `typo` failed: ")
    assert "no such payload" in message and "\n" not in message


def test_missing_nix_is_a_clear_error(source: Path):
    with pytest.raises(nix.NixError, match=r"`nix-missing` not found on PATH: install Nix"):
        nix.build(nix.BuildRef("thing"), source, lambda line: None, program="nix-missing")


def test_summarize_error_prefers_the_first_error_line():
    lines = [
        "building '/nix/store/x.drv'...",
        "error: builder for '/nix/store/x.drv' failed with exit code 7",
        "       at /src/flake.nix:3:5:",
        "error: 1 dependencies of derivation failed",
    ]
    assert nix.summarize_error(lines, 1) == (
        "builder for '/nix/store/x.drv' failed with exit code 7 (at /src/flake.nix:3:5)"
    )
    assert nix.summarize_error(["plain last words"], 1) == "plain last words"
    assert nix.summarize_error([], 9) == "exit status 9"
