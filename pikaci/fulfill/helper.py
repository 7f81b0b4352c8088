"""`pikaci-fulfill-prepared-output [--result-path PATH] REQUEST`: expose a realized store path.

The request (`PreparedOutputRemoteExposureRequest`):

    {"schema_version": 1, "node_id", "installable", "output_name", "protocol":
     "nix_store_path_v1", "residency", "realized_path": "/nix/store/...",
     "requested_exposures": [{"kind": "host_symlink_mount", "path": <absolute>,
                              "access": "read_only"}]}

For each exposure the helper makes the parent directory, removes whatever is at the path (a
file, a link, a directory) and links the path to the realized path. The result

    {"schema_version": 1, "request_path", "node_id", "output_name", "realized_path",
     "status": "succeeded"|"failed", "fulfilled_exposures_count", "fulfilled_exposures",
     "error"}

is written to `--result-path` (atomically) when given and printed as one compact JSON line;
exit 0 on success, 1 with the error on stderr otherwise, 2 for a usage error.

Standard library only: this file is copied to builders and run by their python3.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any, Dict, List, Optional, Sequence

SCHEMA_VERSION = 1
PROTOCOL = "nix_store_path_v1"
STORE_DIR = "/nix/store"
EXPOSURE_KIND = "host_symlink_mount"
EXPOSURE_ACCESS = "read_only"
USAGE = "usage: pikaci-fulfill-prepared-output [--result-path PATH] REQUEST_PATH"


class FulfillError(Exception):
    """The request cannot be fulfilled; the message names the field at fault."""


def load_json_object(path: str, label: str) -> Dict[str, Any]:
    try:
        with Path(path).open(encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as exc:
        raise FulfillError(f"{label} {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise FulfillError(f"{label} {path}: invalid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise FulfillError(f"{label} {path}: expected a JSON object")
    return data


def _string(request: Dict[str, Any], key: str) -> str:
    value = request.get(key)
    if not isinstance(value, str) or not value:
        raise FulfillError(f"request field `{key}`: expected a non-empty string")
    return value


def _is_normal_absolute(text: str) -> bool:
    """Absolute, without `.`/`..` parts, repeated or trailing slashes."""
    return text.startswith("/") and str(PurePosixPath(text)) == text and ".." not in text.split("/")


def _store_path(request: Dict[str, Any]) -> str:
    realized = _string(request, "realized_path")
    parts = PurePosixPath(realized).parts
    under_store = parts[:3] == ("/", "nix", "store") and len(parts) >= 4
    if not _is_normal_absolute(realized) or not under_store or parts[3].startswith("."):
        raise FulfillError(
            f"request field `realized_path`: {realized!r} is not a path under {STORE_DIR}"
        )
    if not (Path(realized).exists() or Path(realized).is_symlink()):
        raise FulfillError(f"request field `realized_path`: {realized} does not exist")
    return realized


def _exposures(request: Dict[str, Any]) -> List[Dict[str, str]]:
    raw = request.get("requested_exposures")
    if not isinstance(raw, list):
        raise FulfillError("request field `requested_exposures`: expected a list")
    exposures = []
    for index, item in enumerate(raw):
        where = f"request field `requested_exposures[{index}]`"
        if not isinstance(item, dict):
            raise FulfillError(f"{where}: expected an object")
        if item.get("kind") != EXPOSURE_KIND:
            raise FulfillError(
                f"{where}.kind: expected {EXPOSURE_KIND!r}, got {item.get('kind')!r}"
            )
        if item.get("access", EXPOSURE_ACCESS) != EXPOSURE_ACCESS:
            raise FulfillError(f"{where}.access: expected {EXPOSURE_ACCESS!r}")
        path = item.get("path")
        if not isinstance(path, str) or not _is_normal_absolute(path):
            raise FulfillError(f"{where}.path: expected an absolute normal path, got {path!r}")
        if path == "/":
            raise FulfillError(f"{where}.path: refusing to replace /")
        exposures.append({"kind": EXPOSURE_KIND, "path": path, "access": EXPOSURE_ACCESS})
    return exposures


def _replace_with_link(path: str, target: str) -> None:
    """`path` becomes a link to `target`, whatever was there (never following a link)."""
    link = Path(path)
    link.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode: Optional[int] = link.lstat().st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and stat.S_ISDIR(mode):
        shutil.rmtree(link)
    tmp = link.with_name(f".{link.name}.fulfill-{os.getpid()}")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(target)
    tmp.replace(link)  # replaces a file or a link in one step


def fulfill(request_path: str) -> Dict[str, Any]:
    """Fulfil the request at `request_path`; the result (status failed with the error, never an
    exception, once the request could be read)."""
    result: Dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "request_path": request_path,
        "node_id": None,
        "output_name": None,
        "realized_path": None,
        "status": "failed",
        "fulfilled_exposures_count": 0,
        "fulfilled_exposures": [],
        "error": None,
    }
    try:
        request = load_json_object(request_path, "request")
        if request.get("schema_version") != SCHEMA_VERSION:
            raise FulfillError(
                f"request field `schema_version`: expected {SCHEMA_VERSION}, "
                f"got {request.get('schema_version')!r}"
            )
        result["node_id"] = _string(request, "node_id")
        result["output_name"] = _string(request, "output_name")
        if request.get("protocol") != PROTOCOL:
            raise FulfillError(
                f"request field `protocol`: expected {PROTOCOL!r}, got {request.get('protocol')!r}"
            )
        realized = _store_path(request)
        result["realized_path"] = realized
        exposures = _exposures(request)
        for exposure in exposures:
            _replace_with_link(exposure["path"], realized)
            result["fulfilled_exposures"].append(exposure)
        result["fulfilled_exposures_count"] = len(result["fulfilled_exposures"])
        result["status"] = "succeeded"
    except (FulfillError, OSError) as exc:
        result["error"] = (
            str(exc) if isinstance(exc, FulfillError) else f"{exc.filename}: {exc.strerror}"
        )
        result["fulfilled_exposures_count"] = len(result["fulfilled_exposures"])
    return result


def write_result(path: str, result: Dict[str, Any]) -> None:
    """`result` as pretty JSON at `path`, atomically (temp file, fsync, rename)."""
    directory = Path(path).absolute().parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".result-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def parse_args(argv: Sequence[str]) -> Optional[Dict[str, Optional[str]]]:
    """{"request", "result"} or None for a usage error (argparse is avoided for its exit)."""
    args = list(argv)
    result: Optional[str] = None
    if args[:1] == ["--result-path"]:
        if len(args) < 2:
            return None
        result, args = args[1], args[2:]
    elif args and args[0].startswith("--result-path="):
        result, args = args[0].split("=", 1)[1], args[1:]
    if len(args) != 1 or args[0].startswith("-") or (result is not None and not result):
        return None
    return {"request": args[0], "result": result}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parsed = parse_args(sys.argv[1:] if argv is None else argv)
    if parsed is None:
        sys.stderr.write(USAGE + "\n")
        return 2
    request_path = str(Path(str(parsed["request"])).absolute())
    result = fulfill(request_path)
    if parsed["result"] is not None:
        try:
            write_result(str(parsed["result"]), result)
        except OSError as exc:
            sys.stderr.write(
                f"pikaci-fulfill-prepared-output: result {parsed['result']}: {exc.strerror}\n"
            )
            return 1
    sys.stdout.write(json.dumps(result, separators=(",", ":")) + "\n")
    if result["status"] != "succeeded":
        sys.stderr.write(f"pikaci-fulfill-prepared-output: {result['error']}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
