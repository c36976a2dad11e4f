"""Alerts: recorded in audit_alerts and, when a webhook is configured, posted to it.

Every Lethe DAG can use `on_failure_callback=failure_notifier()`. Messages name
DAGs, tasks, checks and counts; an exception's text is included only for
Lethe's own check errors, whose messages are built from names and counts.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.request
from typing import Any

log = logging.getLogger(__name__)

WEBHOOK_ENV = "LETHE_ALERT_WEBHOOK_URL"
WEBHOOK_CONN_ID = "lethe_alerts"
# Exceptions whose message is safe to forward (built from check names and counts only).
SAFE_MESSAGES = ("AuditFailed", "DataQualityError", "DagRunFailed")


def webhook_url() -> str | None:
    """LETHE_ALERT_WEBHOOK_URL, else the `lethe_alerts` connection's host (an HTTP(S) URL)."""
    url = os.environ.get(WEBHOOK_ENV)
    if url:
        return url
    try:
        from airflow.sdk import Connection

        conn = Connection.get(WEBHOOK_CONN_ID)
    except Exception:  # no such connection: alerts are recorded only
        return None
    return str(conn.host) if conn.host else None


def _post(url: str, body: dict[str, Any]) -> None:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"alert webhook must be an http(s) URL, got scheme {url.split(':', 1)[0]!r}")
    request = urllib.request.Request(  # scheme checked above
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def raise_alert(
    db_url: str | None, kind: str, message: str, *, dag_id: str | None = None, run_id: str | None = None
) -> bool:
    """Record the alert and deliver it; return whether it reached the webhook. Never raises."""
    from lethe.db import transaction

    log.warning("lethe alert [%s] %s", kind, message)
    delivered = False
    url = webhook_url()
    if url:
        try:
            _post(url, {"kind": kind, "message": message, "dag_id": dag_id, "run_id": run_id, "text": message})
            delivered = True
        except Exception as exc:  # an unreachable webhook must not hide the alert record
            log.error("alert webhook not reachable: %s", type(exc).__name__)
    try:
        with transaction(db_url) as cur:
            cur.execute(
                "INSERT INTO audit_alerts (kind, dag_id, run_id, message, delivered) VALUES (%s, %s, %s, %s, %s)",
                (kind, dag_id, run_id, message, delivered),
            )
    except Exception as exc:  # the database may be what failed
        log.error("could not record the alert in audit_alerts: %s", type(exc).__name__)
    return delivered


def failure_message(context: dict[str, Any]) -> str:
    """A PII-free description of a failure from an Airflow callback context."""
    ti = context.get("ti") or context.get("task_instance")
    dag_id = getattr(context.get("dag"), "dag_id", None) or getattr(ti, "dag_id", "?")
    run_id = context.get("run_id") or getattr(ti, "run_id", "?")
    parts = [f"{dag_id} run {run_id} failed"]
    if ti is not None and getattr(ti, "task_id", None):
        parts.append(f"task {ti.task_id}")
    exc = context.get("exception")
    if exc is not None:
        name = type(exc).__name__
        parts.append(f"{name}: {exc}" if name in SAFE_MESSAGES else name)
    return "; ".join(parts)


def notify_failure(context: dict[str, Any]) -> None:
    """on_failure_callback for any Lethe DAG or task."""
    try:
        from lethe.connections import primary_url

        db_url: str | None = primary_url()
    except Exception:  # the connection itself may be what failed
        db_url = None
    ti = context.get("ti") or context.get("task_instance")
    raise_alert(
        db_url,
        "dag_failed",
        failure_message(context),
        dag_id=getattr(context.get("dag"), "dag_id", None) or getattr(ti, "dag_id", None),
        run_id=context.get("run_id") or getattr(ti, "run_id", None),
    )
