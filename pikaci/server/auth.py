"""Authentication for the server: bearer tokens for the API, a session cookie for the web pages.

Tokens come from `PIKACI_SERVER_TOKENS_FILE` (one per line, `#` starts a comment) and
`PIKACI_SERVER_TOKENS` (comma separated); both sources are merged. The 401 bodies are the
forge's: no usable `Bearer` credential is "missing", any other token is "invalid or expired".

The web pages' login form takes the same tokens. The session cookie is `<expiry>.<hmac>`, the MAC
keyed by the token that logged in: it never carries the token, it expires, and removing a token
from the configuration ends its sessions at the next restart.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import List, Mapping, Optional, Tuple

ENV_TOKENS_FILE = "PIKACI_SERVER_TOKENS_FILE"
ENV_TOKENS = "PIKACI_SERVER_TOKENS"
MISSING_TOKEN = "missing auth token"
INVALID_TOKEN = "invalid or expired token"
_SCHEME = "bearer"
SESSION_COOKIE = "pikaci_session"
SESSION_SECONDS = 12 * 3600
_SESSION_CONTEXT = b"pikaci-session-v1:"


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

    def issue_session(self, token: bytes, now: float) -> str:
        """A session cookie value for a token that `matching` accepted."""
        expiry = int(now) + SESSION_SECONDS
        return f"{expiry}.{_session_mac(token, expiry)}"

    def session_valid(self, cookie: Optional[str], now: float) -> bool:
        if self.disabled:
            return True
        expiry_text, _, mac = (cookie or "").partition(".")
        if not expiry_text.isascii() or not expiry_text.isdigit() or len(expiry_text) > 12:
            return False
        if len(mac) != 64 or any(ch not in "0123456789abcdef" for ch in mac):
            return False  # compare_digest refuses non-ASCII text: check the shape first
        expiry = int(expiry_text)
        if expiry <= now or expiry > now + SESSION_SECONDS + 60:
            return False
        valid = False
        for token in self.tokens:
            valid |= hmac.compare_digest(_session_mac(token, expiry), mac)
        return valid


def _session_mac(token: bytes, expiry: int) -> str:
    return hmac.new(token, _SESSION_CONTEXT + str(expiry).encode(), hashlib.sha256).hexdigest()


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
        try:
            found += parse_tokens_file(Path(file_name).expanduser().read_text("utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise AuthConfigError(f"{ENV_TOKENS_FILE}={file_name}: unreadable ({exc})") from None
    found += [t.strip() for t in environ.get(ENV_TOKENS, "").split(",") if t.strip()]
    for token in found:
        if any(ch.isspace() for ch in token):
            raise AuthConfigError("a server token contains whitespace")
    if not found:
        raise AuthConfigError(
            f"no server tokens configured: set {ENV_TOKENS_FILE} or {ENV_TOKENS} "
            "(or pass --no-auth on a loopback address)"
        )
    return TokenSet(tokens=tuple(dict.fromkeys(t.encode("utf-8") for t in found)))
