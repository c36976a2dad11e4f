"""One usage_sharing run: plan each recipient's window, build, gate, publish, advance the watermark.

Windows are whole UTC days [start, end). A recipient's next window starts where
its last published or refused release ended (a refused window is not retried:
refusing is the decision); a new recipient starts `first_window_days` before
the end. Nothing here logs or raises a value from a row.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import psycopg2.extras

from lethe import ledger
from lethe.config import BUCKETS, PRIMARY_REGION
from lethe.db import transaction
from lethe.quality import CheckResult
from lethe.sharing import budget, release
from lethe.sharing.aggregate import Aggregate
from lethe.sharing.budget import SharingRefused
from lethe.sharing.config import RecipientConfig
from lethe.sharing.gate import run_gate
from lethe.sharing.protect import Protected, protect
from lethe.sharing.query import compute

SOURCE_TABLES = ("usage_events", "visitor_logs")
LEDGER_KIND = "sharing_release"
PROCESSED = ("published", "refused")


class GateFailed(SharingRefused):
    def __init__(self, message: str, result: CheckResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class Built:
    aggregate: Aggregate
    protected: Protected
    gate: CheckResult


def day_start(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


def processed_until(cur: Any, recipient: str) -> datetime | None:
    cur.execute(
        "SELECT max(window_end) FROM sharing_releases WHERE recipient = %s AND status = ANY(%s)",
        (recipient, list(PROCESSED)),
    )
    row = cur.fetchone()
    return row[0] if row else None


def plan(url: str, configs: list[RecipientConfig], until: date) -> list[dict[str, Any]]:
    """The window each recipient is due, ending at `until` 00:00 UTC; recipients already up to date are left out."""
    end = day_start(min(until, datetime.now(UTC).date()))  # only whole days: today is not over yet
    windows = []
    with transaction(url) as cur:
        for config in configs:
            start = processed_until(cur, config.name) or end - timedelta(days=config.first_window_days)
            if start < end:
                windows.append(
                    {
                        "recipient": config.name,
                        "start": start.isoformat(),
                        "end": end.isoformat(),
                        "days": (end - start).days,
                    }
                )
    return windows


def build(
    url: str, config: RecipientConfig, start: datetime, end: datetime, rng: np.random.Generator | None = None
) -> Built:
    """Aggregate (in PostgreSQL), protect and gate one window; no side effects."""
    agg = compute(url, config, start, end)
    protected = protect(agg.cells, config, rng)
    gate = run_gate(protected.frame, config, agg.contributions)
    return Built(agg, protected, gate)


def _summary(built: Built, release_id: str, status: str, epsilon: float) -> dict[str, Any]:
    return {
        "release_id": release_id,
        "status": status,
        "rows_in": built.aggregate.rows_in,
        "cells_total": built.protected.cells_total,
        "cells_published": len(built.protected.frame),
        "cells_suppressed": built.protected.cells_suppressed,
        "columns": len(built.protected.frame.columns),
        "epsilon_spent": epsilon,
    }


def _record(
    cur: Any,
    release_id: str,
    config: RecipientConfig,
    start: datetime,
    end: datetime,
    status: str,
    built: Built | None,
    *,
    epsilon: float = 0.0,
    s3_prefix: str | None = None,
    message: str | None = None,
) -> None:
    counts = _summary(built, release_id, status, epsilon) if built else {}
    cur.execute(
        "INSERT INTO sharing_releases (release_id, recipient, status, window_start, window_end, days, rows_in,"
        " cells_total, cells_published, cells_suppressed, mechanism, epsilon_spent, s3_prefix, gate, message,"
        " finished_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
        " CASE WHEN %s = 'pending' THEN NULL ELSE now() END)",
        (
            release_id,
            config.name,
            status,
            start,
            end,
            (end - start).days,
            counts.get("rows_in", 0),
            counts.get("cells_total", 0),
            counts.get("cells_published", 0),
            counts.get("cells_suppressed", 0),
            config.mechanism,
            epsilon,
            s3_prefix,
            psycopg2.extras.Json(built.gate.as_dict()) if built else None,
            message,
            status,
        ),
    )


def _ledger(cur: Any, config: RecipientConfig, summary: dict[str, Any], start: datetime, end: datetime) -> None:
    ledger.append(
        cur,
        LEDGER_KIND,
        {
            "recipient": config.name,
            "window": [start.isoformat(), end.isoformat()],
            "k": config.k,
            "mechanism": config.mechanism,
            **summary,
        },
    )


def abandon_pending(url: str, client: Any, recipient: str) -> list[str]:
    """Releases whose run died after reserving budget: remove their objects, keep their spend."""
    with transaction(url) as cur:
        budget.lock(cur, recipient)
        cur.execute("SELECT release_id FROM sharing_releases WHERE recipient = %s AND status = 'pending'", (recipient,))
        pending = [r[0] for r in cur.fetchall()]
        for release_id in pending:
            release.delete(client, BUCKETS.sharing, release.prefix(recipient, release_id))
            cur.execute(
                "UPDATE sharing_releases SET status = 'abandoned', finished_at = now(),"
                " message = 'the run writing it stopped; its objects were removed' WHERE release_id = %s",
                (release_id,),
            )
    return pending


def new_release_id(now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"  # sorts by time; nothing in it looks like an id


def run_release(
    url: str,
    endpoint_url: str | None,
    config: RecipientConfig,
    start: datetime,
    end: datetime,
    *,
    dry_run: bool = False,
    rng: np.random.Generator | None = None,
) -> dict[str, Any]:
    """Build and (unless dry_run) publish one release; raise SharingRefused when it is not published."""
    from lethe.storage import require_bucket, s3_client

    days = (end - start).days
    release_id = new_release_id()
    client = s3_client(PRIMARY_REGION, endpoint_url)
    if not dry_run:
        require_bucket(client, BUCKETS.sharing)
        abandon_pending(url, client, config.name)
    built = build(url, config, start, end, rng)
    if not built.gate.success:
        message = (
            f"release gate failed for recipient {config.name!r}: {', '.join(built.gate.failed)}; nothing was published"
        )
        if not dry_run:
            with transaction(url) as cur:
                budget.lock(cur, config.name)
                _record(cur, release_id, config, start, end, "gate_failed", built, message=message)
                _ledger(cur, config, _summary(built, release_id, "gate_failed", 0.0), start, end)
        raise GateFailed(message, built.gate)
    if dry_run:
        with transaction(url) as cur:
            epsilon = budget.check(cur, config, days)  # a dry run says whether the release would be refused
        return {**_summary(built, release_id, "dry_run", epsilon), "gate": built.gate.as_dict()}
    key_prefix = release.prefix(config.name, release_id)
    refusal: budget.BudgetExceeded | None = None
    with transaction(url) as cur:
        budget.lock(cur, config.name)
        try:
            epsilon = budget.check(cur, config, days)
        except budget.BudgetExceeded as exc:
            refusal, epsilon = exc, 0.0
            _record(cur, release_id, config, start, end, "refused", built, message=str(exc))
            _ledger(cur, config, _summary(built, release_id, "refused", 0.0), start, end)
        else:
            _record(cur, release_id, config, start, end, "pending", built, epsilon=epsilon, s3_prefix=key_prefix)
            budget.record(cur, config, release_id, days)
    if refusal is not None:
        raise refusal
    summary = _summary(built, release_id, "published", epsilon)
    manifest = {
        "release_id": release_id,
        "recipient": config.name,
        "window_start": start.isoformat(),
        "window_end": end.isoformat(),
        "window_last_day": (end - timedelta(days=1)).date().isoformat(),
        "days": days,
        "cells_total": built.protected.cells_total,
        "cells_published": len(built.protected.frame),
        "cells_suppressed": built.protected.cells_suppressed,
        "epsilon_spent": epsilon,
        "noise": built.protected.noise,
        "recipient_config": config.as_dict(),
        "gate": [c["name"] for c in built.gate.checks],
        "created_at": datetime.now(UTC).isoformat(),
    }
    release.write(client, BUCKETS.sharing, manifest, built.protected.frame)
    with transaction(url) as cur:
        cur.execute(
            "UPDATE sharing_releases SET status = 'published', finished_at = now() WHERE release_id = %s", (release_id,)
        )
        _ledger(cur, config, {**summary, "s3_prefix": key_prefix}, start, end)
    return {**summary, "s3_prefix": key_prefix}


def advance_watermarks(url: str, configs: list[RecipientConfig]) -> dict[str, str]:
    """aggregation_watermarks for the raw tables: the earliest day any recipient still has to process.

    Recipients with no processed release yet do not hold it back (they start
    first_window_days back, inside the raw retention). The mark never moves back.
    """
    with transaction(url) as cur:
        ends = [processed_until(cur, c.name) for c in configs]
        known = [e for e in ends if e is not None]
        if not known:
            return {}
        mark = min(known)
        for table in SOURCE_TABLES:
            cur.execute(
                "INSERT INTO aggregation_watermarks (source_table, aggregated_until, updated_at) VALUES (%s, %s, now())"
                " ON CONFLICT (source_table) DO UPDATE SET aggregated_until ="
                " GREATEST(aggregation_watermarks.aggregated_until, EXCLUDED.aggregated_until), updated_at = now()",
                (table, mark),
            )
        cur.execute(
            "SELECT source_table, aggregated_until FROM aggregation_watermarks WHERE source_table = ANY(%s)",
            (list(SOURCE_TABLES),),
        )
        return {t: v.isoformat() for t, v in cur.fetchall()}
