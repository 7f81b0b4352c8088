"""Targets, lanes and their execution (placement x runtime), with load-time validation.

A repository declares its catalog in its own `dodo.py`; this module holds only the types, the
vocabularies and the rules. Placement and runtime are explicit fields of every lane and are
never inferred from ids or command shapes. Construction never raises: `validate()` checks
everything and reports the first problem as one line naming the target, lane and field, so a
bad catalog is an error message, not a traceback.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from pikaci.ids import ID_RULE, is_safe_id
from pikaci.snapshot import SnapshotFilter

PLACEMENT_LOCAL = "local"
PLACEMENT_REMOTE_SSH = "remote_ssh"
PLACEMENTS = (PLACEMENT_LOCAL, PLACEMENT_REMOTE_SSH)

RUNTIME_HOST_PROCESS = "host_process"
RUNTIME_BUBBLEWRAP = "bubblewrap"
RUNTIME_INCUS = "incus"
RUNTIME_TART = "tart"
RUNTIMES = (RUNTIME_HOST_PROCESS, RUNTIME_BUBBLEWRAP, RUNTIME_INCUS, RUNTIME_TART)

# every placement x runtime pair and the executor label its job records carry
LOCAL_HOST_PROCESS = (PLACEMENT_LOCAL, RUNTIME_HOST_PROCESS)
LOCAL_BUBBLEWRAP = (PLACEMENT_LOCAL, RUNTIME_BUBBLEWRAP)
REMOTE_SSH_INCUS = (PLACEMENT_REMOTE_SSH, RUNTIME_INCUS)
LOCAL_TART = (PLACEMENT_LOCAL, RUNTIME_TART)
REMOTE_SSH_HOST_PROCESS = (PLACEMENT_REMOTE_SSH, RUNTIME_HOST_PROCESS)
LOCAL_INCUS = (PLACEMENT_LOCAL, RUNTIME_INCUS)
REMOTE_SSH_TART = (PLACEMENT_REMOTE_SSH, RUNTIME_TART)
REMOTE_SSH_BUBBLEWRAP = (PLACEMENT_REMOTE_SSH, RUNTIME_BUBBLEWRAP)
EXECUTOR_LABELS: Dict[Tuple[str, str], str] = {
    LOCAL_HOST_PROCESS: "host_local",
    LOCAL_BUBBLEWRAP: "local_sandbox",
    REMOTE_SSH_INCUS: "remote_linux_vm",
    LOCAL_TART: "tart_local",
    REMOTE_SSH_HOST_PROCESS: "remote_ssh_host_process",
    LOCAL_INCUS: "local_incus",
    REMOTE_SSH_TART: "remote_ssh_tart",
    REMOTE_SSH_BUBBLEWRAP: "remote_ssh_sandbox",
}

# pairs this version can run; `pikaci.runtimes` dispatches exactly these
SUPPORTED_EXECUTIONS: Tuple[Tuple[str, str], ...] = (
    LOCAL_HOST_PROCESS,
    LOCAL_BUBBLEWRAP,
    REMOTE_SSH_HOST_PROCESS,
    REMOTE_SSH_BUBBLEWRAP,
    LOCAL_INCUS,
    REMOTE_SSH_INCUS,
)

DEFAULT_TIMEOUT_SECS = 1800
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_TIMEOUT_SECS = 30 * 24 * 3600  # past any CI job; keeps deadlines inside every clock

# where a target's staged payloads are realized (StagedPayloads.realize)
REALIZE_LOCAL = "local"  # built here; lanes run here
REALIZE_ON_BUILDER = "builder"  # `nix build` on the builder against the uploaded snapshot
REALIZE_COPY = "copy"  # built here, closure copied to the builder with `nix copy`
REALIZATIONS = (REALIZE_LOCAL, REALIZE_ON_BUILDER, REALIZE_COPY)


class CatalogError(ValueError):
    """One line naming the target, lane and field at fault."""


@dataclass(frozen=True)
class Execution:
    placement: str
    runtime: str

    @property
    def pair(self) -> Tuple[str, str]:
        return (self.placement, self.runtime)

    @property
    def executor(self) -> str:
        return EXECUTOR_LABELS.get(self.pair, f"{self.placement}_{self.runtime}")


# what a Lane without `execution=` holds, so that validation names the lane instead of a
# TypeError naming nothing; placement and runtime are never defaulted
MISSING_EXECUTION = Execution(placement="", runtime="")


@dataclass(frozen=True)
class Lane:
    id: str
    command: str
    execution: Execution = MISSING_EXECUTION
    timeout_secs: int = DEFAULT_TIMEOUT_SECS
    description: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    # guest runtimes: run the command as root instead of the unprivileged guest user
    run_as_root: bool = False
    # sandboxed runtimes: keep the host network (off by default)
    network: bool = False

    def spec(self) -> Dict[str, Any]:
        """Everything about the lane that changes what it runs: part of its identity."""
        return {
            "id": self.id,
            "command": self.command,
            "placement": self.execution.placement,
            "runtime": self.execution.runtime,
            "timeout_secs": self.timeout_secs,
            "env": dict(sorted(self.env.items())),
            "run_as_root": self.run_as_root,
            "network": self.network,
        }


@dataclass(frozen=True)
class Installable:
    """A nix attribute built from the target's snapshot: of its flake, or of a classic file."""

    attr: str
    file: Optional[str] = None  # relative to the snapshot root; None = the snapshot's flake.nix


