"""retention_nightly: purge and anonymise rows past their retention (logic in lethe.retention)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import AssetAlias, Param, TriggerRule, dag, task
from lethe.dag_defaults import RUN_TIMEOUT, default_args

DOC = """
### retention_nightly

Every night, makes the policy file's retention rules true on the primary database
(`lethe.policy`, `include/lethe/policy/reskill.yaml`), as of the run's logical date.

1. **plan**: for each rule its cutoff (`now - keep`; for raw usage/visitor data never later than
   what `usage_sharing` has aggregated), the rows it will delete or anonymise, the rows it leaves
   because of a legal hold, and the rows it leaves because rows kept longer still reference them.
   The task log prints the plan (this is the dry run).
2. **purge_stage_0..3**: one mapped task per table, running that table's rules one after the other
   (two rules of one table at once deadlock). Tables referenced by other tables' purged rows run
   in a later stage. Deletes and anonymisation run in short primary-key range batches; wholly expired
   partitions are detached and dropped (held people's rows are kept in a fresh partition for the range).
   Each rule writes one ledger entry (rule, cutoff, counts, policy version; never a row's values).
3. **check**: Great Expectations post-conditions: nothing past retention is left unheld, every held
   row is still there, and rows done equal rows planned, per rule.
4. **announce**: an asset event `lethe://primary/<table>` per table rows were purged from.

Params: `dry_run` plans and records the plan in the ledger without changing data; `rule` limits the run
to one rule; `batch_size` is the key-range width of a batch.

**When it fails**: a purge task that died half-way (killed worker, lock timeout) is safe to clear: it
resumes after its last committed batch (table `retention_progress`). `check` failing names the suite:
`retention_nothing_expired_left` (rows became expired during the run, or a rule is blocked: rerun),
`retention_held_rows_kept` (a held row vanished: stop and investigate with the ledger, restore from a
backup), `retention_done_equals_plan` (rows changed between plan and purge: rerun the DAG).
A plan error names the policy file, table and rule that cannot be applied.
"""

STAGES = 4  # lethe.retention.plan.MAX_STAGES


@dag(
    dag_id="retention_nightly",
    schedule="15 1 * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=DOC,
    tags=["lethe", "privacy", "retention"],
    default_args=default_args(),
    dagrun_timeout=RUN_TIMEOUT,
    params={
        "dry_run": Param(False, type="boolean", title="Dry run", description="Plan and record counts; change nothing."),
        "rule": Param(
            "",
            type="string",
            title="Only this rule",
            description="Name of one retention rule of the policy (empty: every rule).",
            pattern="^([a-z][a-z0-9_]*)?$",
        ),
        "batch_size": Param(
            10000, type="integer", minimum=100, maximum=1000000, title="Batch size", description="Keys per batch."
        ),
    },
)
def retention_nightly() -> None:
    @task
    def plan(params: dict[str, Any] | None = None, **context: Any) -> dict[str, Any]:
        from lethe.retention import tasks

        return tasks.plan(params or {}, context)

    @task
    def tables(plan_data: Any, k: int) -> list[str]:
        from lethe.retention import tasks

        return tasks.stage(plan_data, k)

    @task(trigger_rule=TriggerRule.NONE_FAILED, map_index_template="{{ task.op_kwargs['table'] }}")
    def purge(plan_data: Any, table: str, k: int, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        from lethe.retention import tasks

        return tasks.purge(plan_data, table, k, (params or {}).get("batch_size", 10000))

    @task(trigger_rule=TriggerRule.NONE_FAILED)
    def check(plan_data: Any) -> list[dict[str, Any]]:
        from lethe.retention import tasks

        return tasks.check(plan_data)

    @task(outlets=[AssetAlias("lethe-retention-purged")])
    def announce(plan_data: Any, *, outlet_events: Any = None) -> dict[str, int]:
        from lethe.retention import tasks

        return tasks.announce(plan_data, outlet_events)

    planned = plan()
    previous: Any = planned
    for k in range(STAGES):
        stage = (
            purge.override(task_id=f"purge_stage_{k}")
            .partial(plan_data=planned, k=k)
            .expand(table=tables.override(task_id=f"tables_stage_{k}")(planned, k))
        )
        previous >> stage
        previous = stage
    checked = check(planned)
    previous >> checked >> announce(planned)


retention_nightly()
