"""What the Privacy compliance page shows, gathered as plain data (no personal data).

Erasure requests are listed by id, kind of identifier, status and deadline, never
by the identifier itself; purges and propagation come from the ledger and the
backup catalogue; quality results from compliance_audit's audit_runs. Every section
says how fresh its data is against the schedule of the DAG that feeds it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg2.extensions

from lethe.audit import sections, trends
from lethe.audit.limits import RPO_HOURS, STALE_AFTER_HOURS
from lethe.config import BACKUP_REGIONS
from lethe.db import transaction
from lethe.ledger import verify_chain
from lethe.policy import load_policy


@dataclass(frozen=True)
class State:
    colour: str  # ok, warn, bad, info, muted: a CSS class of the page
    meaning: str
    open: bool  # still owed to the person: counts against its deadline


# Every state of the erasure lifecycle; a state not listed here is shown as UNKNOWN_STATE.
STATES: dict[str, State] = {
    "awaiting_approval": State("info", "waiting for a second person to approve the erasure", True),
    "pending": State("info", "received, waiting for the next subject_erasure run", True),
    "planned": State("info", "approved; the rows to erase are listed, erasure not started", True),
    "running": State("info", "subject_erasure is working on it", True),
    "erasing": State("info", "subject_erasure is deleting and pseudonymising the rows", True),
    "held": State("warn", "paused: the person is under an active legal hold", True),
    "failed": State("bad", "the last attempt failed; the next run retries it (see its DAG run)", True),
    "erased": State("ok", "rows erased in the primary; checks and certificate to follow", False),
    "verified": State("ok", "erased, and the residue checks found nothing left", False),
    "certified": State("ok", "erased, verified, and its certificate is written", False),
    "completed": State("ok", "erased and closed", False),
    "no_data": State("ok", "nothing of the person was found; closed", False),
    "rejected": State("muted", "refused by the approver; nothing was erased", False),
    "dry_run": State("muted", "a rehearsal: nothing was erased", False),
}
UNKNOWN_STATE = State("warn", "a state this page does not know: see the request's DAG run", True)
CLOSED_STATES = [name for name, s in STATES.items() if not s.open]


def state(name: str) -> State:
    return STATES.get(name, UNKNOWN_STATE)


@dataclass(frozen=True)
class Feed:
    dag_id: str
    schedule: str  # in words, as the DAG file sets it
    max_age_hours: float  # the audit's own limits (lethe.audit.limits): a daily schedule plus two hours
    what: str  # the event whose age is measured


# The DAG that feeds each section (schedules from dags/*.py).
FEEDS: dict[str, Feed] = {
    "requests": Feed("subject_erasure", "daily at 00:00 UTC", STALE_AFTER_HOURS, "erasure"),
    "purges": Feed("retention_nightly", "daily at 01:15 UTC", STALE_AFTER_HOURS, "purge"),
    "regions": Feed("backup_nightly", "daily at 02:00 UTC", RPO_HOURS, "complete snapshot"),
    "sharing": Feed("usage_sharing", "daily at 02:45 UTC", STALE_AFTER_HOURS, "release attempt"),
    "audit": Feed("compliance_audit", "daily at 04:30 UTC", STALE_AFTER_HOURS, "audit"),
    "metadata": Feed("airflow_metadata_cleanup", "daily at 05:00 UTC", STALE_AFTER_HOURS, "cleanup"),
    "processors": Feed("subject_erasure", "daily at 00:00 UTC", STALE_AFTER_HOURS, "processor call"),
}


@dataclass
class Freshness:
    section: str
    dag_id: str
    schedule: str
    last_at: datetime | None
    age_hours: float | None
    stale: bool
    text: str


def freshness(section: str, last_at: datetime | None, now: datetime) -> Freshness:
    """How old a section's data is, in words, judged against its DAG's schedule."""
    feed = FEEDS[section]
    if last_at is None:
        return Freshness(section, feed.dag_id, feed.schedule, None, None, True, f"no {feed.what} yet")
    age = (now - last_at).total_seconds() / 3600
    stale = age > feed.max_age_hours
    when = last_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    if stale and last_at.astimezone(UTC).date() < now.astimezone(UTC).date() - timedelta(days=1):
        text = f"no {feed.what} since {when}: more than {feed.max_age_hours:g} hours ago"
    elif stale and last_at.astimezone(UTC).date() < now.astimezone(UTC).date():
        text = f"no {feed.what} since yesterday: last {feed.what} more than {feed.max_age_hours:g} hours ago ({when})"
    elif stale:
        text = f"last {feed.what} more than {feed.max_age_hours:g} hours ago ({when})"
    else:
        text = f"last {feed.what} {age:.1f} hours ago ({when})"
    return Freshness(section, feed.dag_id, feed.schedule, last_at, age, stale, text)


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
    colour: str = ""
    meaning: str = ""
    run_url: str | None = None  # the subject_erasure run that last took it up
    approval_url: str | None = None  # that run's approval (required actions), when it asked for one
    certificate_url: str | None = None  # served by the page itself, behind its login


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
    counted: str = ""  # what `done` counts: rows deleted, rows anonymised, partitions dropped
    stale: bool = False


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
    data_docs: str | None = None  # the run's GX Data Docs, relative to the page (served by its authenticated route)


@dataclass
class Check:
    suite: str
    name: str
    success: bool
    observed: Any
    expected: Any
    where: str | None
    meaning: str
    action: str
    doc: str


@dataclass
class Page:
    generated_at: datetime
    erasures: list[ErasureRow]
    purges: list[PurgeRow]
    regions: list[RegionRow]
    runs: list[QualityRun]  # the last 30 audits, newest first: the verdict history
    latest_checks: list[Check]  # failures first
    freshness: dict[str, Freshness]
    audit_doc_url: str
    ledger_ok: bool
    ledger_entries: int
    ledger_problem: str = ""
    ledger_first_broken: int | None = None
    ledger_last_at: datetime | None = None
    notes: list[str] = field(default_factory=list)
    filters: dict[str, Any] = field(default_factory=dict)
    sharing: list[sections.SharingRow] = field(default_factory=list)
    holds: list[sections.HoldRow] = field(default_factory=list)
    processors: list[sections.ProcessorRow] = field(default_factory=list)
    metadata: sections.MetadataHeld | None = None
    charts: dict[str, list[trends.Series]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def dag_run_url(dag_id: str, run_id: str, base_url: str = "") -> str:
    from urllib.parse import quote

    return f"{base_url.rstrip('/')}/dags/{quote(dag_id)}/runs/{quote(run_id, safe='')}"


ERASURE_DAG_ID = "subject_erasure"
# States that went through (or wait for) a human approval; a request's detail may also record one.
APPROVAL_STATES = ("awaiting_approval", "approved", "rejected")
# States whose certificate is written (certify also writes one for held and awaiting_processors requests).
CERTIFIED_STATES = ("certified", "completed", "no_data", "awaiting_processors")


def approval_url(run_id: str, base_url: str = "") -> str:
    """The run's required actions in Airflow's UI, where the approval is answered (or shows who answered)."""
    return dag_run_url(ERASURE_DAG_ID, run_id, base_url) + "/required_actions"


def erasures(
    cur: psycopg2.extensions.cursor,
    now: datetime,
    limit: int = 50,
    status: str | None = None,
    due_within_days: int | None = None,
    base_url: str = "",
    certificates_url: str | None = None,
) -> list[ErasureRow]:
    """Open requests first (soonest deadline first), then the latest closed ones; optionally one state
    only, or only open requests due within `due_within_days` (overdue ones included). Each links to the
    DAG run that took it up, that run's approval, and (under `certificates_url`) its certificate."""
    cur.execute(
        """
        SELECT request_id::text, identifier_kind, reference, status, received_at, due_at, completed_at,
               coalesce(claimed_by, detail->>'run_id'), detail->>'stage' = 'certified', detail ? 'approval'
        FROM erasure_requests
        WHERE (%(status)s::text IS NULL OR status = %(status)s)
          AND (%(due_by)s::timestamptz IS NULL OR (status <> ALL(%(closed)s) AND due_at <= %(due_by)s))
        ORDER BY (status = ANY(%(closed)s)), due_at, received_at DESC
        LIMIT %(limit)s
        """,
        {
            "status": status,
            "due_by": None if due_within_days is None else now + timedelta(days=due_within_days),
            "closed": CLOSED_STATES,
            "limit": limit,
        },
    )
    rows = []
    for rid, kind, ref, name, received, due, completed, run_id, certified, approval in cur.fetchall():
        st = state(name)
        days = math.floor((due - now).total_seconds() / 86400) if st.open else None
        row = ErasureRow(rid, kind, ref, name, received, due, completed, days, st.colour, st.meaning)
        if run_id:
            row.run_url = dag_run_url(ERASURE_DAG_ID, run_id, base_url)
            if name in APPROVAL_STATES or approval:
                row.approval_url = approval_url(run_id, base_url)
        if certificates_url is not None and (certified or name in CERTIFIED_STATES):
            row.certificate_url = f"{certificates_url.rstrip('/')}/{rid}"
        rows.append(row)
    return rows


