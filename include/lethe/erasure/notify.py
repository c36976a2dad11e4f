"""Alerts for failed and overdue erasure requests, without personal data.

ErasureAlert is an Airflow notifier (use it as on_failure_callback). It logs a
warning naming the DAG, task and exception class, and hands the alert to
lethe.audit.alerts (recorded in audit_alerts, posted to LETHE_ALERT_WEBHOOK_URL)
where that module is installed. Exception text is never forwarded: a database
error can quote a row.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

try:
    from airflow.sdk.bases.notifier import BaseNotifier
except ImportError:  # outside Airflow: a plain base with the same call shape
    BaseNotifier = object  # type: ignore[assignment,misc]

log = logging.getLogger(__name__)


def send(kind: str, message: str, *, dag_id: str | None = None, run_id: str | None = None) -> None:
    log.warning("lethe erasure alert [%s] %s", kind, message)
    try:
        alerts = importlib.import_module("lethe.audit.alerts")
    except ImportError:
        return
    try:
        alerts.raise_alert(None, kind, message, dag_id=dag_id, run_id=run_id)
    except Exception as exc:  # the alert path must never fail the task it reports on
        log.error("could not hand the alert on: %s", type(exc).__name__)


def failure_text(context: dict[str, Any]) -> str:
    ti = context.get("ti") or context.get("task_instance")
    dag_id = getattr(ti, "dag_id", None) or getattr(context.get("dag"), "dag_id", "subject_erasure")
    task_id = getattr(ti, "task_id", "?")
    exc = context.get("exception")
    cause = type(exc).__name__ if exc is not None else "unknown error"
    return (
        f"{dag_id}.{task_id} failed ({cause}); failed erasure requests are listed in erasure_requests (status failed)"
    )


class ErasureAlert(BaseNotifier):  # type: ignore[misc]
    """on_failure_callback for subject_erasure: a PII-free alert that the run failed."""

    def notify(self, context: Any) -> None:
        ti = context.get("ti") or context.get("task_instance")
        send(
            "erasure_failed",
            failure_text(context),
            dag_id=getattr(ti, "dag_id", None),
            run_id=getattr(ti, "run_id", None),
        )


def deadline_alert(counts: dict[str, int], run_id: str | None = None) -> str | None:
    """Alert when requests are overdue or failed; return the message sent, or None when all is in time."""
    if not counts.get("overdue") and not counts.get("failed"):
        return None
    message = (
        f"erasure requests need attention: {counts.get('overdue', 0)} overdue, {counts.get('failed', 0)} failed, "
        f"{counts.get('held_past_due', 0)} past due under legal hold"
    )
    send("erasure_deadline", message, dag_id="subject_erasure", run_id=run_id)
    return message
