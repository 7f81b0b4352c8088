"""Bearer-token authentication for the server.

Tokens come from `PIKACI_SERVER_TOKENS_FILE` (one per line, `#` starts a comment) and
`PIKACI_SERVER_TOKENS` (comma separated); both sources are merged. The 401 bodies are the
forge's: no usable `Bearer` credential is "missing", any other token is "invalid or expired".
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import List, Mapping, Optional, Tuple

ENV_TOKENS_FILE = "PIKACI_SERVER_TOKENS_FILE"
ENV_TOKENS = "PIKACI_SERVER_TOKENS"
MISSING_TOKEN = "missing auth token"
INVALID_TOKEN = "invalid or expired token"
_SCHEME = "bearer"


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
        matched = False
        for token in self.tokens:
            # every token is compared, so the time taken does not tell which one came close
            matched |= hmac.compare_digest(token, given)
        return None if matched else INVALID_TOKEN


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