COUNTED = {"delete": "rows deleted", "anonymise": "rows anonymised", "drop_partitions": "rows dropped"}


def purges(cur: psycopg2.extensions.cursor, now: datetime) -> list[PurgeRow]:
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
                counted=COUNTED.get(payload.get("action", rule.action), "rows"),
                stale=at is None or (now - at).total_seconds() / 3600 > FEEDS["purges"].max_age_hours,
            )
        )
    return rows


def regions(cur: psycopg2.extensions.cursor, now: datetime) -> list[RegionRow]:
    """Per backup region: the latest complete snapshot, and erasures not yet carried into its snapshots."""
    if not sections.has_table(cur, "backup_propagation_status"):
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


def data_docs_link(run_id: str) -> str:
    """The page-relative link to a run's Data Docs (the page's /data-docs route reads them from S3)."""
    from urllib.parse import quote

    return f"data-docs/{quote(run_id, safe='')}/index.html"


def quality(
    cur: psycopg2.extensions.cursor, base_url: str = "", limit: int = 30
) -> tuple[list[QualityRun], list[Check]]:
    """The latest audit runs (with links to their DAG runs) and every check of the newest one, failures first."""
    from lethe.audit.results import latest
    from lethe.audit.runbook import DOC_SECTION, explain

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
            data_docs_link(r["run_id"]) if r.get("data_docs") else None,
        )
        for r in runs
    ]
    checks = []
    if runs:
        for suite in runs[0]["results"]:
            for check in suite["checks"]:
                entry = explain(suite["suite"], check["name"])
                checks.append(
                    Check(
                        suite=suite["suite"],
                        name=check["name"],
                        success=bool(check["success"]),
                        observed=check.get("observed"),
                        expected=check.get("expected"),
                        where=check.get("where"),
                        meaning=entry.meaning if entry else "",
                        action=entry.action if entry else "",
                        doc=DOC_SECTION,
                    )
                )
    checks.sort(key=lambda c: c.success)  # stable: failures first, each group in the audit's order
    return listed, checks


