"""compliance_audit: nightly proof that the privacy policy holds (logic in lethe.audit)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param, TriggerRule, dag, task
from lethe.assets import BACKUP_PROPAGATION_URI
from lethe.audit import limits, runbook
from lethe.config import BACKUP_REGIONS
from lethe.dag_defaults import RUN_TIMEOUT, default_args

DOC = f"""
### compliance_audit

Checks, every night after the other Lethe DAGs, that what they promise actually holds.
Each check is a Great Expectations expectation over a count that must be zero. The primary's
retention, request and deadline checks are the GX suites in `include/lethe/audit/expectations/`
(generated from the policy, SQL of the audit's own), run in PostgreSQL by a GX Checkpoint; checks
that need the pseudonym key, S3 or the previous audit validate a frame of counts:

| suite | check | what it proves |
| --- | --- | --- |
| `retention` | `expired_rows.<rule>` | no unheld row is past the cutoff of the rule's last completed run |
| `retention` | `stale.<rule>` | the rule's last completed, non-dry run is at most `stale_after_hours` old |
| `legal_holds` | `held_rows_removed` | no row of a person under an active legal hold disappeared since the last audit |
| `erasure_residue` | `erased_subject_rows.<table>`, `erased_identifiers_left` | nothing of an erased person is left |
| `erasure_residue` | `identifier_kept_after_completion` | completed requests no longer hold the identifier |
| `erasure_residue_scan` | `erased_found_by_value[.<table>.<column>]` | no erased person is found by value anywhere |
| `erasure_deadlines` | `overdue_erasure_requests` | no open erasure request is past its due date |
| `backups` | `bucket_in_region.<region>` | the backup bucket is in the region the policy names (GetBucketLocation) |
| `backups` | `snapshot_within_rpo.<region>` | a complete snapshot younger than the recovery-point objective |
| `backups` | `manifest_mismatches.<region>` | every object a manifest names has its size and sha256 (S3 checksum) |
| `backups` | `tombstones_not_applied.<region>` | no retained snapshot holds a row of an erased person |
| `backups` | `erased_mentions_left.<region>` | no retained snapshot names an erased person in others' free text |
| `restore_drill` | `restore_failed`, `erased_rows`, `erased_found_by_value`, `orphan_rows`, \
`foreign_keys_missing` (each `.oldest`, `.newest`) | weekly: a region's oldest and newest snapshot restore \
into a scratch database with no erased person and intact foreign keys (`skipped`: not due yet) |
| `shares` | `<recipient>.<gate check>` | the latest release of each recipient still passes the release gate |
| `ledger` | `ledger_chain_broken` | the ledger's hash chain verifies end to end |
| `ledger` | `ledger_tail_missing` | every chain head anchored in the evidence bucket is still in the ledger |

The `verdict` task publishes GX Data Docs of every suite to the evidence bucket (`data-docs/`, opened
from the **Privacy compliance** page), stores every result in the `audit_runs` table (shown on that
page) and fails, naming each failed check, when any check failed.
Failures and overdue erasure requests raise an alert (table `audit_alerts`, and the webhook in
`LETHE_ALERT_WEBHOOK_URL` or the `lethe_alerts` connection when set). No check reads or logs a row's values.

**When it fails**, read the `verdict` task's log: it lists `suite.check` names.

{runbook.markdown()}

Reruns are safe: the audit only reads, and a rerun replaces the run's row in `audit_runs`.
"""

CHECKS = ("primary", "legal_holds", "backups", "restore_drill", "shares", "ledger")


@dag(
    dag_id="compliance_audit",
    # Nightly after the backups; also as soon as erasures have been propagated to the backups.
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("30 4 * * *", timezone="UTC"), assets=Asset(BACKUP_PROPAGATION_URI)
    ),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=DOC,
    tags=["lethe", "privacy", "audit"],
    params={
        "as_of": Param(
            None,
            type=["null", "string"],
            format="date-time",
            title="Audit as of (UTC)",
            description="The audit's clock; empty means now. Retention is judged as of each rule's last run.",
        ),
        "stale_after_hours": Param(
            limits.STALE_AFTER_HOURS,
            type="number",
            minimum=1,
            title="Retention staleness (hours)",
            description="A retention rule whose last completed run is older than this fails as stale.",
        ),
        "rpo_hours": Param(
            limits.RPO_HOURS,
            type="number",
            minimum=1,
            title="Recovery-point objective (hours)",
            description="The newest complete snapshot in each backup region must be younger than this.",
        ),
        "restore_drill_days": Param(
            limits.RESTORE_DRILL_DAYS,
            type="number",
            minimum=0,
            title="Restore drill interval (days)",
            description="The restore drill runs when the last drill that passed is older than this; 0: this run.",
        ),
        "restore_drill_region": Param(
            None,
            type=["null", "string"],
            enum=[None, *BACKUP_REGIONS],
            title="Restore drill region",
            description="The backup region whose oldest and newest snapshot are restored; empty: the one drilled "
            "longest ago.",
        ),
        "restore_drill_database": Param(
            None,
            type=["null", "string"],
            pattern="^[a-z_][a-z0-9_]{0,62}$",
            title="Restore drill scratch database",
            description="Created and dropped on the primary's server; empty: <primary database>_restore_drill.",
        ),
    },
    default_args=default_args(retries=1, retry_minutes=2),
    dagrun_timeout=RUN_TIMEOUT,
)
def compliance_audit() -> None:
    @task
    def primary(params: dict[str, Any] | None = None, run_id: str | None = None) -> list[dict[str, Any]]:
        """Retention (as of each rule's last run, and its staleness), erasure residue and deadlines:
        SQL suites run in PostgreSQL by a GX Checkpoint, keyed-pseudonym counts on a frame."""
        from lethe.audit.run import audit_clock, check_primary
        from lethe.connections import primary_url, pseudonym_key

        params = params or {}
        return check_primary(
            primary_url(),
            pseudonym_key(),
            audit_clock(params),
            float(params.get("stale_after_hours", limits.STALE_AFTER_HOURS)),
            run_id or "audit",
        )

    @task
    def legal_holds(run_id: str | None = None) -> dict[str, Any]:
        """Held rows compared with the previous audit."""
        from lethe.audit.run import check_holds
        from lethe.connections import primary_url

        results, held = check_holds(primary_url(), run_id or "")
        return {"results": results, "held_rows": held}

    @task
    def backups(params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Snapshots within the RPO, manifests against the objects, tombstones and mentions applied, per region."""
        from lethe.audit.run import audit_clock, check_backups
        from lethe.connections import primary_url, pseudonym_key, s3_endpoint_url

        params = params or {}
        rpo_hours = float(params.get("rpo_hours", limits.RPO_HOURS))
        return check_backups(primary_url(), s3_endpoint_url(), pseudonym_key(), rpo_hours, audit_clock(params))

    @task
    def restore_drill(params: dict[str, Any] | None = None, run_id: str | None = None) -> list[dict[str, Any]]:
        """Weekly: the oldest and newest snapshot of one region restored into a scratch database and checked."""
        from lethe.audit.run import audit_clock, check_restore_drill
        from lethe.connections import primary_url, pseudonym_key, s3_endpoint_url

        params = params or {}
        return check_restore_drill(
            primary_url(), s3_endpoint_url(), pseudonym_key(), audit_clock(params), run_id or "audit", params
        )

    @task
    def shares() -> list[dict[str, Any]]:
        """The release gate re-run on each recipient's latest release."""
        from lethe.audit.run import check_shares
        from lethe.connections import s3_endpoint_url

        return check_shares(s3_endpoint_url())

    @task
    def ledger() -> list[dict[str, Any]]:
        """The ledger's hash chain, and every anchored head still in it."""
        from lethe.audit.run import check_ledger
        from lethe.connections import primary_url, s3_endpoint_url

        return check_ledger(primary_url(), s3_endpoint_url())

    @task(trigger_rule=TriggerRule.ALL_DONE, retries=0)
    def verdict(ti: Any = None, run_id: str | None = None) -> str:
        """Publish the GX Data Docs to the evidence bucket, keep the results; fail naming each failed check."""
        from lethe.audit.run import conclude
        from lethe.connections import primary_url, s3_endpoint_url

        suites: dict[str, Any] = {}
        held = None
        for task_id in CHECKS:
            value = ti.xcom_pull(task_ids=task_id)
            if value is None:
                suites[task_id] = "task did not finish: see its log"
            elif isinstance(value, dict):
                suites[task_id], held = value["results"], value["held_rows"]
            else:
                suites[task_id] = value
        return conclude(primary_url(), run_id or "", suites, held, s3_endpoint_url())

    [primary(), legal_holds(), backups(), restore_drill(), shares(), ledger()] >> verdict()


compliance_audit()
