"""The `pikaci` console script.

    pikaci [--state-root DIR] run JOB... [--output human|json|jsonl] [-n N] [--continue]
    pikaci [--state-root DIR] rerun RUN_ID [--output ...]
    pikaci [--state-root DIR] list | status RUN | logs RUN | prepared-outputs RUN | gc
    pikaci gc-remote [--keep-runs N] [--keep-snapshots-days D] [--json]   on $PIKACI_BUILDER
    pikaci incus-image FILE [ROOTFS] [--remote]    import the guest image under its alias
    pikaci incus-reap [--older-than SECS] [--remote] [--json]   delete leftover instances
    pikaci ci-plan [--base REF] [--worktree] [--nightly] [--json]   forge lanes to run, and why
    pikaci doit ARGS...          any doit command over the repository's catalog
    pikaci serve [--host H] [--port P] [--repo SLUG=STATE_ROOT]... [--no-auth]   pages + JSON API

`run` and `doit` read the catalog from the repository's `dodo.py` (its `CATALOG`), through
the same doit loader that `doit` itself uses there. Exit status: 1 for a failed run or an
error, 2 for a usage error, 0 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

from pikaci import incus, incus_admin
from pikaci.catalog import Catalog
from pikaci.cli import inspect, remote_gc
from pikaci.forge import BRANCH, NIGHTLY, ChangeSetError, ForgeManifestError
from pikaci.forge_tasks import compute_plan, render_plan
from pikaci.model import RUN_FAILED, RUN_SKIPPED, RecordError, dumps_pretty
from pikaci.server.serve import ServeError, resolve_config, serve
from pikaci.session import OUTPUT_MODES, Settings
from pikaci.settings import builder_from_environment, settings_from_environment
from pikaci.store import StateRoot, StoreError, load_run_record


class UsageError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pikaci", description="Nix-monorepo CI on doit")
    parser.add_argument(
        "--state-root", help="state directory (default: $PIKACI_STATE_ROOT or ./.pikaci)"
    )
    parser.add_argument("-f", "--file", default="dodo.py", help="dodo file declaring CATALOG")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run lanes or targets (`lane:<id>`, `target:<id>` or an id)")
    run.add_argument("jobs", nargs="+", metavar="JOB")
    _run_options(run)
    rerun = sub.add_parser("rerun", help="run a previous run's lanes again on its snapshot")
    rerun.add_argument("run_id")
    _run_options(rerun)

    sub.add_parser("list", help="one line per run, newest first")
    status = sub.add_parser("status", help="a run's record")
    status.add_argument("run_id")
    status.add_argument("--json", action="store_true")
    logs = sub.add_parser("logs", help="a job's host and guest logs")
    logs.add_argument("run_id")
    logs.add_argument("--job")
    logs.add_argument("--kind", choices=("host", "guest", "both"), default="both")
    logs.add_argument("--metadata-json", action="store_true")
    prepared = sub.add_parser("prepared-outputs", help="a run's prepared outputs")
    prepared.add_argument("run_id")
    prepared.add_argument("--json", action="store_true")
    gc = sub.add_parser("gc", help="delete old runs and unreferenced snapshots")
    gc.add_argument("--keep-runs", type=int, default=10)
    gc_remote = sub.add_parser(
        "gc-remote", help="delete old runs and unused snapshots on the builder ($PIKACI_BUILDER)"
    )
    gc_remote.add_argument(
        "--keep-runs",
        type=remote_gc.keep_runs_arg,
        default=remote_gc.DEFAULT_KEEP_RUNS,
        metavar="N",
        help=remote_gc.KEEP_RUNS_HELP,
    )
    gc_remote.add_argument(
        "--keep-snapshots-days",
        type=remote_gc.keep_snapshots_days_arg,
        default=remote_gc.DEFAULT_KEEP_SNAPSHOTS_DAYS,
        metavar="D",
        help=remote_gc.KEEP_SNAPSHOTS_DAYS_HELP,
    )
    gc_remote.add_argument("--json", action="store_true", help="the result as one JSON object")
    image = sub.add_parser(
        "incus-image", help="import the guest image under $PIKACI_INCUS_IMAGE_ALIAS if it changed"
    )
    image.add_argument(
        "files", nargs="+", metavar="FILE", help="unified tarball, or metadata rootfs"
    )
    image.add_argument("--remote", action="store_true", help="on the builder ($PIKACI_BUILDER)")
    reap = sub.add_parser("incus-reap", help="delete Incus instances pikaci left behind")
    reap.add_argument(
        "--older-than",
        type=_non_negative_float,
        default=float(incus.REAP_AFTER_SECS),
        metavar="SECS",
        help="minimum age of a marked instance to delete (default 6 hours)",
    )
    reap.add_argument("--remote", action="store_true", help="on the builder ($PIKACI_BUILDER)")
    reap.add_argument("--json", action="store_true", help="the result as one JSON object")
    plan = sub.add_parser(
        "ci-plan", help="which lanes of ci/forge-lanes.toml the changes select, and why"
    )
    plan.add_argument("--base", default="", help="compare with the merge base of REF and HEAD")
    plan.add_argument(
        "--worktree", action="store_true", help="also count uncommitted and untracked changes"
    )
    plan.add_argument("--nightly", action="store_true", help="the nightly lanes instead")
    plan.add_argument("--json", action="store_true", help="the plan as one JSON object")
    serve = sub.add_parser(
        "serve", help="serve run records and logs: web pages and a token-protected JSON API"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port (0 picks a free one)")
    serve.add_argument(
        "--repo",
        action="append",
        default=[],
        metavar="SLUG=STATE_ROOT",
        help="a repository to serve (repeatable; default: this directory's state root)",
    )
    serve.add_argument(
        "--no-auth",
        action="store_true",
        help="serve without tokens (refused unless --host is a loopback address)",
    )
    doit = sub.add_parser("doit", help="any doit command over the catalog", add_help=False)
    doit.add_argument("doit_args", nargs=argparse.REMAINDER)
    return parser


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be zero or positive, got {text!r}")
    return value


def _run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", choices=OUTPUT_MODES, default=None)
    parser.add_argument("-n", "--jobs-in-parallel", dest="parallel", type=int, default=1)
    parser.add_argument(
        "--continue",
        dest="keep_going",
        action="store_true",
        help="do not stop at the first failed lane",
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except (
        StoreError,
        RecordError,
        UsageError,
        ForgeManifestError,
        ChangeSetError,
        ValueError,
        incus.IncusError,
        incus_admin.IncusAdminError,
        *remote_gc.REMOTE_GC_ERRORS,
        ServeError,
    ) as exc:
        return _error(str(exc))
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return _error(f"{where}{exc.strerror or exc}")
    except KeyboardInterrupt:
        return 130


def _error(message: str) -> int:
    sys.stderr.write(f"pikaci: error: {message}\n")
    return 1


def _dispatch(args: argparse.Namespace) -> int:
    source_root = Path.cwd()
    if args.command == "gc-remote":
        return remote_gc.gc_remote_command(
            builder_from_environment(os.environ),
            args.keep_runs,
            args.keep_snapshots_days,
            args.json,
            sys.stdout,
        )
    if args.command in ("incus-image", "incus-reap"):
        return _incus(args)
    if args.command == "ci-plan":
        kind = NIGHTLY if args.nightly else BRANCH
        plan = compute_plan(source_root, kind, args.base, args.worktree)
        sys.stdout.write(render_plan(plan, kind, args.json))
        return 0
    if args.command in ("run", "rerun", "doit"):
        settings = settings_from_environment(
            source_root, args.state_root, getattr(args, "output", None)
        )
        if args.command == "doit":
            return _doit(args, settings, list(args.doit_args))
        if args.command == "rerun":
            return _rerun(args, settings)
        catalog = _load_catalog(args.file)
        return _run(catalog, settings, _task_names(catalog, args.jobs), args)
    settings = settings_from_environment(source_root, args.state_root, "human")
    state = StateRoot(settings.state_root)
    if args.command == "serve":
        return _serve(args, source_root, state)
    out, err = sys.stdout, sys.stderr
    if args.command == "list":
        return inspect.list_command(state, out, err)
    if args.command == "status":
        return inspect.status_command(state, args.run_id, args.json, out)
    if args.command == "logs":
        return inspect.logs_command(
            state, args.run_id, args.job, args.kind, args.metadata_json, out
        )
    if args.command == "prepared-outputs":
        return inspect.prepared_outputs_command(state, args.run_id, args.json, out)
    if args.command == "gc":
        return inspect.gc_command(state, args.keep_runs, out)
    raise UsageError(f"unknown command {args.command}")


def _serve(args: argparse.Namespace, source_root: Path, state: StateRoot) -> int:
    repos, tokens = resolve_config(
        args.host, args.no_auth, args.repo, source_root, state, os.environ
    )
    return serve(repos, tokens, args.host, args.port, sys.stderr)


def _load_catalog(dodo: str) -> Catalog:
    from doit.loader import get_module

    path = Path(dodo).absolute()
    if not path.is_file():
        raise UsageError(f"{dodo}: no such file (run from the repository root or pass -f)")
    module = get_module(str(path))
    catalog = getattr(module, "CATALOG", None)
    if not isinstance(catalog, Catalog):
        raise UsageError(f"{dodo}: defines no `CATALOG` (a pikaci.catalog.Catalog)")
    return catalog


def _task_names(catalog: Catalog, jobs: Sequence[str]) -> List[str]:
    names = []
    for job in jobs:
        kind, _, ident = job.partition(":")
        if (
            ident
            and kind in ("lane", "target")
            and (
                (kind == "lane" and catalog.lane(ident))
                or (kind == "target" and catalog.target(ident))
            )
        ):
            names.append(job)
        elif not ident and catalog.target(job) is not None:
            names.append(f"target:{job}")
        elif not ident and catalog.lane(job) is not None:
            names.append(f"lane:{job}")
        else:
            raise UsageError(f"unknown job `{job}`")
    return names


def _drive(catalog: Catalog, settings: Settings, doit_args: List[str]) -> Tuple[int, Any]:
    """Run doit over the catalog; (doit's exit code, the closed run record or None)."""
    from doit.doit_cmd import DoitMain

    from pikaci.graph import CatalogLoader

    loader = CatalogLoader(catalog, settings)
    try:
        code: int = DoitMain(loader).run(doit_args)
    finally:
        final = loader.session.finish()  # no-op when the reporter already closed the run
    return code, final


def _run(catalog: Catalog, settings: Settings, tasks: List[str], args: argparse.Namespace) -> int:
    doit_args = ["run"]
    if args.parallel > 1:
        doit_args += ["-n", str(args.parallel), "-P", "thread"]
    if args.keep_going:
        doit_args.append("--continue")
    code, final = _drive(catalog, settings, doit_args + tasks)
    if final is None or code not in (0, 1):
        return 1 if code else 0  # doit itself failed (bad catalog, task error): an error
    return 1 if final.status == RUN_FAILED else 0


def _rerun(args: argparse.Namespace, settings: Settings) -> int:
    state = StateRoot(settings.state_root)
    old = load_run_record(state, args.run_id)
    if old.status == RUN_SKIPPED:
        raise UsageError(f"run `{old.run_id}` was skipped; there is nothing to rerun")
    lanes = [job.id for job in old.jobs]
    if not lanes:
        raise UsageError(f"run `{old.run_id}` cannot be rerun because it records no jobs")
    if not old.snapshot_dir or not Path(old.snapshot_dir).is_dir():
        raise UsageError(
            f"run `{old.run_id}` cannot be rerun: its snapshot "
            f"{old.snapshot_dir or '(none)'} no longer exists"
        )
    catalog = _load_catalog(args.file)
    missing = [lane for lane in lanes if catalog.lane(lane) is None]
    if missing:
        raise UsageError(f"run `{old.run_id}` names lanes the catalog no longer has: {missing}")
    settings.rerun = old
    # a private dep file: a rerun executes everything and leaves doit's state alone
    with tempfile.TemporaryDirectory(prefix="pikaci-rerun-") as scratch:
        settings.dep_file = Path(scratch) / "doit.sqlite3"
        return _run(catalog, settings, [f"lane:{lane}" for lane in lanes], args)


def _doit(args: argparse.Namespace, settings: Settings, doit_args: List[str]) -> int:
    return _drive(_load_catalog(args.file), settings, doit_args)[0]


def _incus(args: argparse.Namespace) -> int:
    config = incus_admin.settings(args.remote)
    host = incus_admin.open_host(args.remote, lambda line: None)
    if args.command == "incus-image":
        done = incus_admin.import_image(host, config, incus_admin.image_files(args.files))
        verb = "imported" if done.imported else "already current:"
        print(f"{verb} {done.alias} in project {done.project} -> {done.fingerprint}")
        return 0
    report = incus_admin.reap_instances(
        host, config, args.older_than, (lambda line: None) if args.json else print
    )
    if args.json:
        sys.stdout.write(dumps_pretty(report.to_dict()).decode())
    else:
        print(
            f"incus reap on {host.name}: removed {len(report.removed)} instance(s), "
            f"kept {len(report.kept)} younger one(s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
