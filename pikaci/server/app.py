"""The server's WSGI application: the JSON API and the web pages over the same run bundles."""

from __future__ import annotations

from typing import Mapping, Optional, Union

import bottle
import orjson

from pikaci.server.access import Repo
from pikaci.server.api import install_api
from pikaci.server.auth import TokenSet, WebAuth
from pikaci.server.forge_paths import install_forge_paths, is_forge_path
from pikaci.server.web import install_web, web_error_page
from pikaci.store import StateRoot


def make_app(
    repos: Mapping[str, StateRoot],
    tokens: TokenSet,
    web_auth: Optional[WebAuth] = None,
    forge_slug: Optional[str] = None,
) -> bottle.Bottle:
    """`web_auth` holds the web sessions; a new one (no session open) unless given.
    `forge_slug`: the repository the forge's paths serve (default: the first of `repos`)."""
    app = bottle.Bottle(catchall=True)
    known = {slug: Repo.of(slug, state) for slug, state in repos.items()}
    auth = web_auth or WebAuth(tokens)
    install_api(app, known, tokens)
    forge_slug = forge_slug if forge_slug is not None else next(iter(known), None)
    install_forge_paths(app, known.get(forge_slug) if forge_slug else None, tokens)
    install_web(app, known, auth)

    def fallback(error: bottle.HTTPError) -> Union[bytes, str]:
        path = bottle.request.path
        if path != "/api" and not path.startswith("/api/") and not is_forge_path(path):
            return web_error_page(error, auth)
        # bottle's own errors (no route, wrong method, crash) in the API's shape, not HTML
        bottle.response.content_type = "application/json"
        if error.status_code in (404, 405):
            # without a token even a wrong path is a 401: the route layout is not public
            problem = tokens.check(bottle.request.environ.get("HTTP_AUTHORIZATION"))
            if problem is not None:
                bottle.response.status = 401
                bottle.response.set_header("WWW-Authenticate", "Bearer")
                return orjson.dumps({"error": problem})
        if error.status_code >= 500:
            return orjson.dumps({"error": "internal server error"})
        return orjson.dumps({"error": error.status_line.split(" ", 1)[-1].lower()})

    for status in (400, 404, 405, 500):
        app.error(status)(fallback)
    return app
