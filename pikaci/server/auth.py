"""Authentication for the server: bearer tokens for the API, a session cookie for the web pages.

Tokens come from `PIKACI_SERVER_TOKENS_FILE` (one per line, `#` starts a comment) and
`PIKACI_SERVER_TOKENS` (comma separated); both sources are merged. The 401 bodies are the
forge's: no usable `Bearer` credential is "missing", any other token is "invalid or expired".

The web pages' login form takes the same tokens and opens a server-side session: the cookie is
a random id (never the token, nothing derived from it), the server keeps until when it is valid,
logout deletes it (a copied cookie stops working at once) and a restart ends every session.
Login and logout refuse cross-site requests (Origin / Referer / Sec-Fetch-Site), and failed
logins are limited per client address.

Tokens are at least MIN_TOKEN_LENGTH characters, and a tokens file that others can write is
refused: either would let someone in who should not be.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, MutableMapping, Optional, Tuple

ENV_TOKENS_FILE = "PIKACI_SERVER_TOKENS_FILE"
ENV_TOKENS = "PIKACI_SERVER_TOKENS"
MISSING_TOKEN = "missing auth token"
INVALID_TOKEN = "invalid or expired token"
_SCHEME = "bearer"
SESSION_COOKIE = "pikaci_session"
SESSION_SECONDS = 12 * 3600
SESSION_LIMIT = 10_000  # the oldest sessions go first past this many
MIN_TOKEN_LENGTH = 16
LOGIN_FAILURES = 10  # failed logins per address allowed within LOGIN_WINDOW_SECS
LOGIN_WINDOW_SECS = 300.0


class AuthConfigError(Exception):
    """The server cannot start with this token configuration; the message is one line."""


@dataclass(frozen=True)
class TokenSet:
    tokens: Tuple[bytes, ...] = ()
    # only ever set by `pikaci serve --no-auth` on a loopback address
    disabled: bool = False

    def check(self, authorization: Optional[str]) -> Optional[str]:
        """None when the request may proceed, else the 401 error message."""
        if self.disabled:
            return None
        given = _bearer(authorization)
        if given is None:
            return MISSING_TOKEN
        return None if self.matching(given) is not None else INVALID_TOKEN

    def matching(self, given: bytes) -> Optional[bytes]:
        """The configured token equal to `given`, if any."""
        found = None
        for token in self.tokens:
            # every token is compared, so the time taken does not tell which one came close
            if hmac.compare_digest(token, given):
                found = token
        return found


class Sessions:
    """Server-side web sessions: random ids with their expiry, bounded in number."""

    def __init__(self, lifetime: float = SESSION_SECONDS, limit: int = SESSION_LIMIT) -> None:
        self.lifetime = lifetime
        self.limit = limit
        self._expiry: Dict[str, float] = {}  # insertion order: the oldest first
        self._lock = threading.Lock()

    def issue(self, now: float) -> str:
        session = secrets.token_urlsafe(32)
        with self._lock:
            for old in [key for key, until in self._expiry.items() if until <= now]:
                del self._expiry[old]
            while len(self._expiry) >= self.limit:
                del self._expiry[next(iter(self._expiry))]
            self._expiry[session] = now + self.lifetime
        return session

    def valid(self, cookie: Optional[str], now: float) -> bool:
        if not cookie or len(cookie) > 64:
            return False
        with self._lock:
            until = self._expiry.get(cookie)
        return until is not None and now < until

    def revoke(self, cookie: Optional[str]) -> None:
        with self._lock:
            self._expiry.pop(cookie or "", None)


@dataclass
class LoginThrottle:
    """At most LOGIN_FAILURES failed logins per client address within the window."""

    failures: int = LOGIN_FAILURES
    window: float = LOGIN_WINDOW_SECS
    _seen: Dict[str, List[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_secs(self, address: str, now: float) -> float:
        """0 when `address` may try now, else how long until it may."""
        with self._lock:
            recent = [at for at in self._seen.get(address, []) if at > now - self.window]
            if recent:
                self._seen[address] = recent
            else:
                self._seen.pop(address, None)
            if len(recent) < self.failures:
                return 0.0
            return recent[0] + self.window - now

    def failed(self, address: str, now: float) -> None:
        with self._lock:
            if len(self._seen) >= SESSION_LIMIT and address not in self._seen:
                self._seen.pop(next(iter(self._seen)))  # bounded: forget the oldest address
            self._seen.setdefault(address, []).append(now)

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._seen.pop(address, None)


@dataclass
class WebAuth:
    """What the web pages check: the tokens, the open sessions, the login throttle."""

    tokens: TokenSet
    sessions: Sessions = field(default_factory=Sessions)
    throttle: LoginThrottle = field(default_factory=LoginThrottle)

    def logged_in(self, cookie: Optional[str], now: float) -> bool:
        return self.tokens.disabled or self.sessions.valid(cookie, now)


def same_origin(environ: MutableMapping[str, object]) -> bool:
    """Whether a state-changing request comes from this server's own pages.

    Browsers mark every request with Sec-Fetch-Site; without it, the Origin (or Referer) must
    name this server. The pages send no referrer, so a browser's Origin is `null` on their own
    forms: only Sec-Fetch-Site can vouch for such a request. A request with none of these
    headers is not a browser's cross-site one (a script's, a test's) and passes.
    """
    fetch_site = environ.get("HTTP_SEC_FETCH_SITE")
    if fetch_site is not None:
        return fetch_site in ("same-origin", "none")
    host = str(environ.get("HTTP_HOST") or "")
    for header in ("HTTP_ORIGIN", "HTTP_REFERER"):
        value = environ.get(header)
        if value is None:
            continue
        if value == "null":
            return False
        return urllib.parse.urlsplit(str(value)).netloc == host
    return True


def _bearer(authorization: Optional[str]) -> Optional[bytes]:
    if not authorization:
        return None
    scheme, _, credential = authorization.strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != _SCHEME or not credential:
        return None
    # WSGI hands headers over as latin-1 text; this recovers the bytes that were sent
    return credential.encode("latin-1", "replace")


def parse_tokens_file(text: str) -> List[str]:
    tokens = []
    for line in text.splitlines():
        token = line.split("#", 1)[0].strip()
        if token:
            tokens.append(token)
    return tokens


def tokens_from_environment(environ: Mapping[str, str]) -> TokenSet:
    """Every configured token; AuthConfigError when the file is unreadable or none is set."""
    found: List[str] = []
    file_name = environ.get(ENV_TOKENS_FILE, "").strip()
    if file_name:
        path = Path(file_name).expanduser()
        try:
            if path.stat().st_mode & 0o022:
                raise AuthConfigError(
                    f"{ENV_TOKENS_FILE}={file_name}: others can write it, so they could add a "
                    "token; `chmod go-w` it"
                )
            found += parse_tokens_file(path.read_text("utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise AuthConfigError(f"{ENV_TOKENS_FILE}={file_name}: unreadable ({exc})") from None
    found += [t.strip() for t in environ.get(ENV_TOKENS, "").split(",") if t.strip()]
    for token in found:
        if any(ch.isspace() for ch in token):
            raise AuthConfigError("a server token contains whitespace")
        if len(token) < MIN_TOKEN_LENGTH:
            # the token itself is never printed
            raise AuthConfigError(
                f"a server token is shorter than {MIN_TOKEN_LENGTH} characters; use a long "
                "random one (`openssl rand -hex 32`)"
            )
    if not found:
        raise AuthConfigError(
            f"no server tokens configured: set {ENV_TOKENS_FILE} or {ENV_TOKENS} "
            "(or pass --no-auth on a loopback address)"
        )
    return TokenSet(tokens=tuple(dict.fromkeys(t.encode("utf-8") for t in found)))
