"""default_args every Lethe DAG shares: one owner, retries, an alert on failure, the policy checked first,
the ledger anchored on success."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

OWNER = "privacy-engineering"


def default_args(*, retries: int = 2, retry_minutes: int = 5, on_failure: Any = None) -> dict[str, Any]:
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
        "on_failure_callback": on_failure or notify_failure,
        "on_success_callback": after_task,
        "pre_execute": check_before_acting,
    }
