"""The callables behind retention_nightly's tasks (the DAG file only wires them).

XComs carry the plan (names, cutoffs, counts) and per-rule summaries, never row values.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from lethe.assets import purged_table_uri
from lethe.connections import primary_url
from lethe.db import transaction

log = logging.getLogger(__name__)

PURGED_ALIAS = "lethe-retention-purged"


def _now(context: dict[str, Any]) -> datetime:
    """The run's logical date, or when it was due when triggered without one."""
    now = context.get("logical_date") or context["dag_run"].run_after
    if now.tzinfo is None:  # Airflow stores UTC
        now = now.replace(tzinfo=UTC)
    return datetime.fromtimestamp(now.timestamp(), UTC)


def plan(params: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    from lethe.retention.plan import build_plan

    rule = (params.get("rule") or "").strip()
    with transaction(primary_url()) as cur:
        p = build_plan(cur, _now(context), rules=[rule] if rule else None, dry_run=bool(params.get("dry_run")))
    for line in p.lines():
        log.info("%s", line)
    return p.to_dict()


def stage(plan_data: dict[str, Any], k: int) -> list[str]:
    """The tables purged in stage `k`: one mapped task per table, never two at once on one table."""
    from lethe.retention.plan import Plan

    return Plan.from_dict(plan_data).stage_tables(k)


def purge(plan_data: dict[str, Any], table: str, k: int, batch_size: int) -> list[dict[str, Any]]:
    """Every rule of `table` in stage `k`, one after the other, in policy order."""
    from lethe.retention.execute import execute_rule
    from lethe.retention.plan import Plan

    plan = Plan.from_dict(plan_data)
    policy = plan.load_policy()
    summaries = []
    for rule in plan.table_rules(table, k):
        summary = execute_rule(primary_url(), plan, rule, batch_size=int(batch_size), policy=policy).summary()
        log.info("rule %s: %s of %s planned rows done", rule, summary["rows"], summary["planned"])
        summaries.append(summary)
    return summaries


def check(plan_data: dict[str, Any]) -> list[dict[str, Any]]:
    from lethe.retention.checks import postconditions
    from lethe.retention.plan import Plan

    p = Plan.from_dict(plan_data)
    if p.dry_run:
        log.info("dry run: nothing was purged, nothing to check")
        return []
    results = postconditions(primary_url(), p)
    for r in results:
        log.info("check %s: %s", r.suite, "passed" if r.success else f"FAILED {'; '.join(r.failures())}")
    for r in results:
        r.raise_if_failed()
    return [r.as_dict() for r in results]


def announce(plan_data: dict[str, Any], outlet_events: Any) -> dict[str, int]:
    """One asset event per table rows were purged from (consumed by backup propagation and the audit)."""
    from airflow.sdk import Asset, AssetAlias
    from lethe.retention.checks import done_counts
    from lethe.retention.plan import Plan

    p = Plan.from_dict(plan_data)
    if p.dry_run:
        return {}
    with transaction(primary_url()) as cur:
        done = done_counts(cur, p.plan_id)
    per_table: dict[str, int] = {}
    for rp in p.rules:
        if done.get(rp.rule, 0) > 0:
            per_table[rp.table] = per_table.get(rp.table, 0) + done[rp.rule]
    for table, rows in sorted(per_table.items()):
        outlet_events[AssetAlias(PURGED_ALIAS)].add(
            Asset(purged_table_uri(table)), extra={"rows": rows, "plan_id": p.plan_id, "now": p.now}
        )
    return per_table
