"""The suite's shared fixtures, registered once for every test (pytest allows `pytest_plugins`
only in this, the root conftest). Tests ask for the fixtures by name and import the plain
helpers (`LaneSpec`, `Project`, `REPO_ROOT`, ...) from the `tests.fixtures` modules.

`tests/unit/` holds the in-process tests (some of them use real components in-process: Nix,
the loopback sshd, bubblewrap); `tests/integration/` the ones that drive doit or the console
script in subprocesses, all marked `slow` by `tests/integration/conftest.py`."""

pytest_plugins = [
    "tests.fixtures.vocabulary",  # first: tests.fixtures.projects imports it
    "tests.fixtures.projects",
    "tests.fixtures.staged",
    "tests.fixtures.sshd",
    "tests.fixtures.builder",
    "tests.fixtures.incus",
    "tests.fixtures.serving",
    "tests.fixtures.invariants",
]
