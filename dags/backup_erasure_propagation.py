"""backup_erasure_propagation: carry erasure tombstones into every retained snapshot, region by region."""

from __future__ import annotations

from airflow.sdk import Asset, AssetAny, AssetOrTimeSchedule, CronTriggerTimetable, dag, task
from lethe.assets import BACKUP_PROPAGATION_URI, ERASURE_TOMBSTONES_URI
from lethe.backup.layout import purged_table_uris
from lethe.config import BACKUP_REGIONS
from lethe.dag_defaults import BACKUP_TASK_TIMEOUT, RUN_TIMEOUT, default_args

DOC = """
### backup_erasure_propagation

Runs when subject_erasure writes tombstones or retention_nightly purges a table,
and nightly at 03:30 UTC. For each backup region (one mapped task each, with its
own S3 client) it applies every tombstone not yet applied to every retained
snapshot: only the objects of the tombstoned subjects' buckets are rewritten, each
once for all its tombstones; the rewrite is read back and verified (checksum,
rows = before - erased) and the manifest updated. Every run then deletes every
noncurrent version of every object of every retained snapshot, and only after that
records the tombstones as applied. Incomplete snapshots left by a killed
backup_nightly are deleted first (when no backup is being written in the region).
Per-region status goes to `backup_propagation_status`, the ledger
(`backup_propagation`) and each erasure certificate.

Purged (expired) rows are not rewritten out of backups: they leave when the
snapshots that hold them expire (policy `backups.retention`); see docs/backups.md.

**When it fails**
- A region task names the region and endpoint it could not reach; the other region's
  work is done and recorded. Fix the endpoint and clear the task (or wait for the next run).
- "rewrite not verified": S3 served something else than was written; the old version is
  kept. Rerun; a rerun repairs half-done rewrites and removes old versions.
"""


@dag(
    dag_id="backup_erasure_propagation",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("30 3 * * *", timezone="UTC"),
        # Any erasure, or a purge of a backed-up table (the policy's `backup: true` tables).
        assets=AssetAny(Asset(ERASURE_TOMBSTONES_URI), *(Asset(uri) for uri in purged_table_uris())),
    ),
    catchup=False,
    max_active_runs=1,
    doc_md=DOC,
    tags=["lethe", "backup", "erasure"],
    default_args=default_args(retry_minutes=10, execution_timeout=BACKUP_TASK_TIMEOUT),
    dagrun_timeout=RUN_TIMEOUT,
)
def backup_erasure_propagation() -> None:
    @task(outlets=[Asset(BACKUP_PROPAGATION_URI)])
    def propagate_region(region: str) -> dict:  # type: ignore[type-arg]
        from lethe.backup.tasks import propagate_task

        return propagate_task(region)

    propagate_region.expand(region=list(BACKUP_REGIONS))


backup_erasure_propagation()
