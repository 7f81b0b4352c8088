"""Serving the API with waitress: access log, loopback default, clean exit on SIGINT/SIGTERM."""

from __future__ import annotations

import ipaddress
import re
import signal
import threading
import time
from types import FrameType
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, TextIO, Tuple

import waitress

from pikaci.server.app import make_app
from pikaci.server.auth import TokenSet
from pikaci.store import StateRoot

SLUG_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
StartResponse = Callable[..., Any]
WsgiApp = Callable[[Dict[str, Any], StartResponse], Iterable[bytes]]


class ServeError(Exception):
    """A configuration the server refuses to start with; the message is one line."""


def slugify(name: str) -> str:
    """The forge's rule: every character outside [A-Za-z0-9_-] becomes `-`."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", name)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_repo_specs(specs: List[str]) -> Dict[str, str]:
    """`SLUG=STATE_ROOT` pairs, in order; ServeError on a bad or repeated slug."""
    repos: Dict[str, str] = {}
    for spec in specs:
        slug, sep, root = spec.partition("=")
        if not sep or not root:
            raise ServeError(f"--repo {spec!r}: expected SLUG=STATE_ROOT")
        if not SLUG_PATTERN.fullmatch(slug):
            raise ServeError(f"--repo {spec!r}: a slug is made of [A-Za-z0-9_-]")
        if slug in repos:
            raise ServeError(f"--repo {spec!r}: slug `{slug}` given twice")
        repos[slug] = root
    return repos


def access_log(app: WsgiApp, out: TextIO) -> WsgiApp:
    """One line per request: method, path (never the query: it may carry secrets), status, ms."""
    lock = threading.Lock()

    def logged(environ: Dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        started = time.monotonic()
        seen: List[str] = []

        def capture(status: str, headers: List[Tuple[str, str]], *exc: Any) -> Any:
            seen.append(status.split(" ", 1)[0])
            return start_response(status, headers, *exc)

        try:
            yield from app(environ, capture)
        finally:
            ms = (time.monotonic() - started) * 1000
            raw = (
                environ.get("PATH_INFO", "").encode("latin-1", "replace").decode("utf-8", "replace")
            )
            # a request path must not be able to forge extra log lines
            path = "".join(ch if ch.isprintable() else "?" for ch in raw)
            method = environ.get("REQUEST_METHOD", "-")
            line = f"{method} {path} {seen[-1] if seen else '-'} {ms:.1f}ms\n"
            with lock:
                out.write(line)
                out.flush()

    return logged


def serve(
    repos: Mapping[str, StateRoot],
    tokens: TokenSet,
    host: str,
    port: int,
    out: TextIO,
    ready: Optional[Callable[[str, int], None]] = None,
) -> int:
    """Serve until SIGINT or SIGTERM, then close the listening socket and return 0."""
    app = access_log(make_app(repos, tokens), out)
    server = waitress.create_server(app, host=host, port=port, threads=8, ident="pikaci")
    bound_host, bound_port = server.effective_host, server.effective_port
    out.write(f"pikaci serve: listening on http://{bound_host}:{bound_port}/api/repos\n")
    out.flush()
    if ready is not None:
        ready(bound_host, bound_port)

    def stop(signum: int, frame: Optional[FrameType]) -> None:
        raise KeyboardInterrupt  # waitress's loop turns this into an orderly shutdown

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    out.write("pikaci serve: stopped\n")
    out.flush()
    return 0
