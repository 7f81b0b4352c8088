"""`incus-image` and `incus-reap`: the guest image and leftover instances, here or on the
builder."""

from __future__ import annotations

import argparse
import sys

from pikaci.incus import admin
from pikaci.incus import config as incus_config
from pikaci.model import dumps_pretty
from pikaci.options import JSON, REMOTE

ERRORS = (incus_config.IncusError, admin.IncusAdminError)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    image = sub.add_parser(
        "incus-image", help="import the guest image under $PIKACI_INCUS_IMAGE_ALIAS if it changed"
    )
    image.add_argument(
        "files", nargs="+", metavar="FILE", help="unified tarball, or metadata rootfs"
    )
    REMOTE.add_to(image)
    image.set_defaults(func=image_command)
    reap = sub.add_parser("incus-reap", help="delete Incus instances pikaci left behind")
    admin.OLDER_THAN.add_to(reap)
    REMOTE.add_to(reap)
    JSON.add_to(reap)
    reap.set_defaults(func=reap_command)


def image_command(args: argparse.Namespace) -> int:
    config = admin.settings(args.remote)
    host = admin.open_host(args.remote, lambda line: None)
    done = admin.import_image(host, config, admin.image_files(args.files))
    verb = "imported" if done.imported else "already current:"
    print(f"{verb} {done.alias} in project {done.project} -> {done.fingerprint}")
    return 0


def reap_command(args: argparse.Namespace) -> int:
    config = admin.settings(args.remote)
    host = admin.open_host(args.remote, lambda line: None)
    # with --json, stdout carries the JSON object only
    report = admin.reap_instances(
        host, config, args.older_than, (lambda line: None) if args.json else print
    )
    if args.json:
        sys.stdout.write(dumps_pretty(report.to_dict()).decode())
    else:
        print(admin.reap_summary(host, report))
    return 0
