"""The `pikaci` console script.

    pikaci [--state-root DIR] run JOB... [--output human|json|jsonl] [-n N] [--continue]
    pikaci [--state-root DIR] rerun RUN_ID [--output ...]
    pikaci [--state-root DIR] list | status RUN | logs RUN | prepared-outputs RUN | gc
    pikaci summary [RUN] [--target T] [--artifact-dir D] [--allow-missing]   for a CI step
    pikaci gc-remote [--keep-runs N] [--keep-snapshots-days D] [--json]   on $PIKACI_BUILDER
    pikaci builder reset         end the shared SSH connections (new groups, changed config)
    pikaci incus-image FILE [ROOTFS] [--remote]    import the guest image under its alias
    pikaci incus-reap [--older-than SECS] [--remote] [--json]   delete leftover instances
    pikaci ci-plan [--base REF] [--worktree] [--nightly] [--json]   forge lanes to run, and why
    pikaci pin add NAME URL [--ref REF] | update [NAME...] | check [NAME...]   nix/pins.json
    pikaci fulfill-prepared-output-request REQUEST   expose an output as a request says
    pikaci staged-linux-target-info TARGET [--json]   a staged target's installables
    pikaci doit ARGS...          any doit command over the repository's catalog
    pikaci serve [--host H] [--port P] [--repo SLUG=STATE_ROOT]... [--forge-repo SLUG] [--no-auth]
                                                          pages + JSON API + forge paths

`run`, `rerun` and `doit` read the catalog (`CATALOG`) from the repository's `dodo.py`, or
from the file `-f FILE` names, through the same doit loader that `doit` itself uses there.
Exit status: 1 for a failed run or an error, 2 for a usage error, 130 after Ctrl-C, 0 otherwise.

Each command family is one module of this package (`run`, `inspect`, `summary`, `builder`,
`incus`, `forge`, `pin`, `fulfill`, `staged`, `serve`): its `register` adds the subcommands and sets
their handler as `func`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional, Sequence

from pikaci.cli import (
    builder,
    forge,
    fulfill,
    incus,
    inspect,
    pin,
    run,
    serve,
    staged,
    summary,
)
from pikaci.model import RecordError
from pikaci.store import StoreError

# what becomes `pikaci: error: <message>`, exit 1: errors every family can meet, then each
# family's own
_ERRORS = (
    StoreError,
    RecordError,
    ValueError,
    *run.ERRORS,
    *forge.ERRORS,
    *incus.ERRORS,
    *builder.ERRORS,
    *serve.ERRORS,
    *summary.ERRORS,
    *pin.ERRORS,
    *fulfill.ERRORS,
    *staged.ERRORS,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pikaci", description="Nix-monorepo CI on doit")
    parser.add_argument(
        "--state-root", help="state directory (default: $PIKACI_STATE_ROOT or ./.pikaci)"
    )
    parser.add_argument("-f", "--file", default="dodo.py", help="dodo file declaring CATALOG")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # registration order is the order of `pikaci --help`
    run.register(sub)
    inspect.register(sub)
    summary.register(sub)
    builder.register(sub)
    incus.register(sub)
    forge.register(sub)
    pin.register(sub)
    fulfill.register(sub)
    staged.register(sub)
    serve.register(sub)
    run.register_doit(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.func
    try:
        return command(args)
    except _ERRORS as exc:
        return _error(str(exc))
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return _error(f"{where}{exc.strerror or exc}")
    except KeyboardInterrupt:
        return 130


def _error(message: str) -> int:
    sys.stderr.write(f"pikaci: error: {message}\n")
    return 1


if __name__ == "__main__":
    sys.exit(main())
