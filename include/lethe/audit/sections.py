"""The compliance page's sections beyond requests, purges, backups and the audit: sharing, legal holds,
processors and Airflow's metadata. Plain data, read from Lethe's own tables; no personal data.

A legal hold is shown by its id, age and reference (the ticket or dispute it was placed under), never
by its subject or its reason; a reference that holds identifier-shaped text is withheld, not shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg2.extensions

from lethe.policy import Policy


def _hours(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else max((now - then).total_seconds() / 3600, 0.0)


def has_table(cur: psycopg2.extensions.cursor, name: str) -> bool:
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (name,))
    return bool(cur.fetchone()[0])  # type: ignore[index]


@dataclass
class SharingRow:
    recipient: str
    audience: str  # the policy's description of who receives it
    mechanism: str  # none (k-anonymous cells) or the noise mechanism
    last_release_at: datetime | None  # the last published release
    last_window: str | None  # its data window, UTC days
    cells_published: int | None
    cells_suppressed: int | None
    last_attempt_status: str | None  # the latest release attempt: published, refused, gate_failed...
    last_attempt_at: datetime | None
    epsilon_spent: float | None  # within the budget period (None: no noise, no budget)
    epsilon_budget: float | None
    epsilon_left: float | None
    budget_period: str  # in words


def sharing(cur: psycopg2.extensions.cursor, policy: Policy) -> list[SharingRow]:
    """Per recipient of the policy: its last published release and its privacy budget."""
    from lethe.sharing.budget import spent
    from lethe.sharing.config import recipients

    if not has_table(cur, "sharing_releases"):
        return []
    rows = []
    for r in recipients(policy, include_disabled=True):
        cur.execute(
            "SELECT coalesce(finished_at, created_at), window_start, window_end, cells_published, cells_suppressed"
            " FROM sharing_releases WHERE recipient = %s AND status = 'published'"
            " ORDER BY window_end DESC, created_at DESC LIMIT 1",
            (r.name,),
        )
        published = cur.fetchone()
        cur.execute(
            "SELECT status, coalesce(finished_at, created_at) FROM sharing_releases WHERE recipient = %s"
            " ORDER BY created_at DESC LIMIT 1",
            (r.name,),
        )
        attempt = cur.fetchone()
        used = spent(cur, r) if r.noisy else None
        budget = r.epsilon_budget if r.noisy else None
        period = (
            f"rolling {r.budget_period_days:g} days"
            if r.budget_period_days
            else ("lifetime" if r.noisy else "no noise: no budget")
        )
        window = None
        if published:
            window = f"{published[1]:%Y-%m-%d} to {published[2]:%Y-%m-%d} UTC"
        rows.append(
            SharingRow(
                recipient=r.name,
                audience=r.description,
                mechanism=r.mechanism if r.noisy else f"k-anonymous cells (k={r.k})",
                last_release_at=published[0] if published else None,
                last_window=window,
                cells_published=int(published[3]) if published else None,
                cells_suppressed=int(published[4]) if published else None,
                last_attempt_status=attempt[0] if attempt else None,
                last_attempt_at=attempt[1] if attempt else None,
                epsilon_spent=used,
                epsilon_budget=budget,
                epsilon_left=None if budget is None or used is None else max(budget - used, 0.0),
                budget_period=period,
            )
        )
    return rows


@dataclass
class HoldRow:
    hold_id: int
    reference: str  # the ticket or dispute it was placed under (withheld when it looks like an identifier)
    placed_at: datetime
    age_days: float


WITHHELD = "withheld: the reference holds identifier-shaped text"


def holds(cur: psycopg2.extensions.cursor, now: datetime) -> list[HoldRow]:
    """Active legal holds, oldest first: id, reference and age. Never the subject or the reason."""
    from lethe.erasure.request import InvalidNote, validate_note

    cur.execute("SELECT hold_id, reference, placed_at FROM legal_holds WHERE released_at IS NULL ORDER BY placed_at")
    rows = []
    for hold_id, reference, placed_at in cur.fetchall():
        try:
            shown = validate_note("reference", reference, 10_000) or "none given"
        except InvalidNote:
            shown = WITHHELD
        rows.append(HoldRow(int(hold_id), shown, placed_at, (now - placed_at).total_seconds() / 86400))
    return rows


@dataclass
class ProcessorRow:
    processor: str
    description: str
    regions: list[str]
    pending_erasures: int  # erasure calls not confirmed yet: the requests stay open
    pending_objections: int
    done: int  # confirmed or accepted receipts
    skipped: int  # no connection configured when called
    lag_hours: float  # age of the oldest pending receipt (0 when none)
    last_call_at: datetime | None


def processors(cur: psycopg2.extensions.cursor, policy: Policy, now: datetime) -> list[ProcessorRow]:
    """Per processor of the policy: receipts by outcome and the lag of the oldest one still pending."""
    counts: dict[str, tuple[Any, ...]] = {}
    if has_table(cur, "processor_receipts"):
        cur.execute(
            """
            SELECT processor,
                   count(*) FILTER (WHERE status = 'pending' AND cause = 'erasure'),
                   count(*) FILTER (WHERE status = 'pending' AND cause = 'objection'),
                   count(*) FILTER (WHERE status IN ('confirmed', 'accepted')),
                   count(*) FILTER (WHERE status = 'skipped'),
                   min(first_at) FILTER (WHERE status = 'pending'),
                   max(updated_at)
            FROM processor_receipts GROUP BY processor
            """
        )
        counts = {row[0]: row[1:] for row in cur.fetchall()}
    rows = []
    for name, spec in policy.processors.items():
        pending, objections, done, skipped, oldest, last = counts.get(name, (0, 0, 0, 0, None, None))
        rows.append(
            ProcessorRow(
                processor=name,
                description=spec.description,
                regions=list(spec.regions),
                pending_erasures=int(pending),
                pending_objections=int(objections),
                done=int(done),
                skipped=int(skipped),
                lag_hours=_hours(now, oldest) or 0.0,
                last_call_at=last,
            )
        )
    return rows


@dataclass
class MetadataHeld:
    """What Airflow's metadata database still holds of erasure runs, and when airflow_metadata_cleanup clears it."""

    reachable: bool
    erasure_conf_retention_hours: float
    retention_days: float
    finished_runs_with_conf: int = 0  # finished subject_erasure runs whose conf is not cleared yet
    runs_naming_a_person: int = 0  # of those, runs whose conf holds an identifier (triggered from Airflow's form)
    active_runs: int = 0  # queued or running: their conf stays until they finish
    next_clear_at: datetime | None = None  # when the oldest of them is cleared
    last_clear_at: datetime | None = None  # when the newest of them is cleared
    lethe_runs: int = 0  # every recorded run of Lethe's DAGs
    oldest_run_at: datetime | None = None
    oldest_run_goes_at: datetime | None = None
    last_cleanup_at: datetime | None = None  # the last (non-dry) airflow_metadata_cleanup, from the ledger
    last_cleanup: dict[str, Any] | None = None  # its counts
    problem: str = ""


