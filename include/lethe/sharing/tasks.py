"""The usage_sharing DAG's task callables (dags/usage_sharing.py only wires them)."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime
from typing import Any

from lethe.connections import primary_url, s3_endpoint_url
from lethe.sharing import pipeline
from lethe.sharing.budget import SharingRefused
from lethe.sharing.config import recipients

log = logging.getLogger(__name__)


def _until(params: dict[str, Any], context: dict[str, Any]) -> date:
    """The window end: the `until` param, else the day the run's data interval ends (UTC), else today."""
    if params.get("until"):
        try:
            return date.fromisoformat(str(params["until"]))
        except ValueError as exc:
            raise ValueError(f"param until={params['until']!r} is not a date (YYYY-MM-DD)") from exc
    moment = context.get("data_interval_end") or context.get("logical_date") or datetime.now(UTC)
    return moment.astimezone(UTC).date()


def plan(params: dict[str, Any], context: dict[str, Any]) -> list[dict[str, Any]]:
    configs = recipients(only=params.get("recipient") or None)
    windows = pipeline.plan(primary_url(), configs, _until(params, context))
    for window in windows:
        window["dry_run"] = bool(params.get("dry_run"))
        log.info("recipient %s: %s day(s) from %s", window["recipient"], window["days"], window["start"][:10])
    if not windows:
        log.info("every recipient is up to date")
    return windows


def publish(window: dict[str, Any]) -> dict[str, Any]:
    from airflow.sdk.exceptions import AirflowFailException

    (config,) = recipients(only=window["recipient"])
    try:
        summary = pipeline.run_release(
            primary_url(),
            s3_endpoint_url(),
            config,
            datetime.fromisoformat(window["start"]),
            datetime.fromisoformat(window["end"]),
            dry_run=window.get("dry_run", False),
        )
    except SharingRefused as exc:
        # Retrying cannot change a refusal: fail now, with the plain reason.
        raise AirflowFailException(str(exc)) from None
    log.info(
        "recipient %s: release %s %s, %s cells published, %s suppressed, epsilon %s",
        config.name,
        summary["release_id"],
        summary["status"],
        summary["cells_published"],
        summary["cells_suppressed"],
        summary["epsilon_spent"],
    )
    return summary


def watermark(params: dict[str, Any]) -> dict[str, str]:
    if params.get("dry_run"):
        return {}
    marks = pipeline.advance_watermarks(primary_url(), recipients())
    log.info("aggregation watermarks: %s", marks or "unchanged (no recipient has a release yet)")
    return marks
