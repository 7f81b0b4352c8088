"""Staged payloads for lanes that run on a builder, in the two modes a target can choose.

`builder` (the upstream default): the snapshot is published to the builder and leased, then
`nix build` runs there against it; the output exists only in the builder's store and is never
copied from here (no silent fallback: a failed remote build fails the payload). `copy`: the
payloads are built here as for local lanes, then `upload:<payload>` copies their closure with
`nix copy --to ssh://…`.

Up-to-date checks ask the builder in one round trip whether it still has the paths: a builder
that garbage-collected them gets them again, an unchanged one costs a single query.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from pikaci.builder.connect import connect
from pikaci.builder.layout import RemoteLayout
from pikaci.builder.snapshots import hold_snapshot, publish_snapshot, snapshot_upload
from pikaci.builder.transport import Builder, TransportError
from pikaci.catalog import Target
from pikaci.model import UploadRecord
from pikaci.payloads import builder_nix, nix
from pikaci.payloads.staged import RESIDENCY_BUILDER, RESIDENCY_LOCAL
from pikaci.plan import build_node, build_task, upload_task

Log = Callable[[str], None]


def commands_log(log: Log) -> Log:
    """Where a transport echoes the remote scripts it runs: the host logs alone when `log` is a
    payload log (it has `quiet`), so the console keeps one line per step."""
    quiet = getattr(log, "quiet", None)
    return quiet if callable(quiet) else log


def require_builder(builder: Optional[Builder], target: Target) -> Builder:
    if builder is None:
        raise TransportError(f"target `{target.id}` builds on a builder but none is configured")
    return builder


def builder_lacks(builder: Builder, paths: Sequence[str], label: str, log: Log) -> List[str]:
    """Which of `paths` the builder's store does not have (one round trip)."""
    return builder_nix.missing_paths(connect(builder, commands_log(log)), paths, label)


def build_on_builder(
    builder: Builder,
    target: Target,
    role: str,
    snapshot: Dict[str, Any],
    run_id: str,
    record_upload: Callable[[UploadRecord], None],
    log: Log,
) -> Dict[str, Any]:
    """Publish and lease the snapshot, `nix build` the payload on the builder, check its
    manifest there; returns the build task's values."""
    assert target.payloads is not None
    payload_id = target.payloads.id
    task_name = build_task(payload_id, role)
    ref = getattr(target.payloads, role)
    tree_id = str(snapshot.get("tree_id") or snapshot["content_hash"])
    layout = RemoteLayout.for_builder(builder)
    transport = connect(builder, commands_log(log))
    with hold_snapshot(transport, layout, tree_id, run_id, log=log) as remote_snapshot:
        published = publish_snapshot(
            transport, layout, Path(snapshot["snapshot_dir"]), tree_id, log
        )
        record_upload(snapshot_upload(builder.host, tree_id, task_name, published))
        source = Path(remote_snapshot)
        build_ref = nix.BuildRef(ref.attr, ref.file)
        paths = builder_nix.remote_build(
            transport,
            build_ref.args(source),
            # in the run's directory: never overwritten by another repository's build
            f"{layout.gcroots_dir(run_id)}/{payload_id}-{role}",
            f"{task_name}: nix build on {builder.host}",
            log,
        )
    store_path = paths[0]
    label = f"{task_name} ({store_path} on {builder.host})"
    manifest = builder_nix.read_remote_manifest(
        transport, store_path, label, f"{task_name}: read the payload manifest"
    )
    log(f"staged output ready on {builder.host}: {ref.attr} -> {store_path}")
    return {
        "role": role,
        "node_id": build_node(payload_id, role),
        "installable": build_ref.describe(source),
        "output_name": ref.attr,
        "store_path": store_path,
        "manifest": manifest.to_dict(),
        "residency": RESIDENCY_BUILDER,
        "on_builder": True,
        "builder": builder.host,
    }


def upload_payloads(
    builder: Builder,
    payload_id: str,
    outputs: Sequence[Dict[str, Any]],
    record_upload: Callable[[UploadRecord], None],
    log: Log,
) -> Dict[str, Any]:
    """`upload:<payload>`: the builder gets the closure of the locally built outputs."""
    task_name = upload_task(payload_id)
    paths = [str(values["store_path"]) for values in outputs]
    transport = connect(builder, commands_log(log))
    stats = builder_nix.copy_closure(
        transport, paths, builder_nix.ssh_options_for(transport), task_name, log
    )
    record_upload(
        UploadRecord(
            kind="closure",
            builder=builder.host,
            subject=payload_id,
            node_id=task_name,
            paths=stats.paths,
            bytes=stats.bytes,
            seconds=round(stats.seconds, 3),
            skipped=stats.paths == 0,
        )
    )
    return {"paths": paths, "closure_paths": stats.total_paths, "builder": builder.host}


def mark_for_builder(values: Dict[str, Any]) -> Dict[str, Any]:
    """A locally built payload that lanes will read on the builder after `upload:`."""
    return {**values, "residency": RESIDENCY_LOCAL, "on_builder": True}
