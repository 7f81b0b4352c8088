"""Serving the API with waitress: access log, loopback default, clean exit on SIGINT/SIGTERM."""

from __future__ import annotations

import ipaddress
import re
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, TextIO, Tuple

import waitress

from pikaci.options import Option
from pikaci.server.app import make_app
from pikaci.server.auth import AuthConfigError, TokenSet, tokens_from_environment
from pikaci.store import StateRoot

HOST = Option("host", "host", str, "127.0.0.1", "address to bind (default 127.0.0.1)")
PORT = Option(
    "port",
    "port",
    int,
    8080,
    "port (0 picks a free one)",
    expects="a port number from 0 to 65535",
    valid=lambda port: 0 <= port <= 65535,
)
NO_AUTH = Option(
    "no_auth",
    "no-auth",
    bool,
    False,
    "serve without tokens (refused unless --host is a loopback address)",
)
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


def resolve_config(
    host: str,
    no_auth: bool,
    repo_specs: List[str],
    source_root: Path,
    state: StateRoot,
    environ: Mapping[str, str],
) -> Tuple[Dict[str, StateRoot], TokenSet]:
    """The repositories and tokens `pikaci serve` and `doit serve` start with.

    Without `--repo`, this checkout's state root is served under its directory's slug.
    """
    if no_auth:
        if not is_loopback(host):
            raise ServeError(f"--no-auth is only allowed on a loopback address, not {host}")
        tokens = TokenSet(disabled=True)
    else:
        try:
            tokens = tokens_from_environment(environ)
        except AuthConfigError as exc:
            raise ServeError(str(exc)) from None
    specs = parse_repo_specs(repo_specs)
    if specs:
        repos = {
            slug: StateRoot(Path(root).expanduser().absolute()) for slug, root in specs.items()
        }
    else:
        repos = {slugify(source_root.name): state}
    for slug, served in repos.items():
        root = served.root
        if root.exists() and not root.is_dir():
            raise ServeError(f"repository `{slug}`: state root {root} is not a directory")
    return repos, tokens


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
    forge_slug: Optional[str] = None,
) -> int:
    """Serve until SIGINT or SIGTERM, then close the listening socket and return 0."""
    app = access_log(make_app(repos, tokens, forge_slug=forge_slug), out)
    server = waitress.create_server(app, host=host, port=port, threads=8, ident="pikaci")
    bound_host, bound_port = server.effective_host, server.effective_port
    out.write(
        f"pikaci serve: listening on http://{bound_host}:{bound_port}/ "
        f"(pages; the JSON API under /api/repos, the forge's paths under /git/api/forge)\n"
    )
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
