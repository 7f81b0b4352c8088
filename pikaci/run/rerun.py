"""`pikaci rerun <run_id>` as the reference defines it (§2.8): the old run's target again, on
the old run's snapshot, in a new run that records `rerun_of` and inherits the old run's change
metadata; a skipped run's rerun is a new skipped run.
"""

from __future__ import annotations

from typing import Dict, List, Optional

from pikaci.catalog import Catalog
from pikaci.events import run_finished_event, run_started_event
from pikaci.model import RUN_SKIPPED, PreparedOutputsRecord, RunRecord
from pikaci.plan import lane_task, target_task
from pikaci.run.console import Console
from pikaci.store import PREPARED_OUTPUTS_FILE, RunWriter, StateRoot, write_json
from pikaci.timestamps import new_run_id, now_timestamp

# the old run's prepared-output settings carry over to the rerun, as its change metadata does
INHERITED_FIELDS = tuple(
    name for name in RunRecord.__dataclass_fields__ if name.startswith("prepared_output_")
)


class RerunError(Exception):
    """The old run cannot be rerun here; the message is one line."""


def inherited(old: RunRecord) -> Dict[str, Optional[str]]:
    return {name: getattr(old, name) for name in INHERITED_FIELDS}


def rerun_tasks(catalog: Catalog, old: RunRecord) -> List[str]:
    """What the rerun runs: the old run's target, else its lanes."""
    if old.target_id:
        if catalog.target(old.target_id) is None:
            raise RerunError(
                f"run `{old.run_id}` cannot be rerun: its target `{old.target_id}` is not in "
                "the catalog any more"
            )
        return [target_task(old.target_id)]
    if not old.jobs:
        raise RerunError(
            f"run `{old.run_id}` cannot be rerun because it does not record a target id"
        )
    # the reference's runs have one target; a pikaci run of lanes of several targets (no
    # target id) reruns those lanes, each on its own target's snapshot
    missing = [job.id for job in old.jobs if catalog.lane(job.id) is None]
    if missing:
        raise RerunError(
            f"run `{old.run_id}` cannot be rerun: lanes not in the catalog any more: "
            + ", ".join(missing)
        )
    return [lane_task(job.id) for job in old.jobs]


def record_skipped_rerun(
    state: StateRoot, old: RunRecord, source_root: str, console: Console
) -> RunRecord:
    """A new skipped run for the rerun of a skipped one, reported like any run."""
    run_id = new_run_id()
    moment = now_timestamp()
    run_dir = state.run_dir(run_id)
    record = RunRecord(
        run_id=run_id,
        status=RUN_SKIPPED,
        rerun_of=old.run_id,
        target_id=old.target_id,
        target_description=old.target_description,
        source_root=source_root,
        created_at=moment,
        finished_at=moment,
        prepared_outputs_path=str(run_dir / PREPARED_OUTPUTS_FILE),
        changed_files=list(old.changed_files),
        filters=list(old.filters),
        message=f"rerun of {old.run_id}",
        **inherited(old),  # type: ignore[arg-type]
    )
    writer = RunWriter(run_dir)
    with writer.begin(record):
        write_json(run_dir / PREPARED_OUTPUTS_FILE, PreparedOutputsRecord().to_dict())
    console.event(run_started_event(record))
    console.event(run_finished_event(record))
    console.summary(record, state)
    return record
