"""Post-conditions of a retention run, checked with Great Expectations (lethe.quality).

They read the database and retention_progress (what the executor did), not
what the plan hoped: nothing past retention is left unheld, every held row the
plan saw is still there, and each rule's rows done equal its rows planned.
"""

from __future__ import annotations

from typing import Any

from lethe.db import table, transaction
from lethe.quality import CheckResult, counts_equal, zero_rows
from lethe.relations import relation
from lethe.retention.plan import Plan
from psycopg2 import sql


def done_counts(cur: Any, plan_id: str) -> dict[str, int]:
    """Rows each rule of the plan actually deleted or anonymised, from the checkpoints."""
    cur.execute(
        sql.SQL("SELECT rule, coalesce(sum(rows_done), 0) FROM {} WHERE plan_id = %s GROUP BY rule").format(
            table("retention_progress")
        ),
        (plan_id,),
    )
    return {rule: int(n) for rule, n in cur.fetchall()}


def postconditions(url: str, plan: Plan) -> list[CheckResult]:
    policy = plan.load_policy()
    left: dict[str, int] = {}
    held_missing: dict[str, int] = {}
    with transaction(url) as cur:
        preds = plan.predicates(policy, cur)
        params = preds.params()
        for rp in plan.rules:
            _, rule = policy.rule(rp.rule)
            cur.execute(
                sql.SQL("SELECT count(*) FILTER (WHERE {}), count(*) FILTER (WHERE {}) FROM {} t").format(
                    preds.matched(rp.table, rule), preds.held_expired(rp.table, rule), relation(rp.table)
                ),
                params,
            )
            remaining, held_now = cur.fetchone()  # type: ignore[misc]
            left[rp.rule] = int(remaining)
            held_missing[rp.rule] = max(0, rp.held - int(held_now))
        done = done_counts(cur, plan.plan_id)
    # Each failure names its rule, table and column(s), never a row.
    where = {rp.rule: f"table {rp.table}, column {', '.join(rp.columns) or rp.after}" for rp in plan.rules}
    return [
        zero_rows("retention_nothing_expired_left", left, where),
        zero_rows("retention_held_rows_kept", held_missing, where),
        counts_equal("retention_done_equals_plan", done, {rp.rule: rp.rows for rp in plan.rules}, where),
    ]
