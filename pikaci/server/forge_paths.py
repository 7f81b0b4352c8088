"""The paths the forge's clients call (reference §8), over the same data as the API.

The forge serves one repository, without a slug in its paths: `/git/api/forge/pikaci/run/<id>`,
`…/logs/<id>`, `…/prepared-outputs/<id>`, and the news service's earlier
`/news/api/forge/pikaci/run/<id>` and `…/logs/<id>`. Same bearer tokens and 401 bodies as the
API; the bodies are the API's (`run`, `logs`, `prepared-outputs`), and, as the forge did, every
other failure is a 404 `{"error": …}`. pikaci keeps no forge branches: the forge answers
branch-log enrichment from its own lane rows, so `/git/api/forge/branch/<id>/logs` here is
always 404 `{"error": "branch not found"}` (after the token check).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import bottle

from pikaci.server.access import ApiError, Repo
from pikaci.server.api import json_error, json_response, logs_body, prepared_body, run_body
from pikaci.server.auth import TokenSet

GIT_FORGE = "/git/api/forge"
NEWS_FORGE = "/news/api/forge"
FORGE_PREFIXES = (GIT_FORGE, NEWS_FORGE)
NO_FORGE_REPO = "no forge repository configured"
NO_BRANCH = "branch not found"
Handler = Callable[..., Any]


def is_forge_path(path: str) -> bool:
    return any(path.startswith(prefix + "/") for prefix in FORGE_PREFIXES)


def install_forge_paths(app: bottle.Bottle, repo: Optional[Repo], tokens: TokenSet) -> None:
    """`repo`: the repository the forge's paths read (None: every such path is a 404)."""

    def forge(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def wrapper(**kwargs: Any) -> bottle.HTTPResponse:
            problem = tokens.check(bottle.request.environ.get("HTTP_AUTHORIZATION"))
            if problem is not None:
                return json_error(401, problem, {"WWW-Authenticate": "Bearer"})
            if repo is None:
                return json_error(404, NO_FORGE_REPO)
            try:
                return json_response(200, handler(repo=repo, **kwargs))
            except ApiError as exc:
                return json_error(404, exc.message)  # the forge's contract: any failure

        return wrapper

    def no_branch(repo: Repo, branch_id: str) -> None:
        raise ApiError(404, NO_BRANCH)

    for prefix in FORGE_PREFIXES:
        app.route(f"{prefix}/pikaci/run/<run_id>", "GET", forge(run_body))
        app.route(f"{prefix}/pikaci/logs/<run_id>", "GET", forge(logs_body))
    app.route(f"{GIT_FORGE}/pikaci/prepared-outputs/<run_id>", "GET", forge(prepared_body))
    app.route(f"{GIT_FORGE}/branch/<branch_id>/logs", "GET", forge(no_branch))
