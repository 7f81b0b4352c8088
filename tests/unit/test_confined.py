"""pikaci.confined and the readers on top of it: no link, FIFO or swap redirects a read."""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path

import pytest

from pikaci.cli.inspect import logs_command
from pikaci.confined import RefusedFile, open_below, parts_below, read_below, read_regular
from pikaci.server.app import make_app
from pikaci.store import StateRoot, StoreError
from tests.fixtures.api import BASE, SLUG, TOKENS, get
from tests.fixtures.serving import make_run, rid

SECRET = b"the server's secret\n"


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "runs" / "R" / "jobs" / "J").mkdir(parents=True)
    (root / "runs" / "R" / "jobs" / "J" / "host.log").write_bytes(b"log\n")
    (tmp_path / "secret").write_bytes(SECRET)
    return root


def job(root: Path, name: str = "host.log") -> Path:
    return root / "runs" / "R" / "jobs" / "J" / name


def test_a_regular_file_below_the_root_is_read(layout: Path) -> None:
    assert read_below(layout, job(layout)) == b"log\n"
    assert read_below(layout, "runs/R/jobs/J/host.log") == b"log\n"


def test_a_link_at_the_end_is_refused_even_one_that_stays_inside(layout: Path) -> None:
    job(layout, "outside.log").symlink_to(layout.parent / "secret")
    job(layout, "inside.log").symlink_to(job(layout))
    for name in ("outside.log", "inside.log"):
        with pytest.raises(RefusedFile, match="symbolic link"):
            open_below(layout, job(layout, name))


def test_a_linked_directory_on_the_way_is_refused(layout: Path, tmp_path: Path) -> None:
    other = tmp_path / "other" / "jobs" / "J"
    other.mkdir(parents=True)
    (other / "host.log").write_bytes(SECRET)
    (layout / "runs" / "L").symlink_to(tmp_path / "other")
    with pytest.raises(RefusedFile, match="symbolic link"):
        read_below(layout, layout / "runs" / "L" / "jobs" / "J" / "host.log")


def test_fifos_and_devices_are_refused_without_blocking(layout: Path) -> None:
    os.mkfifo(job(layout, "fifo.log"))
    started = time.monotonic()
    with pytest.raises(RefusedFile, match="not a regular file"):
        open_below(layout, job(layout, "fifo.log"))
    assert time.monotonic() - started < 2
    job(layout, "zero.log").symlink_to("/dev/zero")
    with pytest.raises(RefusedFile):
        read_below(layout, job(layout, "zero.log"))
    with pytest.raises(RefusedFile, match="not a regular file"):
        read_regular(job(layout, "fifo.log"))
    with pytest.raises(RefusedFile, match="symbolic link"):
        read_regular(job(layout, "zero.log"))


def test_paths_outside_the_root_are_refused_and_a_moved_root_keeps_its_files(
    layout: Path,
) -> None:
    for outside in ("/etc/passwd", layout.parent / "secret", layout / "runs" / ".." / ".."):
        with pytest.raises(RefusedFile, match="outside the state root"):
            open_below(layout, outside)
    # the record of a root that lived elsewhere: the layout below `runs/` still finds it
    assert read_below(layout, "/old/place/.pikaci/runs/R/jobs/J/host.log") == b"log\n"
    assert parts_below(layout, "/old/place/runs/../../etc/passwd") is None
    with pytest.raises(FileNotFoundError):
        open_below(layout, job(layout, "missing.log"))


def test_a_log_swapped_for_a_link_while_it_is_served_never_leaks(tmp_path: Path) -> None:
    """A lane keeps renaming a symlink to an outside file over its log while the log is asked
    for: the server answers with the log or refuses, never with the outside file, never a 500."""
    state = StateRoot(tmp_path / "state")
    make_run(state, rid(1))
    app = make_app({SLUG: state}, TOKENS)
    log = state.job_dir(rid(1), "a") / "host.log"
    regular = log.with_name("regular")
    regular.write_bytes(b"host of a\n")
    secret = tmp_path.parent / f"{tmp_path.name}-secret"
    secret.write_bytes(SECRET)
    stop = threading.Event()

    def swap() -> None:
        turn = 0
        while not stop.is_set():
            turn += 1
            plain, evil = log.with_name(f".plain{turn}"), log.with_name(f".evil{turn}")
            os.link(regular, plain)
            os.replace(plain, log)
            os.symlink(secret, evil)
            os.replace(evil, log)

    swapper = threading.Thread(target=swap)
    swapper.start()
    answers = {"log": 0, "refused": 0}
    try:
        for _ in range(1500):
            for query in ("job=a&kind=host", "job=a&kind=both"):
                status, body = get(app, f"{BASE}/logs/{rid(1)}", query)
                assert "secret" not in str(body)
                if status == 200:
                    answers["log"] += 1
                else:
                    assert status == 404, body
                    answers["refused"] += 1
    finally:
        stop.set()
        swapper.join()
    assert answers["log"] and answers["refused"]  # both states were seen: the race ran


class Terminal(io.TextIOWrapper):
    """A stdout that says it is a terminal, over bytes the test can read."""

    def __init__(self) -> None:
        super().__init__(io.BytesIO(), encoding="utf-8")

    def isatty(self) -> bool:
        return True


def test_pikaci_logs_refuses_a_planted_fifo_or_device_at_once(tmp_path: Path) -> None:
    state = StateRoot(tmp_path / "state")
    make_run(state, rid(1))
    guest = state.job_dir(rid(1), "a") / "artifacts" / "guest.log"
    guest.unlink()
    os.mkfifo(guest)
    started = time.monotonic()
    with pytest.raises(StoreError, match=r"guest\.log: not a regular file"):
        logs_command(state, rid(1), "a", "both", False, io.StringIO())
    guest.unlink()
    guest.symlink_to("/dev/zero")
    with pytest.raises(StoreError, match="symbolic link"):
        logs_command(state, rid(1), "a", "guest", False, io.StringIO())
    assert time.monotonic() - started < 5


def test_pikaci_logs_passes_only_colours_to_a_terminal(tmp_path: Path) -> None:
    state = StateRoot(tmp_path / "state")
    make_run(state, rid(1))
    host = state.job_dir(rid(1), "a") / "host.log"
    host.write_bytes(b"\x1b]0;owned\x07\x1b[2J\x1b[32mgreen\x1b[0m\n")
    terminal = Terminal()
    logs_command(state, rid(1), "a", "host", False, terminal)
    terminal.flush()
    assert terminal.buffer.getvalue() == b"== host ==\n\x1b[32mgreen\x1b[0m\n"  # type: ignore[attr-defined]
    piped = io.BytesIO()
    pipe = io.TextIOWrapper(piped, encoding="utf-8")
    logs_command(state, rid(1), "a", "host", False, pipe)
    pipe.flush()
    assert b"\x1b]0;owned" in piped.getvalue()  # not a terminal: the log byte for byte
