"""`pikaci-launch-fulfill-prepared-output LAUNCH_REQUEST`: run the helper a launch request names.

The launch request:

    {"schema_version": 1, "helper_program", "helper_request_path", "helper_result_path",
     "node_id", "output_name"}

The launcher runs `<helper_program> --result-path <helper_result_path> <helper_request_path>`,
passes the helper's stdout and stderr through and exits with its exit status (1 with the error
on stderr when the launch request is unusable or the helper cannot start, 2 for a usage error).

Standard library only: this file is copied to builders and run by their python3.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

SCHEMA_VERSION = 1
USAGE = "usage: pikaci-launch-fulfill-prepared-output LAUNCH_REQUEST_PATH"
PROGRAM = "pikaci-launch-fulfill-prepared-output"


class LaunchError(Exception):
    """The launch request cannot be used; the message names the field at fault."""


def helper_argv(path: str) -> List[str]:
    try:
        with Path(path).open(encoding="utf-8") as handle:
            request: Any = json.load(handle)
    except OSError as exc:
        raise LaunchError(f"launch request {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise LaunchError(f"launch request {path}: invalid JSON ({exc})") from None
    if not isinstance(request, dict):
        raise LaunchError(f"launch request {path}: expected a JSON object")
    if request.get("schema_version") != SCHEMA_VERSION:
        raise LaunchError(
            f"launch request {path}: field `schema_version`: expected {SCHEMA_VERSION}, "
            f"got {request.get('schema_version')!r}"
        )
    fields: Dict[str, str] = {}
    for key in ("helper_program", "helper_request_path", "helper_result_path"):
        value = request.get(key)
        if not isinstance(value, str) or not value:
            raise LaunchError(f"launch request {path}: field `{key}`: expected a non-empty string")
        fields[key] = value
    return [
        fields["helper_program"],
        "--result-path",
        fields["helper_result_path"],
        fields["helper_request_path"],
    ]


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0].startswith("-"):
        sys.stderr.write(USAGE + "\n")
        return 2
    try:
        command = helper_argv(args[0])
    except LaunchError as exc:
        sys.stderr.write(f"{PROGRAM}: {exc}\n")
        return 1
    try:
        # stdout and stderr are inherited: the helper's lines reach the caller as they are
        code = subprocess.run(command, stdin=subprocess.DEVNULL, check=False).returncode
    except OSError as exc:
        sys.stderr.write(f"{PROGRAM}: cannot start {command[0]}: {exc.strerror or exc}\n")
        return 1
    return 128 - code if code < 0 else code  # killed by a signal: as a shell reports it


if __name__ == "__main__":
    sys.exit(main())
