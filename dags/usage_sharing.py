"""usage_sharing: aggregated, anonymous releases of usage and visitor data (logic in lethe.sharing)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import Asset, Param, TriggerRule, dag, task
from lethe.assets import SHARING_RELEASES_URI
from lethe.dag_defaults import RUN_TIMEOUT, default_args

DOC = """
### usage_sharing

Every night, publishes to each recipient of the policy file's `sharing:` section the days of usage
and visitor data it has not received yet, aggregated so that no person can be picked out
(docs/sharing.md).

1. **plan**: each recipient's window of whole UTC days: from the end of its last published (or
   refused) release up to the run's day; a new recipient starts `first_window_days` back.
2. **publish** (one mapped task per recipient): in PostgreSQL, one statement keeps the rows of people
   whose analytics consent holds, generalises and aggregates them with bounded contributions, and
   returns only the cells; the task then suppresses cells under k people, adds
   noise when the recipient has a mechanism, checks the privacy budget, runs the release gate (Great
   Expectations), then writes Parquet + CSV + data dictionary + manifest to
   `s3://<sharing bucket>/recipients/<recipient>/<release_id>/` and a ledger entry.
3. **watermark** (runs even when a release was refused): records in `aggregation_watermarks` up to
   when raw `usage_events` and `visitor_logs` have been processed for every recipient;
   retention_nightly purges no later.
4. **verdict**: marks the run failed when any release was refused.

Params: `recipient` limits the run to one recipient; `until` (YYYY-MM-DD) ends the window at that
day instead of the run's day; `dry_run` builds and gates, publishes and spends nothing.

**When it fails**: a `publish` task fails without retry when a release is refused, and says why:
*release gate failed ... <checks>* (nothing was written; a dimension value looked like personal data,
or a bound was broken: fix the source data or the generalisation, then rerun) or *release refused ...
epsilon* (the recipient's privacy budget is spent: raise `epsilon_budget` in the policy file only
with the privacy officer's approval, or wait). Other failures (database, S3) are safe to clear: a
release left half-written is removed by the next attempt, its budget spend kept.
"""


@dag(
    dag_id="usage_sharing",
    schedule="45 2 * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=DOC,
    tags=["lethe", "privacy", "sharing"],
    default_args=default_args(),
    dagrun_timeout=RUN_TIMEOUT,
    params={
        "recipient": Param(
            "",
            type="string",
            title="Only this recipient",
            description="Name of one recipient under `sharing.recipients` in the policy file (empty: all).",
            pattern="^([a-z][a-z0-9_-]*)?$",
        ),
        "until": Param(
            "",
            type="string",
            title="Window end (exclusive)",
            description="YYYY-MM-DD; empty: the day the run's data interval ends (UTC).",
            pattern=r"^(\d{4}-\d{2}-\d{2})?$",
        ),
        "dry_run": Param(False, type="boolean", title="Dry run", description="Build and gate; publish nothing."),
    },
)
def usage_sharing() -> None:
    @task
    def plan(params: dict[str, Any] | None = None, **context: Any) -> list[dict[str, Any]]:
        from lethe.sharing import tasks

        return tasks.plan(params or {}, context)

    @task(outlets=[Asset(SHARING_RELEASES_URI)], max_active_tis_per_dag=1)
    def publish(window: dict[str, Any]) -> dict[str, Any]:
        from lethe.sharing import tasks

        return tasks.publish(window)

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def watermark(params: dict[str, Any] | None = None) -> dict[str, str]:
        from lethe.sharing import tasks

        return tasks.watermark(params or {})

    @task(trigger_rule=TriggerRule.NONE_FAILED)
    def verdict() -> str:
        """Ends upstream_failed when a release was refused, so the run shows it."""
        return "every due release was published"

    published = publish.expand(window=plan())
    marked = watermark()
    published >> marked
    [published, marked] >> verdict()


usage_sharing()
