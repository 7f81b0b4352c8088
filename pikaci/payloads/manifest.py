"""The payload manifest of a staged output: reading, validating and resolving mount sources.

Every staged output carries `share/pikaci/payload-manifest.json` (written by `nix/ci/lib.nix`
or the production `postInstall` hook) as compact, key-sorted JSON:

    {"asset_roots":[{"name":"demo","relative_path":"share/demo"}],
     "entrypoints":[{"name":"run-demo","relative_path":"bin/run-demo"}],
     "kind":"staged_linux_workspace_build_v1",
     "mounts":[{"guest_path":"/staged/linux-rust/workspace-build",
                "name":"workspace_build_root","read_only":true,"relative_path":"."}],
     "schema_version":1}

`entrypoints`, `asset_roots` and `mounts` default to empty when absent; every field of an item
is required. Validation is all-or-nothing: any problem raises `ManifestError`, whose message is
a single line starting with the caller's label for the output (for example
`build:demo:build (/nix/store/...-x)`) and, for an item, its list, index and name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple

import orjson

MANIFEST_RELATIVE_PATH = "share/pikaci/payload-manifest.json"
MANIFEST_SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (MANIFEST_SCHEMA_VERSION,)


class ManifestError(ValueError):
    """A payload manifest is missing or invalid. `str()` is one line: `<output>: <detail>`."""

    def __init__(self, output: str, detail: str) -> None:
        self.output = output
        self.detail = detail
        super().__init__(_one_line(f"{output}: {detail}"))

    def __reduce__(self) -> Tuple[Any, ...]:
        return (type(self), (self.output, self.detail))


@dataclass(frozen=True)
class Entrypoint:
    name: str
    relative_path: str

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "relative_path": self.relative_path}


@dataclass(frozen=True)
class AssetRoot:
    name: str
    relative_path: str

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "relative_path": self.relative_path}


@dataclass(frozen=True)
class PayloadMount:
    name: str
    relative_path: str  # "" or "." is the output root itself
    guest_path: str
    read_only: bool

    def to_dict(self) -> Dict[str, Any]:
        return {
            "guest_path": self.guest_path,
            "name": self.name,
            "read_only": self.read_only,
            "relative_path": self.relative_path,
        }


@dataclass(frozen=True)
class PayloadManifest:
    schema_version: int
    kind: str
    entrypoints: Tuple[Entrypoint, ...] = ()
    asset_roots: Tuple[AssetRoot, ...] = ()
    mounts: Tuple[PayloadMount, ...] = ()

    def to_dict(self) -> Dict[str, Any]:
        """The manifest as JSON data, keys in sorted order like the Nix writer emits them."""
        return {
            "asset_roots": [item.to_dict() for item in self.asset_roots],
            "entrypoints": [item.to_dict() for item in self.entrypoints],
            "kind": self.kind,
            "mounts": [item.to_dict() for item in self.mounts],
            "schema_version": self.schema_version,
        }


@dataclass(frozen=True)
class MountSource:
    mount: PayloadMount
    source: Path  # fully resolved host path, inside the resolved output root


# -- parsing --------------------------------------------------------------------------------


def parse_manifest(data: object, output: str) -> PayloadManifest:
    """Validate decoded manifest JSON. `output` labels the staged output in error messages.

    Unknown fields, at the top level or in an item, are ignored rather than rejected so that a
    newer writer's manifest still loads here; they are not carried into `to_dict()`.
    """
    # Unknown keys are tolerated (forward compatible): only the known fields are read below.
    if not isinstance(data, dict):
        raise ManifestError(output, f"payload manifest must be a JSON object, got {_kind(data)}")

    version = _required(data, "schema_version", output, "")
    if not _is_int(version):
        raise ManifestError(output, f"schema_version must be an integer, got {_kind(version)}")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        supported = ", ".join(str(v) for v in SUPPORTED_SCHEMA_VERSIONS)
        raise ManifestError(
            output, f"unsupported schema_version {version} (supported: {supported})"
        )

    kind = _required(data, "kind", output, "")
    if not isinstance(kind, str):
        raise ManifestError(output, f"kind must be a string, got {_kind(kind)}")
    if not kind.strip():
        raise ManifestError(output, "kind must not be blank")

    entrypoints = tuple(
        Entrypoint(name, path)
        for name, path in _parse_path_items(
            _list(data, "entrypoints", output), "entrypoints", output
        )
    )
    asset_roots = tuple(
        AssetRoot(name, path)
        for name, path in _parse_path_items(
            _list(data, "asset_roots", output), "asset_roots", output
        )
    )
    mounts = _parse_mounts(_list(data, "mounts", output), output)
    return PayloadManifest(
        schema_version=version,
        kind=kind,
        entrypoints=entrypoints,
        asset_roots=asset_roots,
        mounts=mounts,
    )


def read_manifest(output_root: Path, output: str) -> PayloadManifest:
    """Read and validate `<output_root>/share/pikaci/payload-manifest.json`."""
    path = Path(output_root) / MANIFEST_RELATIVE_PATH
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        raise ManifestError(
            output, f"missing payload manifest for staged output {output_root}"
        ) from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ManifestError(output, f"cannot read {MANIFEST_RELATIVE_PATH}: {reason}") from None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ManifestError(output, f"invalid JSON in {MANIFEST_RELATIVE_PATH}: {exc}") from None
    return parse_manifest(data, output)


def mount_sources(output_root: Path, manifest: PayloadManifest, output: str) -> List[MountSource]:
    """Resolve every mount's host source: realpath of the root (or root/relative_path).

    A source that does not exist, or that resolves outside the resolved output root (a symlink
    pointing elsewhere), is an error; either all mounts resolve or none is returned.
    """
    root = _resolve(Path(output_root))
    if root is None:
        raise ManifestError(output, f"staged output root {output_root} does not exist")
    resolved: List[MountSource] = []
    for index, mount in enumerate(manifest.mounts):
        where = _item_label("mounts", index, mount.name)
        relative = mount.relative_path
        candidate = root if relative in ("", ".") else root / relative
        source = _resolve(candidate)
        if source is None:
            raise ManifestError(
                output,
                f"{where}: source {_quote(relative)} does not exist under the output root",
            )
        if not source.is_relative_to(root):
            raise ManifestError(
                output,
                f"{where}: source {_quote(relative)} resolves to {source}, "
                f"outside the output root {root}",
            )
        resolved.append(MountSource(mount=mount, source=source))
    return resolved


# -- helpers --------------------------------------------------------------------------------


def _parse_path_items(items: Sequence[Any], field: str, output: str) -> List[Tuple[str, str]]:
    parsed: List[Tuple[str, str]] = []
    seen: Dict[str, int] = {}
    for index, item in enumerate(items):
        name = _item_name(item, field, index, output)
        where = _item_label(field, index, name)
        relative = _item_string(item, "relative_path", where, output)
        _check_relative_path(relative, where, output)
        if name in seen:
            raise ManifestError(
                output,
                f"duplicate name {_quote(name)} in {field} ({field}[{seen[name]}] and "
                f"{field}[{index}])",
            )
        seen[name] = index
        parsed.append((name, relative))
    return parsed


def _parse_mounts(items: Sequence[Any], output: str) -> Tuple[PayloadMount, ...]:
    mounts: List[PayloadMount] = []
    names: Dict[str, int] = {}
    guest_paths: Dict[str, int] = {}
    for index, item in enumerate(items):
        name = _item_name(item, "mounts", index, output)
        where = _item_label("mounts", index, name)
        relative = _item_string(item, "relative_path", where, output)
        _check_relative_path(relative, where, output)
        guest = _item_string(item, "guest_path", where, output)
        _check_guest_path(guest, where, output)
        read_only = _required(item, "read_only", output, where)
        if not isinstance(read_only, bool):
            raise ManifestError(
                output, f"{where}: read_only must be a boolean, got {_kind(read_only)}"
            )
        if name in names:
            raise ManifestError(
                output,
                f"duplicate name {_quote(name)} in mounts (mounts[{names[name]}] and "
                f"mounts[{index}])",
            )
        if guest in guest_paths:
            first = guest_paths[guest]
            raise ManifestError(
                output,
                f"duplicate guest_path {_quote(guest)} "
                f"({_item_label('mounts', first, mounts[first].name)} and {where})",
            )
        names[name] = index
        guest_paths[guest] = index
        mounts.append(PayloadMount(name, relative, guest, read_only))
    return tuple(mounts)


def _list(data: Mapping[str, Any], field: str, output: str) -> List[Any]:
    if field not in data:
        return []
    value = data[field]
    if not isinstance(value, list):
        raise ManifestError(output, f"{field} must be a list, got {_kind(value)}")
    return value


def _item_name(item: object, field: str, index: int, output: str) -> str:
    where = f"{field}[{index}]"
    if not isinstance(item, dict):
        raise ManifestError(output, f"{where} must be a JSON object, got {_kind(item)}")
    name = _item_string(item, "name", where, output)
    if not name.strip():
        raise ManifestError(output, f"{where}: name must not be blank")
    return name


def _item_string(item: Mapping[str, Any], key: str, where: str, output: str) -> str:
    value = _required(item, key, output, where)
    if not isinstance(value, str):
        raise ManifestError(output, f"{where}: {key} must be a string, got {_kind(value)}")
    return value


def _required(data: Mapping[str, Any], key: str, output: str, where: str) -> Any:
    if key not in data:
        prefix = f"{where}: " if where else ""
        raise ManifestError(output, f"{prefix}missing field {_quote(key)}")
    return data[key]


def _check_relative_path(relative: str, where: str, output: str) -> None:
    """`""` and `"."` mean the output root; otherwise relative and free of `..` components."""
    if "\x00" in relative:
        raise ManifestError(output, f"{where}: relative_path {_quote(relative)} contains NUL")
    if relative.startswith("/"):
        raise ManifestError(
            output, f"{where}: relative_path {_quote(relative)} must not be absolute"
        )
    if ".." in relative.split("/"):
        raise ManifestError(
            output, f"{where}: relative_path {_quote(relative)} must not contain '..'"
        )


def _check_guest_path(guest: str, where: str, output: str) -> None:
    """Absolute, normalised (no `.`/`..`, no `//`, no trailing `/`) and not `/` itself."""
    problem: Optional[str] = None
    if "\x00" in guest:
        problem = "contains NUL"
    elif not guest.startswith("/"):
        problem = "must be absolute"
    elif guest == "/":
        problem = "must not be the guest root"
    elif "//" in guest:
        problem = "must not contain '//'"
    elif guest.endswith("/"):
        problem = "must not end with '/'"
    else:
        components: Set[str] = set(guest.split("/")[1:])
        if ".." in components:
            problem = "must not contain '..'"
        elif "." in components:
            problem = "must not contain '.' components"
    if problem is not None:
        raise ManifestError(output, f"{where}: guest_path {_quote(guest)} {problem}")


def _resolve(path: Path) -> Optional[Path]:
    """Fully resolved path, or None when it (or a symlink on the way) does not resolve."""
    try:
        return path.resolve(strict=True)
    except (OSError, RuntimeError, ValueError):  # RuntimeError: symlink loop before 3.13
        return None


def _item_label(field: str, index: int, name: str) -> str:
    return f"{field}[{index}] {_quote(name)}"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind(value: object) -> str:
    """The JSON type name of a decoded value, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _one_line(text: str) -> str:
    """Escape anything non-printable (newlines, tabs, U+2028 ...) so a message stays one line."""
    if text.isprintable():
        return text
    return "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        for char in text
    )
