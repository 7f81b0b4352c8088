"""The web pages in headless Chromium (Debian's, driven by Playwright) on real runs of real lanes.

Screenshots of every page, at desktop and at phone width, are written to
`$PIKACI_TEST_ARTIFACTS/browser/` (default `test-artifacts/browser/` in the checkout).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from tests.fixtures.projects import LaneSpec, new_repository, render_dodo
from tests.fixtures.serving import start_serve
from tests.fixtures.support import REPO_ROOT, require_component, wait_for

TOKEN = "browser-token-7f3a"
SLUG = "web-demo"
CHROMIUM = "/usr/bin/chromium"
# without the background-networking switches Chromium keeps dialing out of this closed network
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
COLOUR_LANE = (
    "printf 'plain start\\n'; "
    "printf '\\033[1;31mred alert\\033[0m and \\033[32mgreen ok\\033[0m\\n'; "
    'for i in $(seq 1 400); do echo "filler line $i <not-a-tag>"; done; '
    'echo guest-side > "$ARTIFACTS/guest.log"'
)
# prints for a while (its last line is computed: the log also shows the command itself), slowly, so its log page can be watched while the job runs
SLOW_LANE = 'echo slow-begin; for i in $(seq 1 40); do echo "tick $i"; sleep 0.25; done; echo "slow-$((40 + 2))-end"'


def artifacts_dir() -> Path:
    base = os.environ.get("PIKACI_TEST_ARTIFACTS") or str(REPO_ROOT / "test-artifacts")
    path = Path(base) / "browser"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def playwright_api() -> Any:
    try:
        from playwright import sync_api
    except ImportError:
        sync_api = None
    require_component(sync_api is not None, "playwright is not installed")
    require_component(Path(CHROMIUM).exists(), f"{CHROMIUM} is missing (apt install chromium)")
    return sync_api


@pytest.fixture(scope="module")
def project(tmp_path_factory: Any) -> Any:
    base = tmp_path_factory.mktemp("browser")
    project = new_repository(
        base / "web demo",
        base / "state",
        {
            "dodo.py": render_dodo(
                [
                    LaneSpec("colours", COLOUR_LANE),
                    LaneSpec("broken", "echo 'about to fail'; exit 3"),
                    LaneSpec("slow", SLOW_LANE, target="slow"),
                ]
            )
        },
    )
    result = project.doit("run", "--continue", "target:main")
    assert result.returncode != 0, result.stdout + result.stderr
    return project


@pytest.fixture(scope="module")
def server(project: Any, tmp_path_factory: Any) -> Iterator[str]:
    tokens = tmp_path_factory.mktemp("tokens") / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    env = {**project.env, "PYTHONPATH": str(REPO_ROOT), "PIKACI_SERVER_TOKENS_FILE": str(tokens)}
    process, port = start_serve(project.root, env, ["--repo", f"{SLUG}={project.state_root}"])
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.communicate(timeout=30)


@pytest.fixture(scope="module")
def browser(playwright_api: Any) -> Iterator[Any]:
    with playwright_api.sync_playwright() as api:
        chromium = api.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def new_page(browser: Any, viewport: Dict[str, int]) -> Tuple[Any, List[str]]:
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    problems: List[str] = []
    # a page that logs an error (a CSP violation, a failed script) is a broken page
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    return page, problems


def log_in(page: Any, base: str, token: str = TOKEN) -> None:
    page.goto(f"{base}/")
    assert "/login" in page.url
    page.fill("#token", token)
    page.click("form[action='/login'] button")


def shoot(page: Any, name: str) -> None:
    page.screenshot(path=str(artifacts_dir() / f"{name}.png"), full_page=True)


def fits_width(page: Any) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"))


def main_run_id(project: Any) -> str:
    runs = [r for r in project.run_ids() if project.run_record(r)["target_id"] == "main"]
    return runs[0]


@pytest.mark.parametrize(("viewport", "tag"), [(DESKTOP, "desktop"), (PHONE, "phone")])
def test_run_list_run_page_and_log_page(browser, server, project, viewport, tag):
    run_id = main_run_id(project)
    page, problems = new_page(browser, viewport)

    # a wrong token is refused on the form, the right one lands on the run list
    log_in(page, server, "not-the-token")
    assert page.get_by_role("alert").inner_text() == "That token is not valid."
    shoot(page, f"login-refused-{tag}")
    assert problems == [
        "Failed to load resource: the server responded with a status of 401 (Unauthorized)"
    ]
    problems.clear()
    page.fill("#token", TOKEN)
    page.click("form[action='/login'] button")
    page.wait_for_url(f"**/repos/{SLUG}/runs")
    row = page.locator(f"tr.run[data-run='{run_id}']")
    assert row.locator(".badge").inner_text() == "failed"
    assert "main" in row.inner_text()
    assert fits_width(page)
    shoot(page, f"run-list-{tag}")

    # the run page: both jobs, their statuses, and the timeline drawn as SVG
    row.locator("a").click()
    page.wait_for_url(f"**/runs/{run_id}")
    assert page.locator("#run-status").inner_text() == "failed"
    statuses = {
        job: page.locator(f"tr.job[data-job='{job}'] .badge").first.inner_text()
        for job in ("colours", "broken")
    }
    assert statuses == {"colours": "passed", "broken": "failed"}
    timeline = page.locator("figure.timeline svg")
    assert timeline.is_visible()
    rows = timeline.locator("g[data-row]")
    keys = [rows.nth(i).get_attribute("data-row") for i in range(rows.count())]
    assert "job:colours" in keys and "job:broken" in keys
    assert timeline.locator("g[data-row='job:colours'] rect").count() == 1
    box = timeline.bounding_box()
    assert box is not None and box["width"] <= viewport["width"]
    assert fits_width(page)
    shoot(page, f"run-page-{tag}")

    # the host log of the colour lane: ANSI colours as styles, markup in the log as text
    page.locator("tr.job[data-job='colours'] a.log-link", has_text="host").click()
    page.wait_for_url("**/log?job=colours&kind=host")
    red = page.locator("pre.log span", has_text="red alert")
    assert red.evaluate("e => getComputedStyle(e).fontWeight") in ("700", "bold")
    assert red.evaluate("e => getComputedStyle(e).color") != page.locator("pre.log").evaluate(
        "e => getComputedStyle(e).color"
    )
    log_text = page.locator("pre.log").inner_text()
    assert "filler line 400 <not-a-tag>" in log_text and "\x1b" not in log_text
    assert fits_width(page)
    shoot(page, f"log-page-{tag}")

    # the other log of the job, by the switcher
    page.locator("nav.log-switch a", has_text="colours guest").click()
    assert page.locator("pre.log").inner_text().strip() == "guest-side"
    assert problems == []

    # logging out ends the session
    page.click("form[action='/logout'] button")
    page.wait_for_url("**/login")
    page.goto(f"{server}/repos/{SLUG}/runs/{run_id}")
    assert "/login" in page.url
    page.context.close()


def test_the_log_page_tails_a_running_job_live(playwright_api, browser, server, project):
    page, problems = new_page(browser, DESKTOP)
    log_in(page, server)
    page.wait_for_url(f"**/repos/{SLUG}/runs")
    before = set(project.run_ids())
    run = subprocess.Popen(
        [sys.executable, "-m", "doit", "run", "lane:slow"],
        cwd=project.root,
        env=project.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def started() -> bool:
            new[:] = [r for r in project.run_ids() if r not in before]
            log = project.job_dir(new[0], "slow") / "host.log" if new else None
            return log is not None and log.is_file() and "tick 2" in log.read_text()

        new: List[str] = []
        assert wait_for(started, 60, 0.1), "the slow lane never started"
        page.goto(f"{server}/repos/{SLUG}/runs/{new[0]}/log?job=slow&kind=host")
        assert page.locator("#live-state").inner_text() == "live"
        first = page.locator("pre.log").inner_text()
        assert "slow-42-end" not in first
        # lines the job prints after the page loaded arrive without a reload
        # (expect() polls without eval, which the pages' CSP rightly forbids)
        expect = playwright_api.expect
        expect(page.locator("pre.log")).to_contain_text("slow-42-end", timeout=60000)
        expect(page.locator("#live-state")).to_have_text("finished", timeout=30000)
        text = page.locator("pre.log").inner_text()
        # every line exactly once, in order: the tail neither drops nor repeats a chunk
        ticks = [int(m) for m in re.findall(r"tick (\d+)$", text, re.MULTILINE)]
        assert ticks == list(range(1, 41))
        shoot(page, "log-live-tail-desktop")
        assert problems == []
    finally:
        if run.poll() is None:
            run.terminate()
        run.wait(timeout=60)
    assert run.returncode == 0
    page.context.close()


def test_a_staged_run_shows_its_prepared_outputs_and_guest_log(
    browser, make_staged_project, tmp_path
):
    build_root = "/staged/linux-rust/workspace-build"
    project = make_staged_project(
        {"run-web": "echo staged-web-ok"},
        {"main": [LaneSpec("web", f"{build_root}/bin/run-web", runtime="bubblewrap")]},
    )
    result = project.doit("run", "lane:web")
    assert result.returncode == 0, result.stdout + result.stderr
    run = project.latest_run()
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    env = {**project.env, "PYTHONPATH": str(REPO_ROOT), "PIKACI_SERVER_TOKENS_FILE": str(tokens)}
    process, port = start_serve(project.root, env, ["--repo", f"{SLUG}={project.state_root}"])
    try:
        page, problems = new_page(browser, DESKTOP)
        log_in(page, f"http://127.0.0.1:{port}")
        page.wait_for_url(f"**/repos/{SLUG}/runs")
        page.locator(f"tr.run[data-run='{run['run_id']}'] a").click()
        outputs = page.locator("tr.prepared-output")
        assert outputs.count() == 2
        text = page.locator("table.prepared").inner_text()
        assert text.count("/nix/store/") == 2
        assert "/staged/linux-rust/workspace-deps (ro)" in text
        assert f"{build_root} (ro)" in text
        rows = page.locator("figure.timeline g[data-row]")
        keys = [rows.nth(i).get_attribute("data-row") for i in range(rows.count())]
        assert keys == [
            "prepare:snapshot-main",
            "prepare:prepare-shared-workspace-deps",
            "prepare:prepare-shared-workspace-build",
            "job:web",
        ]
        shoot(page, "run-page-staged-desktop")
        page.locator("tr.job[data-job='web'] a.log-link", has_text="guest").click()
        assert "staged-web-ok" in page.locator("pre.log").inner_text()
        assert problems == []
        page.context.close()
    finally:
        process.terminate()
        process.communicate(timeout=30)