def _latest(cur: psycopg2.extensions.cursor, query: str, *params: Any) -> datetime | None:
    cur.execute(query, params)
    row = cur.fetchone()
    return row[0] if row else None


def gather(
    db_url: str,
    base_url: str = "",
    now: datetime | None = None,
    status: str | None = None,
    due_within_days: int | None = None,
    certificates_url: str | None = None,
    metadata_url: str | None = None,
) -> Page:
    """Everything the page shows. `certificates_url`: where the page serves certificates (None: no links);
    `metadata_url`: Airflow's metadata database, for what it still holds about erasure runs."""
    now = now or datetime.now(UTC)
    policy = load_policy()
    with transaction(db_url) as cur:
        chain = verify_chain(cur)
        last_at = _latest(cur, "SELECT max(recorded_at) FROM ledger")
        runs, checks = quality(cur, base_url)
        fresh = {
            "requests": _latest(cur, "SELECT max(recorded_at) FROM ledger WHERE kind = %s", "erasure"),
            "purges": _latest(
                cur,
                "SELECT max(recorded_at) FROM ledger WHERE kind = %s"
                " AND NOT coalesce((payload->>'dry_run')::boolean, false)",
                "retention",
            ),
            "audit": runs[0].audited_at if runs else None,
        }
        region_rows = regions(cur, now)
        snapshots = [r.last_snapshot_at for r in region_rows if r.last_snapshot_at]
        fresh["regions"] = min(snapshots) if len(snapshots) == len(region_rows) and snapshots else None
        share_rows = sections.sharing(cur, policy)
        attempts = [r.last_attempt_at for r in share_rows if r.last_attempt_at]
        fresh["sharing"] = max(attempts) if attempts else None
        processor_rows = sections.processors(cur, policy, now)
        calls = [p.last_call_at for p in processor_rows if p.last_call_at]
        fresh["processors"] = max(calls) if calls else None
        held = sections.metadata(cur, policy, metadata_url)
        fresh["metadata"] = held.last_cleanup_at
        return Page(
            generated_at=now,
            erasures=erasures(
                cur,
                now,
                status=status,
                due_within_days=due_within_days,
                base_url=base_url,
                certificates_url=certificates_url,
            ),
            purges=purges(cur, now),
            regions=region_rows,
            runs=runs,
            latest_checks=checks,
            freshness={section: freshness(section, at, now) for section, at in fresh.items()},
            audit_doc_url=f"{base_url.rstrip('/')}/dags/compliance_audit",
            ledger_ok=chain.ok,
            ledger_entries=chain.entries,
            ledger_problem=chain.problem,
            ledger_first_broken=chain.first_broken_entry,
            ledger_last_at=last_at,
            filters={"status": status, "due_within_days": due_within_days},
            sharing=share_rows,
            holds=sections.holds(cur, now),
            processors=processor_rows,
            metadata=held,
            charts={
                "purged_per_night": trends.purged_per_night(cur, now),
                "erasures_per_week": trends.erasures_per_week(cur, now),
                "lag_per_region": trends.lag_per_region(cur, now),
            },
        )
