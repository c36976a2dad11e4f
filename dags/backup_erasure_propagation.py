"""backup_erasure_propagation: carry erasure tombstones into every retained snapshot, region by region."""

from __future__ import annotations

from airflow.sdk import Asset, AssetAny, AssetOrTimeSchedule, CronTriggerTimetable, TaskGroup, dag, task
from lethe.assets import BACKUP_ERASURES_UNAPPLIED_URI, BACKUP_PROPAGATION_URI, ERASURE_TOMBSTONES_URI
from lethe.backup.layout import purged_table_uris
from lethe.config import BACKUP_REGIONS
from lethe.dag_defaults import BACKUP_TASK_TIMEOUT, RUN_TIMEOUT, default_args

DOC = """
### backup_erasure_propagation

Runs when subject_erasure writes tombstones, retention_nightly purges a table or
backup_nightly leaves an erasure not applied in every region (a snapshot written
while a person was erased holds them), and nightly at 03:30 UTC. For each backup region (a task group named after it):
`plan` lists the retained snapshots, after deleting incomplete ones left by a killed
backup_nightly (when no backup is being written in the region); `propagate_snapshot`
is mapped over them (one task per snapshot, labelled with its id, so workers share
them) and applies every tombstone not yet applied to that snapshot: only the objects
of the tombstoned subjects' buckets are rewritten, each once for all its tombstones;
the rewrite is read back and verified (checksum, rows = before - erased) and the
manifest updated; then every noncurrent version of every object of the snapshot is
deleted, and only after that are the tombstones recorded as applied to it. `finish`
marks a tombstone applied in the region once every snapshot there has it, writes the
ledger (`backup_propagation`) and updates each erasure certificate.

Purged (expired) rows are not rewritten out of backups: they leave when the
snapshots that hold them expire (policy `backups.retention`); see docs/backups.md.

**When it fails**
- A region's `plan` names the region and endpoint it could not reach; the other region's
  work is done and recorded. Fix the endpoint and clear the task (or wait for the next run).
- A failed `propagate_snapshot` names its snapshot; the other snapshots' tasks finish, and
  `finish` waits for a rerun (a tombstone is applied in a region only when every snapshot is).
- "rewrite not verified": S3 served something else than was written; the old version is
  kept. Rerun; a rerun repairs half-done rewrites and removes old versions.
- "s3://... is missing: a manifest names it": that object was deleted outside Lethe. Remove
  its delete marker (its newest version comes back) or delete the snapshot, manifest first;
  until then no erasure reaches `applied` in the region.
"""


@dag(
    dag_id="backup_erasure_propagation",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("30 3 * * *", timezone="UTC"),
        # Any erasure, a purge of a backed-up table (the policy's `backup: true` tables), or new snapshots
        # holding an erased person.
        assets=AssetAny(
            Asset(ERASURE_TOMBSTONES_URI),
            Asset(BACKUP_ERASURES_UNAPPLIED_URI),
            *(Asset(uri) for uri in purged_table_uris()),
        ),
    ),
    catchup=False,
    max_active_runs=1,
    doc_md=DOC,
    tags=["lethe", "backup", "erasure"],
    default_args=default_args(retry_minutes=10, execution_timeout=BACKUP_TASK_TIMEOUT),
    dagrun_timeout=RUN_TIMEOUT,
)
def backup_erasure_propagation() -> None:
    @task
    def plan(region: str) -> list[str]:
        from airflow.sdk import get_current_context
        from lethe.backup.tasks import plan_propagation_task

        snapshots, removed = plan_propagation_task(region)
        get_current_context()["ti"].xcom_push(key="incomplete_removed", value=removed)  # for finish's ledger entry
        return snapshots  # what propagate_snapshot is mapped over

    @task(map_index_template="{{ snapshot_label }}")
    def propagate_snapshot(region: str, snapshot_id: str) -> dict:  # type: ignore[type-arg]
        from airflow.sdk import get_current_context
        from lethe.backup.tasks import propagate_snapshot_task

        get_current_context()["snapshot_label"] = snapshot_id  # type: ignore[typeddict-unknown-key]
        return propagate_snapshot_task(region, snapshot_id)

    # Also when the region has no snapshot (nothing mapped, so skipped): its tombstones are then applied.
    @task(outlets=[Asset(BACKUP_PROPAGATION_URI)], trigger_rule="none_failed")
    def finish(region: str, snapshot_results: list[dict]) -> dict:  # type: ignore[type-arg]
        from airflow.sdk import get_current_context
        from lethe.backup.tasks import finish_propagation_task

        removed = get_current_context()["ti"].xcom_pull(task_ids=f"{region}.plan", key="incomplete_removed")
        # One slice, one request: iterating the lazy sequence probes past its end and Airflow logs that 404 as an error.
        results = list(snapshot_results[:]) if snapshot_results else []
        return finish_propagation_task(region, results, int(removed or 0))

    for region in BACKUP_REGIONS:
        with TaskGroup(group_id=region):
            snapshots = propagate_snapshot.partial(region=region).expand(snapshot_id=plan(region))
            finish(region, snapshots)  # type: ignore[arg-type]  # the mapped tasks' results, a list at run time


backup_erasure_propagation()