@dataclass(frozen=True)
class StagedPayloads:
    """The two staged payloads lanes of a target get mounted read-only in their guest.

    Targets naming the same `id` share the builds (`build:<id>:deps`, `build:<id>:build`), so
    they must declare the same installables and the same snapshot filter.
    """

    id: str
    deps: Installable
    build: Installable
    # REALIZE_*; None: `local` when the target's lanes run here, `builder` (the upstream
    # default) when they run on a builder
    realize: Optional[str] = None


@dataclass(frozen=True)
class Target:
    id: str
    lanes: Sequence[Lane]
    description: str = ""
    # extra copy-filter entries: a bare name is excluded at any depth, "/path" from the root
    snapshot_excludes: Sequence[str] = ()
    payloads: Optional[StagedPayloads] = None

    @property
    def remote(self) -> bool:
        return any(lane.execution.placement == PLACEMENT_REMOTE_SSH for lane in self.lanes)

    @property
    def realization(self) -> str:
        """Where the payloads are realized (only meaningful when there are payloads)."""
        chosen = self.payloads.realize if self.payloads is not None else None
        return chosen or (REALIZE_ON_BUILDER if self.remote else REALIZE_LOCAL)


@dataclass(frozen=True)
class Catalog:
    targets: Sequence[Target]

    def iter_lanes(self) -> Iterator[Tuple[Target, Lane]]:
        for target in self.targets:
            for lane in target.lanes:
                yield target, lane

    def target(self, target_id: str) -> Optional[Target]:
        return next((t for t in self.targets if t.id == target_id), None)

    def lane(self, lane_id: str) -> Optional[Tuple[Target, Lane]]:
        return next(((t, lane) for t, lane in self.iter_lanes() if lane.id == lane_id), None)

    def validate(self) -> Catalog:
        """Raise CatalogError for the first problem found; return self when all is well."""
        if not isinstance(self.targets, (list, tuple)) or not self.targets:
            raise CatalogError("catalog: `targets` must be a non-empty list of Target")
        target_ids: List[str] = []
        lane_ids: Dict[str, str] = {}
        payloads: Dict[str, Target] = {}
        for index, target in enumerate(self.targets):
            where = f"catalog: targets[{index}]"
            if not isinstance(target, Target):
                raise CatalogError(f"{where}: expected a Target, got {type(target).__name__}")
            _check_id(target.id, f"{where}.id")
            where = f"target `{target.id}`"
            if target.id in target_ids:
                raise CatalogError(f"{where}: duplicate target id")
            target_ids.append(target.id)
            _check_str(target.description, f"{where}: field `description`")
            _check_excludes(target.snapshot_excludes, where)
            _check_payloads(target, where, payloads)
            if not isinstance(target.lanes, (list, tuple)) or not target.lanes:
                raise CatalogError(f"{where}: `lanes` must be a non-empty list of Lane")
            for lane_index, lane in enumerate(target.lanes):
                if not isinstance(lane, Lane):
                    raise CatalogError(
                        f"{where}: lanes[{lane_index}] is a {type(lane).__name__}, not a Lane"
                    )
                _validate_lane(lane, where, lane_index)
                if lane.id in lane_ids:
                    other = lane_ids[lane.id]
                    raise CatalogError(
                        f"lane `{lane.id}`: duplicate lane id (in targets `{other}` "
                        f"and `{target.id}`)"
                    )
                lane_ids[lane.id] = target.id
            _check_realization(target, where)
            staged = target.payloads
            first = payloads.get(staged.id) if staged is not None else None
            if staged is not None and first is not None and first.realization != target.realization:
                raise CatalogError(
                    f"{where}: shares payloads `{staged.id}` with target `{first.id}` "
                    f"but realizes them `{target.realization}`, not `{first.realization}`"
                )
        return self


