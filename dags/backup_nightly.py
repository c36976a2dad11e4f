"""backup_nightly: snapshot the primary into every backup region, then expire old snapshots."""

from __future__ import annotations

from airflow.sdk import Asset, Param, dag, task
from lethe.assets import BACKUP_ERASURES_UNAPPLIED_URI, BACKUP_SNAPSHOTS_URI
from lethe.config import BACKUP_REGIONS
from lethe.dag_defaults import BACKUP_TASK_TIMEOUT, RUN_TIMEOUT, default_args

DOC = """
### backup_nightly

Takes one snapshot of every table the policy marks `backup: true` and writes it
to the backup bucket of **each backup region** (us-east-1, ap-southeast-1) as
Parquet (zstd), one object per table and subject bucket, with server-side
encryption on versioned buckets. The manifest (schema, row counts, sha256 per
object, policy version) is written last: a snapshot without one does not exist, and
the next run of this DAG or of backup_erasure_propagation deletes it, every version.
Then snapshots older than the policy's `backups.retention` are deleted, every
object version included, and `hand_over` starts backup_erasure_propagation at once
when an erasure is not yet applied in every region: above all a person erased while
the export ran, whom the new snapshot holds (skipped when there is none).

The primary is read **once** a night: `export_snapshot` exports into the first
region (us-east-1); `copy_snapshot[i]`, one mapped task per other region, copies
those same objects server-side (S3 CopyObject from the first region's bucket, same
sha256, encryption and term indexes) and writes that region's own manifest last.
A region's copy is retried alone and finishes the same snapshot id, skipping the
objects it already holds with the right checksum.

**When it fails**
- `export_snapshot` / `copy_snapshot[i]` name the region and endpoint they could not
  reach: fix the endpoint / connection `lethe_aws` and clear the task; it finishes the
  same snapshot id. A failed export leaves nothing to copy (`copy_snapshot` is
  upstream_failed): clear the export, the copies follow.
- `copy_snapshot[i]` "the source changed while copying": an erasure was propagated in
  the first region meanwhile; clear the task (it copies only what differs).
- "refusing to write a snapshot: ... Object Lock in COMPLIANCE mode": that bucket keeps
  versions longer than the erasure deadline, so an erasure could not reach it in time.
  Shorten its default retention (or use GOVERNANCE mode); the other region is unaffected.
- `expire_region[i]`: rerun; expiry deletes the manifest first, so a half-expired
  snapshot is already invisible to restores.

See docs/backups.md.
"""


@dag(
    dag_id="backup_nightly",
    schedule="0 2 * * *",
    catchup=False,
    max_active_runs=1,
    doc_md=DOC,
    tags=["lethe", "backup"],
    default_args=default_args(retry_minutes=10, execution_timeout=BACKUP_TASK_TIMEOUT),
    dagrun_timeout=RUN_TIMEOUT,
    params={
        "erasure_deadline_days": Param(
            30,
            type="integer",
            minimum=1,
            title="Erasure deadline (days)",
            description="A bucket whose COMPLIANCE Object Lock keeps versions longer than this is refused.",
        ),
    },
)
def backup_nightly() -> None:
    @task
    def plan() -> str:
        """One snapshot id for all regions, fixed here so a retried region writes the same snapshot."""
        from lethe.backup.snapshot import new_snapshot_id

        return new_snapshot_id()

    @task(outlets=[Asset(BACKUP_SNAPSHOTS_URI)])
    def export_snapshot(snapshot_id: str, params: dict | None = None) -> dict:  # type: ignore[type-arg]
        """The one read of the primary: into the first backup region."""
        from lethe.backup.tasks import snapshot_task

        return snapshot_task(BACKUP_REGIONS[0], snapshot_id, int((params or {}).get("erasure_deadline_days", 30)))

    @task(outlets=[Asset(BACKUP_SNAPSHOTS_URI)])
    def copy_snapshot(region: str, snapshot_id: str, params: dict | None = None) -> dict:  # type: ignore[type-arg]
        from lethe.backup.tasks import replicate_task

        return replicate_task(region, snapshot_id, int((params or {}).get("erasure_deadline_days", 30)))

    @task(trigger_rule="all_done")
    def expire_region(region: str) -> dict:  # type: ignore[type-arg]
        from lethe.backup.tasks import expire_task

        return expire_task(region)

    # Whatever became of the copies: a region that got its snapshot can hold a person erased meanwhile.
    @task(outlets=[Asset(BACKUP_ERASURES_UNAPPLIED_URI)], trigger_rule="all_done")
    def hand_over() -> int:
        from lethe.backup.tasks import hand_over_task

        return hand_over_task(list(BACKUP_REGIONS))

    snapshot_id = plan()
    exported = export_snapshot(snapshot_id)  # type: ignore[arg-type]  # plan's XComArg, a str at run time
    copies = copy_snapshot.partial(snapshot_id=snapshot_id).expand(region=list(BACKUP_REGIONS[1:]))
    exported >> copies >> [expire_region.expand(region=list(BACKUP_REGIONS)), hand_over()]


backup_nightly()
