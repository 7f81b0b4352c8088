"""docs/builders.md cannot drift from the code: every builder setting the code reads is in its
table with the code's default, and its example environment file is accepted as written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict

from pikaci.builder import config as builder_config
from pikaci.builder.transport import DEFAULT_REMOTE_WORK_DIR
from pikaci.incus import config as incus_config
from pikaci.runtimes.incus_runtime import ENV_REAP_AFTER
from pikaci.settings import DEFAULT_MAX_CONCURRENT, ENV_MAX_CONCURRENT, max_concurrent_from
from tests.fixtures.support import REPO_ROOT

DOC = (REPO_ROOT / "docs" / "builders.md").read_text()


def table() -> Dict[str, str]:
    """setting -> its default column."""
    rows = re.findall(r"^\| `(PIKACI_[A-Z_]+)` \| ([^|]*) \|", DOC, re.M)
    return {name: default.strip() for name, default in rows}


def example_env() -> Dict[str, str]:
    block = DOC.split("`builder.env`", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    env = {}
    for line in block.splitlines():
        name, _, value = line.partition("=")
        env[name] = value
    return env


def test_every_setting_the_code_reads_is_documented_with_its_default() -> None:
    documented = table()
    expected = {
        builder_config.ENV_BUILDER: f"`{builder_config.DEFAULT_BUILDER}`",
        builder_config.ENV_BUILDER_SSH_CONFIG: None,
        builder_config.ENV_BUILDER_WORK_DIR: f"`{DEFAULT_REMOTE_WORK_DIR}`",
        builder_config.ENV_BUILDER_NIX_STORE: None,
        ENV_MAX_CONCURRENT: f"`{DEFAULT_MAX_CONCURRENT}`",
        incus_config.ENV_PROJECT: f"`{incus_config.DEFAULT_PROJECT}`",
        incus_config.ENV_PROFILE: f"`{incus_config.DEFAULT_PROFILE}`",
        incus_config.ENV_IMAGE_ALIAS: f"`{incus_config.DEFAULT_IMAGE_ALIAS}`",
        incus_config.ENV_INSTANCE_TYPE: f"`{incus_config.INSTANCE_VM}`",
        incus_config.ENV_SUDO: None,
        incus_config.ENV_STORAGE_POOL: f"`{incus_config.DEFAULT_STORAGE_POOL}`",
        incus_config.ENV_CREATE: f"`{incus_config.CREATE_AUTO}`",
        ENV_REAP_AFTER: f"`{incus_config.REAP_AFTER_SECS}`",
    }
    assert set(documented) == set(expected)
    for name, default in expected.items():
        if default is not None:
            assert documented[name] == default, name
    for legacy in incus_config.LEGACY_ENV.values():
        assert f"`{legacy}`" in DOC


def test_the_example_environment_is_accepted_as_written() -> None:
    env = example_env()
    assert set(env) <= set(table())
    builder = builder_config.builder_from_environment(env)
    assert (builder.host, str(builder.ssh_config), builder.remote_work_dir) == (
        env["PIKACI_BUILDER"],
        env["PIKACI_BUILDER_SSH_CONFIG"],
        env["PIKACI_BUILDER_WORK_DIR"],
    )
    incus = incus_config.incus_settings_from_environment(env, sudo_default=True)
    assert incus.program == ("incus",) and incus.storage_pool == env["PIKACI_INCUS_STORAGE_POOL"]
    assert incus.profiles == ("default",)
    assert max_concurrent_from(env) == int(env["PIKACI_MAX_CONCURRENT_EXECUTES"])


def test_the_readme_links_the_builder_pages() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    assert "docs/builders.md" in readme and "docs/incus-builder.md" in readme
    assert Path(REPO_ROOT / "docs" / "incus-builder.md").is_file()
