"""default_args every Lethe DAG shares: one owner, retries, bounded work, an alert on failure, the policy
checked first, the ledger anchored on success."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

OWNER = "privacy-engineering"

# Bounds on work, from BENCHMARKS.md. Measured there (2 cores): a 2M-row purge ~2.5 s, 10M rows of
# partitions dropped ~1 s, a 100,000-user snapshot into one region 12 s, 1,000 tombstones propagated
# 22 s, 10M usage events aggregated 7 s. The bounds leave a hundredfold for a larger platform and a
# loaded primary, and still stop a hung task (a lock wait, a dead endpoint) within the night.
TASK_TIMEOUT = timedelta(hours=1)
BACKUP_TASK_TIMEOUT = timedelta(hours=2)  # one region's snapshot or propagation: the longest tasks
RUN_TIMEOUT = timedelta(hours=6)  # a nightly run must be over before the next night's
# An erasure's approval waits this long by default (the run's `approval_timeout_hours`), at most
# APPROVAL_TIMEOUT_MAX; unanswered, the request goes back to the queue with an alert (never erased).
APPROVAL_TIMEOUT = timedelta(days=3)
APPROVAL_TIMEOUT_MAX = timedelta(days=7)  # erasure's deadline is 30 days
ERASURE_RUN_TIMEOUT = APPROVAL_TIMEOUT_MAX + RUN_TIMEOUT

# Every Lethe task takes a slot of this pool: at most PRIMARY_POOL_SLOTS of them load the primary at once.
# Created by `lethe.airflow_env.ensure_pool` (CLI, tests, local Airflow) and the compose init job.
PRIMARY_POOL = "lethe_primary"
PRIMARY_POOL_SLOTS = 4


def default_args(
    *,
    retries: int = 2,
    retry_minutes: int = 5,
    on_failure: Any = None,
    execution_timeout: timedelta = TASK_TIMEOUT,
) -> dict[str, Any]:
    """Defaults for a Lethe DAG; `on_failure` replaces the standard alert (lethe.audit.alerts.notify_failure).

    Every task first checks the policy against the live schema (lethe.policy.check.check_before_acting):
    a configuration error fails it at once instead of being retried.
    """
    from lethe.audit.alerts import notify_failure
    from lethe.ledger_anchor import after_task
    from lethe.policy.check import check_before_acting

    return {
        "owner": OWNER,
        "retries": retries,
        "retry_delay": timedelta(minutes=retry_minutes),
        "execution_timeout": execution_timeout,
        "pool": PRIMARY_POOL,
        "on_failure_callback": on_failure or notify_failure,
        "on_success_callback": after_task,
        "pre_execute": check_before_acting,
    }
