"""`serve`: run records and logs as web pages and a token-protected JSON API."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pikaci.cli.inspect import state_root
from pikaci.server.serve import HOST, NO_AUTH, PORT, ServeError, resolve_config, serve

ERRORS = (ServeError,)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "serve", help="serve run records and logs: web pages and a token-protected JSON API"
    )
    # --host, --port and --no-auth are `doit serve`'s options too; --repo is the CLI's alone
    HOST.add_to(parser)
    PORT.add_to(parser)
    parser.add_argument(
        "--repo",
        action="append",
        default=[],
        metavar="SLUG=STATE_ROOT",
        help="a repository to serve (repeatable; default: this directory's state root)",
    )
    parser.add_argument(
        "--forge-repo",
        metavar="SLUG",
        help="the repository the forge's paths (/git/api/forge/..., /news/api/forge/...) serve "
        "(default: the first one)",
    )
    NO_AUTH.add_to(parser)
    parser.set_defaults(func=serve_command)


def serve_command(args: argparse.Namespace) -> int:
    source_root = Path.cwd()
    repos, tokens = resolve_config(
        args.host, args.no_auth, args.repo, source_root, state_root(args), os.environ
    )
    if args.forge_repo is not None and args.forge_repo not in repos:
        raise ServeError(
            f"--forge-repo {args.forge_repo!r}: not a served repository "
            f"({', '.join(sorted(repos))})"
        )
    return serve(repos, tokens, args.host, args.port, sys.stderr, forge_slug=args.forge_repo)