def _validate_lane(lane: Lane, target_where: str, index: int) -> None:
    _check_id(lane.id, f"{target_where}: lanes[{index}].id")
    where = f"lane `{lane.id}`"
    if not isinstance(lane.command, str) or not lane.command.strip():
        raise CatalogError(f"{where}: field `command` must be a non-empty string")
    timeout = lane.timeout_secs
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int)
        or not 0 < timeout <= MAX_TIMEOUT_SECS
    ):
        raise CatalogError(
            f"{where}: field `timeout_secs` must be a positive integer of at most "
            f"{MAX_TIMEOUT_SECS} (30 days), got {timeout!r}"
        )
    _check_str(lane.description, f"{where}: field `description`")
    if not isinstance(lane.env, Mapping) or not all(
        isinstance(k, str) and _ENV_NAME.fullmatch(k) and isinstance(v, str)
        for k, v in lane.env.items()
    ):
        # names reach shells (`export NAME=...` on a builder): only plain variable names
        raise CatalogError(
            f"{where}: field `env` must map variable names ([A-Za-z_][A-Za-z0-9_]*) to strings"
        )
    execution = lane.execution
    if execution is MISSING_EXECUTION:
        raise CatalogError(
            f"{where}: missing field `execution`: every lane declares "
            "Execution(placement=..., runtime=...)"
        )
    if not isinstance(execution, Execution):
        raise CatalogError(
            f"{where}: field `execution` must be an Execution(placement=..., runtime=...)"
        )
    if execution.placement not in PLACEMENTS:
        raise CatalogError(
            f"{where}: unknown placement {execution.placement!r} "
            f"(expected one of {', '.join(PLACEMENTS)})"
        )
    if execution.runtime not in RUNTIMES:
        raise CatalogError(
            f"{where}: unknown runtime {execution.runtime!r} "
            f"(expected one of {', '.join(RUNTIMES)})"
        )
    for flag in ("run_as_root", "network"):
        if not isinstance(getattr(lane, flag), bool):
            raise CatalogError(f"{where}: field `{flag}` must be true or false")
    if execution.pair not in SUPPORTED_EXECUTIONS:
        supported = ", ".join(f"{p} + {r}" for p, r in SUPPORTED_EXECUTIONS)
        raise CatalogError(
            f"{where}: placement `{execution.placement}` with runtime `{execution.runtime}` "
            f"is not supported (supported: {supported})"
        )


def _check_payloads(target: Target, where: str, seen: Dict[str, Target]) -> None:
    staged = target.payloads
    if staged is None:
        return
    if not isinstance(staged, StagedPayloads):
        raise CatalogError(f"{where}: field `payloads` must be a StagedPayloads")
    _check_id(staged.id, f"{where}: field `payloads.id`")
    for role in ("deps", "build"):
        ref = getattr(staged, role)
        label = f"{where}: field `payloads.{role}`"
        if not isinstance(ref, Installable):
            raise CatalogError(f"{label} must be an Installable(attr=..., file=None)")
        if (
            not isinstance(ref.attr, str)
            or not ref.attr.strip()
            or any(c in ref.attr for c in "# ")
        ):
            raise CatalogError(f"{label}: invalid attribute {ref.attr!r}")
        if ref.file is not None and (
            not isinstance(ref.file, str)
            or not ref.file
            or ref.file.startswith("/")
            or ".." in ref.file.split("/")
        ):
            raise CatalogError(
                f"{label}: file must be a path inside the snapshot, got {ref.file!r}"
            )
    other = seen.setdefault(staged.id, target)
    if other is not target and (
        other.payloads != staged or list(other.snapshot_excludes) != list(target.snapshot_excludes)
    ):
        raise CatalogError(
            f"{where}: shares payloads `{staged.id}` with target `{other.id}` but declares "
            "different installables, realization or snapshot excludes "
            "(a shared build needs one snapshot)"
        )


def _check_realization(target: Target, where: str) -> None:
    """Payloads live in one store, so a staged target's lanes share one placement."""
    if target.payloads is None:
        return
    realize = target.payloads.realize
    if realize is not None and realize not in REALIZATIONS:
        raise CatalogError(
            f"{where}: field `payloads.realize` must be one of {', '.join(REALIZATIONS)}, "
            f"got {realize!r}"
        )
    placements = sorted({lane.execution.placement for lane in target.lanes})
    if len(placements) > 1:
        raise CatalogError(
            f"{where}: lanes with staged payloads must share one placement, found "
            f"{' and '.join(placements)} (the payloads live in one Nix store)"
        )
    if target.remote and target.realization == REALIZE_LOCAL:
        raise CatalogError(
            f"{where}: field `payloads.realize` is `local` but the lanes run on a builder; "
            f"use `{REALIZE_ON_BUILDER}` or `{REALIZE_COPY}`"
        )
    if not target.remote and target.realization != REALIZE_LOCAL:
        raise CatalogError(
            f"{where}: field `payloads.realize` is `{target.realization}` but the lanes run "
            "locally; use `local` or leave it out"
        )


def _check_id(value: object, where: str) -> None:
    if not is_safe_id(value):
        raise CatalogError(f"{where}: invalid id {value!r} (expected {ID_RULE})")


def _check_str(value: object, where: str) -> None:
    if not isinstance(value, str):
        raise CatalogError(f"{where} must be a string")


def _check_excludes(excludes: object, where: str) -> None:
    field_name = f"{where}: field `snapshot_excludes`"
    if not isinstance(excludes, (list, tuple)) or not all(isinstance(e, str) for e in excludes):
        raise CatalogError(f"{field_name} must be a list of strings")
    try:
        SnapshotFilter(extra_excludes=tuple(excludes))  # the filter's own rules, checked early
    except ValueError as exc:
        raise CatalogError(f"{field_name}: {exc}") from None
