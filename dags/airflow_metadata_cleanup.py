"""airflow_metadata_cleanup: Airflow's own records of Lethe's runs, kept no longer than the policy says.

Logic in lethe.ops.cleanup.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import CronTriggerTimetable, Param, dag, task
from lethe.dag_defaults import RUN_TIMEOUT, default_args

DOC = """
### airflow_metadata_cleanup

Airflow keeps its own copy of what Lethe's DAGs were told and did: each run's **conf** (a
`subject_erasure` request names the person), **XComs**, **rendered task fields**, the API
server's **audit log** (it stores the trigger request's body) and the **task log files**.
This DAG makes Airflow forget them, on two clocks from the policy file (`airflow_metadata`):

- **`erasure_conf_retention`** (P1D after a `subject_erasure` run *finished*): that run's conf
  (set to `{}`), XComs, rendered fields, audit-log details and task log files.
- **`retention`** (P30D): every record of every Lethe DAG run, through `airflow db clean
  --skip-archive` over dag_run, task_instance, task_instance_history, xcom and
  log (only rows of Lethe's DAG ids), and the log files.

Runs still queued or running are never touched. The result (counts only) is appended to the
ledger as `airflow_metadata_cleanup`. The params override the policy for one run;
`dry_run` only counts.

**When it fails**: `cannot reach Airflow's metadata database` means the `lethe_airflow_metadata`
connection is missing (Airflow 3 tasks may not use Airflow's own database session): define it
with the metadata database's URL. `airflow db clean exited ...`: the message carries the command's
last lines; fix the cause and clear the task. Every step is idempotent: rerunning is safe.
A failed erasure run whose conf was already cleared cannot be retried: submit the request again.
"""


@dag(
    dag_id="airflow_metadata_cleanup",
    schedule=CronTriggerTimetable("0 5 * * *", timezone="UTC"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=DOC,
    tags=["lethe", "privacy", "operations"],
    default_args=default_args(),
    dagrun_timeout=RUN_TIMEOUT,
    params={
        "dry_run": Param(False, type="boolean", title="Dry run", description="Count what would go; change nothing."),
        "retention": Param(
            None,
            type=["null", "string"],
            title="Retention (override)",
            description="ISO-8601 duration, e.g. P30D. Empty: the policy file's airflow_metadata.retention.",
        ),
        "erasure_conf_retention": Param(
            None,
            type=["null", "string"],
            title="Erasure request retention (override)",
            description="ISO-8601 duration after a subject_erasure run finished, e.g. P1D or PT0S. "
            "Empty: the policy file's value.",
        ),
        "dag_ids": Param(
            None,
            type=["null", "array"],
            items={"type": "string"},
            title="DAG ids (override)",
            description="Which DAGs' records to purge on the retention clock. Empty: all of Lethe's DAGs.",
        ),
        "erasure_dag_ids": Param(
            None,
            type=["null", "array"],
            items={"type": "string"},
            title="DAG ids whose conf names a person (override)",
            description="Empty: subject_erasure.",
        ),
    },
)
def airflow_metadata_cleanup() -> None:
    @task
    def forget_erasure_requests(params: dict[str, Any] | None = None) -> dict[str, int]:
        from lethe.ops import cleanup, logs, metadata

        p = params or {}
        config = cleanup.settings(
            p.get("retention"), p.get("erasure_conf_retention"), p.get("dag_ids"), p.get("erasure_dag_ids")
        )
        return cleanup.forget_erasure_requests(
            metadata.metadata_url(), logs.log_folder(), config, dry_run=bool(p.get("dry_run"))
        )

    @task
    def purge_expired(params: dict[str, Any] | None = None) -> dict[str, int]:
        from lethe.ops import cleanup, logs, metadata

        p = params or {}
        config = cleanup.settings(
            p.get("retention"), p.get("erasure_conf_retention"), p.get("dag_ids"), p.get("erasure_dag_ids")
        )
        return cleanup.purge_expired(metadata.metadata_url(), logs.log_folder(), config, dry_run=bool(p.get("dry_run")))

    @task
    def record(forgotten: Any, purged: Any, params: dict[str, Any] | None = None) -> None:
        from lethe.connections import primary_url
        from lethe.ops import cleanup

        cleanup.record(primary_url(), forgotten, purged, dry_run=bool((params or {}).get("dry_run")))

    forgotten = forget_erasure_requests()
    purged = purge_expired()
    forgotten >> purged
    record(forgotten, purged)


airflow_metadata_cleanup()
