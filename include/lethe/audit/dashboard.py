"""What the Privacy compliance page shows, gathered as plain data (no personal data).

Erasure requests are listed by id, kind of identifier, status and deadline, never
by the identifier itself; purges and propagation come from the ledger and the
backup catalogue; quality results from compliance_audit's audit_runs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg2.extensions

from lethe.config import BACKUP_REGIONS
from lethe.db import transaction
from lethe.ledger import verify_chain
from lethe.policy import load_policy


@dataclass
class ErasureRow:
    request_id: str
    identifier_kind: str
    reference: str | None
    status: str
    received_at: datetime
    due_at: datetime
    completed_at: datetime | None
    days_left: int | None  # open requests only; negative when overdue


@dataclass
class PurgeRow:
    rule: str
    table: str
    action: str
    at: datetime | None
    cutoff: str | None
    done: int | None
    held: int | None
    referenced: int | None


@dataclass
class RegionRow:
    region: str
    last_snapshot_at: datetime | None
    snapshot_age_hours: float | None
    tombstones: int
    pending: int
    lag_hours: float  # age of the oldest erasure not yet applied in this region (0 when none)


@dataclass
class QualityRun:
    run_id: str
    dag_id: str
    audited_at: datetime
    success: bool
    checks_total: int
    failed: list[str]
    url: str


@dataclass
class Page:
    generated_at: datetime
    erasures: list[ErasureRow]
    purges: list[PurgeRow]
    regions: list[RegionRow]
    runs: list[QualityRun]
    latest_checks: list[dict[str, Any]]
    ledger_ok: bool
    ledger_entries: int
    ledger_problem: str = ""
    ledger_first_broken: int | None = None
    ledger_last_at: datetime | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def dag_run_url(dag_id: str, run_id: str, base_url: str = "") -> str:
    from urllib.parse import quote

    return f"{base_url.rstrip('/')}/dags/{quote(dag_id)}/runs/{quote(run_id, safe='')}"


def erasures(cur: psycopg2.extensions.cursor, now: datetime, limit: int = 50) -> list[ErasureRow]:
    """Open requests first (soonest deadline first), then the latest closed ones."""
    cur.execute(
        """
        SELECT request_id::text, identifier_kind, reference, status, received_at, due_at, completed_at
        FROM erasure_requests
        ORDER BY (status IN ('completed', 'no_data', 'dry_run')), due_at, received_at DESC
        LIMIT %s
        """,
        (limit,),
    )
    rows = []
    for rid, kind, ref, status, received, due, completed in cur.fetchall():
        open_ = status not in ("completed", "no_data", "dry_run")
        days = math.floor((due - now).total_seconds() / 86400) if open_ else None
        rows.append(ErasureRow(rid, kind, ref, status, received, due, completed, days))
    return rows


def purges(cur: psycopg2.extensions.cursor) -> list[PurgeRow]:
    """The last executed (not dry-run) purge of every policy rule, from the ledger's retention entries."""
    cur.execute(
        """
        SELECT DISTINCT ON (payload->>'rule') payload->>'rule', recorded_at, payload
        FROM ledger
        WHERE kind = 'retention' AND NOT coalesce((payload->>'dry_run')::boolean, false)
        ORDER BY payload->>'rule', entry_id DESC
        """
    )
    last = {rule: (at, payload) for rule, at, payload in cur.fetchall()}
    rows = []
    for table, rule in load_policy().rules():
        at, payload = last.get(rule.name, (None, {}))
        counts = payload.get("counts") or {}
        rows.append(
            PurgeRow(
                rule=rule.name,
                table=payload.get("table", table),
                action=payload.get("action", rule.action),
                at=at,
                cutoff=payload.get("cutoff"),
                done=counts.get("done", counts.get("deleted")),
                held=counts.get("held"),
                referenced=counts.get("referenced"),
            )
        )
    return rows


def _has_table(cur: psycopg2.extensions.cursor, name: str) -> bool:
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (name,))
    return bool(cur.fetchone()[0])  # type: ignore[index]


def regions(cur: psycopg2.extensions.cursor, now: datetime) -> list[RegionRow]:
    """Per backup region: the latest complete snapshot, and erasures not yet carried into its snapshots."""
    if not _has_table(cur, "backup_propagation_status"):
        return []
    cur.execute(
        """
        SELECT r.region,
               (SELECT max(completed_at) FROM backup_snapshots b WHERE b.region = r.region AND b.status = 'complete'),
               count(t.subject_pseudonym),
               count(t.subject_pseudonym) FILTER (WHERE s.status IS DISTINCT FROM 'applied'),
               min(t.erased_at) FILTER (WHERE s.status IS DISTINCT FROM 'applied')
        FROM unnest(%s::text[]) AS r(region)
        LEFT JOIN erasure_tombstones t ON true
        LEFT JOIN backup_propagation_status s ON s.subject_pseudonym = t.subject_pseudonym AND s.region = r.region
        GROUP BY r.region ORDER BY r.region
        """,
        (list(BACKUP_REGIONS),),
    )
    rows = []
    for region, last, total, pending, oldest in cur.fetchall():
        age = (now - last).total_seconds() / 3600 if last else None
        lag = (now - oldest).total_seconds() / 3600 if oldest else 0.0
        rows.append(RegionRow(region, last, age, int(total), int(pending), lag))
    return rows


def quality(
    cur: psycopg2.extensions.cursor, base_url: str = "", limit: int = 10
) -> tuple[list[QualityRun], list[dict[str, Any]]]:
    """The latest audit runs (with links to their DAG runs) and every check of the newest one."""
    from lethe.audit.results import latest

    runs = latest(cur, limit)
    listed = [
        QualityRun(
            r["run_id"],
            r["dag_id"],
            r["audited_at"],
            r["success"],
            r["checks_total"],
            list(r["failed"]),
            dag_run_url(r["dag_id"], r["run_id"], base_url),
        )
        for r in runs
    ]
    checks = []
    if runs:
        for suite in runs[0]["results"]:
            for check in suite["checks"]:
                checks.append(
                    {
                        "suite": suite["suite"],
                        "name": check["name"],
                        "success": check["success"],
                        "observed": check.get("observed"),
                    }
                )
    return listed, checks


def gather(db_url: str, base_url: str = "", now: datetime | None = None) -> Page:
    now = now or datetime.now(UTC)
    with transaction(db_url) as cur:
        status = verify_chain(cur)
        cur.execute("SELECT max(recorded_at) FROM ledger")
        last_at = cur.fetchone()[0]  # type: ignore[index]
        runs, checks = quality(cur, base_url)
        return Page(
            generated_at=now,
            erasures=erasures(cur, now),
            purges=purges(cur),
            regions=regions(cur, now),
            runs=runs,
            latest_checks=checks,
            ledger_ok=status.ok,
            ledger_entries=status.entries,
            ledger_problem=status.problem,
            ledger_first_broken=status.first_broken_entry,
            ledger_last_at=last_at,
        )