def metadata(cur: psycopg2.extensions.cursor, policy: Policy, metadata_url: str | None) -> MetadataHeld:
    """The ledger's last cleanup, plus (when the page can reach Airflow's database) what is still there."""
    from lethe.ops.cleanup import LEDGER_KIND

    conf_keep = policy.airflow_metadata.erasure_conf_retention.to_timedelta()
    keep = policy.airflow_metadata.retention.to_timedelta()
    held = MetadataHeld(False, conf_keep / timedelta(hours=1), keep / timedelta(days=1))
    cur.execute(
        "SELECT recorded_at, payload FROM ledger WHERE kind = %s"
        " AND NOT coalesce((payload->>'dry_run')::boolean, false) ORDER BY entry_id DESC LIMIT 1",
        (LEDGER_KIND,),
    )
    row = cur.fetchone()
    if row:
        held.last_cleanup_at, held.last_cleanup = row[0], row[1]
    if not metadata_url:
        held.problem = "Airflow's metadata database is not reachable from here"
        return held
    from lethe.ops.cleanup import ERASURE_DAG_IDS, LETHE_DAG_IDS
    from lethe.ops.metadata import still_held

    try:
        found = still_held(metadata_url, ERASURE_DAG_IDS, LETHE_DAG_IDS)
    except Exception as exc:  # the page still shows the rest; the class name only
        held.problem = f"could not read Airflow's metadata database ({type(exc).__name__})"
        return held
    held.reachable = True
    ends = sorted(found.finished_ends)
    held.finished_runs_with_conf = len(ends)
    held.runs_naming_a_person = found.naming_a_person
    held.active_runs = found.active
    held.next_clear_at = ends[0] + conf_keep if ends else None
    held.last_clear_at = ends[-1] + conf_keep if ends else None
    held.lethe_runs = found.lethe_runs
    held.oldest_run_at = found.oldest_start
    held.oldest_run_goes_at = found.oldest_start + keep if found.oldest_start else None
    return held
