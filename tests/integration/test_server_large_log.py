"""A 1 GiB log served and tailed by a real `pikaci serve` with bounded memory.

The server's peak resident memory (VmHWM) is read from /proc before and after the whole log is
streamed, the web log page opens at its end, and the last 64 MiB are paged through the tail API.
"""

from __future__ import annotations

import http.client
import os
import urllib.parse
from pathlib import Path
from typing import Dict, Tuple

import orjson

from pikaci.server.access import TAIL_MAX
from pikaci.store import StateRoot
from tests.fixtures.serving import make_run, rid, start_serve
from tests.fixtures.support import REPO_ROOT

TOKEN = "large-log-token-0123"
SLUG = "big"
LOG_BYTES = 1024 * 1024 * 1024
BLOCK = 8 * 1024 * 1024
# the server's peak may grow by this much while it streams 1 GiB: chunks, buffers, one page
PEAK_GROWTH_LIMIT = 96 * 1024 * 1024


def write_big_log(path: Path) -> int:
    line = b"\x1b[32mok\x1b[0m step %09d of a very long CI job, with some padding text ....\n"
    block = bytearray()
    n = 0
    while len(block) < BLOCK:
        block += line % n
        n += 1
    written = 0
    with open(path, "wb") as out:
        while written < LOG_BYTES:  # whole blocks of whole lines: a little over 1 GiB
            out.write(block)
            written += len(block)
    return written


def memory(pid: int) -> Dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


def fetch(port: int, path: str, headers: Dict[str, str]) -> Tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_a_1_gib_log_is_streamed_paged_and_tailed_with_bounded_memory(tmp_path):
    state = StateRoot(tmp_path / "state")
    run_id = rid(1)
    make_run(state, run_id, status="running", job_status="running")
    log = state.job_dir(run_id, "a") / "host.log"
    size = write_big_log(log)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PIKACI_")},
        "PYTHONPATH": str(REPO_ROOT),
        "PIKACI_SERVER_TOKENS": TOKEN,
    }
    process, port = start_serve(tmp_path, env, ["--repo", f"{SLUG}={state.root}"])
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    api = f"/api/repos/{SLUG}/pikaci"
    try:
        # warm up every code path once, so the baseline includes imports and templates
        assert fetch(port, f"{api}/run/{run_id}", bearer)[0] == 200
        login = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        login.request(
            "POST",
            "/login",
            body=urllib.parse.urlencode({"token": TOKEN, "next": "/"}),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        answer = login.getresponse()
        answer.read()
        cookie = {"Cookie": answer.getheader("Set-Cookie", "").split(";", 1)[0]}
        login.close()
        page_path = f"/repos/{SLUG}/runs/{run_id}/log?job=a&kind=host"
        assert fetch(port, page_path, cookie)[0] == 200
        before = memory(process.pid)

        # the whole log, streamed by the API
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        connection.request("GET", f"{api}/raw-log/{run_id}?job=a&kind=host", headers=bearer)
        response = connection.getresponse()
        assert response.status == 200
        assert int(response.getheader("Content-Length", "0")) == size
        received = 0
        last = b""
        while True:
            chunk = response.read(1024 * 1024)
            if not chunk:
                break
            received += len(chunk)
            last = chunk
        connection.close()
        assert received == size
        with open(log, "rb") as handle:
            handle.seek(size - len(last))
            assert handle.read() == last

        # the web page opens at the end: the last line of the log is on it
        status, body = fetch(port, page_path, cookie)
        assert status == 200
        with open(log, "rb") as handle:
            handle.seek(size - 200)
            final_line = handle.read().rsplit(b"\n", 2)[-2].split(b"step ")[1][:9]
        assert b"step " + final_line in body

        # the tail API pages through the last 64 MiB, chunk after chunk, to the end
        offset = size - 64 * 1024 * 1024
        pages = 0
        while True:
            status, raw = fetch(
                port,
                f"{api}/tail/{run_id}?job=a&kind=host&offset={offset}&limit={TAIL_MAX}",
                bearer,
            )
            assert status == 200
            chunk = orjson.loads(raw)
            assert chunk["offset"] == offset and chunk["running"] is False
            offset = chunk["next_offset"]
            pages += 1
            if chunk["eof"]:
                break
        assert offset == size and pages == 64

        # the forge's logs endpoint returns the end of the log, capped
        status, raw = fetch(port, f"{api}/logs/{run_id}?job=a&kind=host", bearer)
        assert status == 200 and orjson.loads(raw)["host"].endswith("padding text ....\n")
        after = memory(process.pid)
    finally:
        process.terminate()
        process.communicate(timeout=30)
    growth = after["VmHWM"] - before["VmHWM"]
    assert growth < PEAK_GROWTH_LIMIT, (before, after)
