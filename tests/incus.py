"""Real Incus on this machine (system containers) for the tests of the Incus side.

`scripts/incus-setup.sh` installs Incus from bookworm-backports, starts incusd, creates the `dir`
pool and imports the guest image (a Debian minbase laid out like the pikaci guest, with the
current `pikaci/guest/runner.py` as `/run/current-system/sw/bin/pikaci-incus-run`). The fixture
runs it once per session, then makes sure the test project exists:

    project  pikaci-test   ($PIKACI_INCUS_TEST_PROJECT; features.images=false and
                            features.profiles=false: it uses the default project's images and
                            profiles)
    profile  pikaci-guest  (in the default project, so visible in the test project; no devices)

Instances made by tests are named `pikaci-<12 hex>` (`Incus.new_name()`), as the runtime names
them. A test deletes its instances itself (`incus delete --force` in a `finally`); at session end
the fixture force-deletes whatever it finds that was not there when the session started and warns
about it on the terminal, and `tests/test_incus_infra.py` has a test that asserts none leaked.

The project is meant for one test session at a time: the leftover check, and tests that list
the project's instances, count everything in it. Concurrent sessions on one machine each set
their own PIKACI_INCUS_TEST_PROJECT (any new name; the fixture creates it).

incusd keeps running after the session: it is shared by every session and slow to start. Stop
it with `incus admin shutdown` (the next session starts it again).

Import the fixture explicitly: `from tests.incus import incus  # noqa: F401`. Needs root; on a
developer machine without root (or when the setup fails) the tests skip, with CI=true they fail.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

import orjson
import pytest

from tests.conftest import REPO_ROOT, require_component

SETUP = REPO_ROOT / "scripts" / "incus-setup.sh"
SETUP_TIMEOUT_SECS = 900  # cold: packages, debootstrap (~25-60 s) and the image
# where the setup caches the rootfs and the image tarballs
CACHE_DIR = Path(os.environ.get("PIKACI_INCUS_CACHE", "/var/cache/pikaci/incus"))
IMAGE_ALIAS = os.environ.get("PIKACI_INCUS_TEST_IMAGE", "pikaci/test")
PROJECT = os.environ.get("PIKACI_INCUS_TEST_PROJECT", "pikaci-test")
PROFILE = "pikaci-guest"
INSTANCE_PREFIX = "pikaci-"


def incus_cli(
    *args: str, input: Optional[str] = None, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """`incus <args>`; with check, a failure raises with incus's own message."""
    done = subprocess.run(
        ["incus", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and done.returncode != 0:
        raise RuntimeError(
            f"incus {' '.join(args)} exited {done.returncode}: "
            f"{done.stderr.strip() or done.stdout.strip()}"
        )
    return done


@dataclass
class Incus:
    image_alias: str
    image_fingerprint: str
    project: str = PROJECT
    profile: str = PROFILE
    storage_pool: str = "default"
    preexisting: List[str] = field(default_factory=list)

    def run(self, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        """`incus --project <test project> <args>` (see `incus_cli` for the keywords)."""
        return incus_cli("--project", self.project, *args, **kwargs)  # type: ignore[arg-type]

    def new_name(self) -> str:
        """A fresh instance name shaped like the runtime's: `pikaci-<12 hex>`."""
        return INSTANCE_PREFIX + secrets.token_hex(6)

    def init_args(self, instance: str, *config: str) -> List[str]:
        """`incus init` arguments as the runtime builds them (a container: no `--vm`)."""
        flags = [arg for item in sorted(config) for arg in ("--config", item)]
        return [
            "init",
            "--storage",
            self.storage_pool,
            "--profile",
            "default",
            "--profile",
            self.profile,
            *flags,
            self.image_alias,
            instance,
        ]

    def instances(self, prefix: str = INSTANCE_PREFIX) -> List[str]:
        """Names of the test project's instances that start with `prefix`."""
        listed = orjson.loads(self.run("list", "--format", "json").stdout)
        return sorted(item["name"] for item in listed if item["name"].startswith(prefix))

    def exec(
        self,
        instance: str,
        *argv: str,
        input: Optional[str] = None,
        user: Optional[int] = None,
        group: Optional[int] = None,
        cwd: Optional[str] = None,
        env: Sequence[str] = (),
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """`incus exec <instance> -- <argv>`, unchecked: the caller looks at returncode."""
        flags: List[str] = []
        if user is not None:
            flags += ["--user", str(user)]
        if group is not None:
            flags += ["--group", str(group)]
        if cwd is not None:
            flags += ["--cwd", cwd]
        for item in env:
            flags += ["--env", item]
        return self.run(
            "exec", *flags, instance, "--", *argv, input=input, timeout=timeout, check=False
        )

    def delete(self, instance: str) -> None:
        """`incus delete --force`, quiet when the instance is already gone."""
        done = self.run("delete", "--force", instance, check=False, timeout=120)
        if done.returncode != 0 and instance in self.instances(instance):
            raise RuntimeError(f"incus delete --force {instance}: {done.stderr.strip()}")

    def leaked(self) -> List[str]:
        """`pikaci-*` instances that were not there when the session started."""
        return [name for name in self.instances() if name not in self.preexisting]


def _ensure_project_and_profile() -> None:
    if incus_cli("project", "show", PROJECT, check=False).returncode != 0:
        created = incus_cli(
            "project",
            "create",
            PROJECT,
            "-c",
            "features.images=false",
            "-c",
            "features.profiles=false",
            check=False,
        )
        # a concurrent session may have created it in the meantime
        if (
            created.returncode != 0
            and incus_cli("project", "show", PROJECT, check=False).returncode
        ):
            raise RuntimeError(f"incus project create {PROJECT}: {created.stderr.strip()}")
    if incus_cli("profile", "show", PROFILE, check=False).returncode != 0:
        created = incus_cli(
            "profile", "create", PROFILE, "--description", "pikaci test guests", check=False
        )
        if (
            created.returncode != 0
            and incus_cli("profile", "show", PROFILE, check=False).returncode
        ):
            raise RuntimeError(f"incus profile create {PROFILE}: {created.stderr.strip()}")


def _alias_fingerprint(project: str, alias: str) -> str:
    """The fingerprint behind `alias` as the test project sees it (upstream's lookup: the one
    image whose aliases name it)."""
    listed = orjson.loads(
        incus_cli("image", "list", "--project", project, alias, "--format", "json").stdout
    )
    found = [
        image["fingerprint"]
        for image in listed
        if any(entry["name"] == alias for entry in image.get("aliases") or [])
    ]
    if len(found) != 1:
        raise RuntimeError(f"expected one image aliased {alias} in project {project}: {found}")
    return str(found[0])


def _to_terminal(request: pytest.FixtureRequest, text: str) -> None:
    """Write past pytest's output capture, so a session-end warning is seen."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    context = capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()
    with context:
        sys.stderr.write(text)
        sys.stderr.flush()


@pytest.fixture(scope="session")
def incus(request: pytest.FixtureRequest) -> Iterator[Incus]:
    require_component(
        os.geteuid() == 0, "the incus fixture needs root (it installs and starts Incus)"
    )
    try:
        done = subprocess.run(
            [str(SETUP)],
            capture_output=True,
            text=True,
            timeout=SETUP_TIMEOUT_SECS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        done = subprocess.CompletedProcess([str(SETUP)], 1, "", "timed out\n")
    lines = done.stderr.strip().splitlines()
    require_component(
        done.returncode == 0,
        f"Incus could not be set up ({SETUP.name}): {lines[-1] if lines else 'no output'}",
    )
    try:
        _ensure_project_and_profile()
        fingerprint = _alias_fingerprint(PROJECT, IMAGE_ALIAS)
        server = Incus(image_alias=IMAGE_ALIAS, image_fingerprint=fingerprint)
        server.preexisting = server.instances()
    except (RuntimeError, OSError, subprocess.TimeoutExpired, ValueError) as exc:
        require_component(False, f"Incus is set up but not usable: {exc}")
        raise  # unreachable: require_component skipped or failed
    if server.preexisting:
        _to_terminal(
            request,
            f"\nWARNING: instances left in Incus project {PROJECT} before this session: "
            f"{', '.join(server.preexisting)} (incus delete --project {PROJECT} --force ...)\n",
        )
    yield server
    leftovers = server.leaked()
    for name in leftovers:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            server.delete(name)
    if leftovers:
        message = (
            f"tests left Incus instances behind in project {PROJECT} (deleted now): "
            f"{', '.join(leftovers)}"
        )
        # in CI the session is alone on the daemon, so a leftover is a leak: fail the run;
        # on a workstation another session's instances may be counted, so only warn
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        _to_terminal(request, f"\nWARNING: {message}\n")
