"""Checks over the primary database: retention, legal holds, erasure residue, erasure deadlines.

Each check reads the database as it is now, not what the DAGs reported: a check
that read the executors' own counts back would only prove they agree with themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg2.extensions
from psycopg2 import sql

from lethe import holds, residue
from lethe.audit.limits import STALE_AFTER_HOURS
from lethe.db import table as lethe_table
from lethe.erasure import lifecycle
from lethe.policy.model import Policy
from lethe.pseudonym import pseudonym, subject_pseudonym
from lethe.quality import CheckResult, expect_counts
from lethe.relations import relation

# 'held': a legal hold keeps the person's rows and the request open; it is reported, not failed.
OPEN_STATUSES = lifecycle.OPEN
OVERDUE_STATUSES = tuple(s for s in lifecycle.OPEN if s != lifecycle.HELD)
DONE_STATUSES = lifecycle.CLOSED


STALE_AFTER = timedelta(hours=STALE_AFTER_HOURS)


@dataclass(frozen=True)
class LastRun:
    """The last completed, non-dry retention run of a rule, as the ledger recorded it."""

    as_of: datetime  # the run's `now`: what it purged up to
    cutoff: datetime  # the cutoff it applied (clamped by the aggregation watermark where one applies)
    awaiting_aggregation: bool  # the watermark held the cutoff back: newer raw rows wait for usage_sharing


def last_runs(cur: psycopg2.extensions.cursor) -> dict[str, LastRun]:
    """Per rule, its last completed retention run, read from the ledger (what was done, not planned)."""
    cur.execute(
        "SELECT DISTINCT ON (payload->>'rule') payload->>'rule', payload->>'now', payload->>'cutoff',"
        " coalesce((payload->>'watermark_clamped')::boolean, false) FROM ledger"
        " WHERE kind = 'retention' AND payload ? 'now' AND payload ? 'cutoff'"
        " AND NOT coalesce((payload->>'dry_run')::boolean, false)"
        " ORDER BY payload->>'rule', entry_id DESC"
    )
    return {
        rule: LastRun(datetime.fromisoformat(as_of), datetime.fromisoformat(cutoff), clamped)
        for rule, as_of, cutoff, clamped in cur.fetchall()
    }


def expired_rows(
    cur: psycopg2.extensions.cursor, policy: Policy, runs: dict[str, LastRun]
) -> tuple[dict[str, int], dict[str, Any]]:
    """Per rule that has run: rows still past the cutoff its last run applied (must be zero).

    Judged as of that run's cutoff, not the wall clock, so rows that crossed the line since the
    purge are not "left behind", and the same state always gives the same verdict. Rows kept for a
    legal hold, for a reference from rows kept longer, or until usage_sharing has aggregated them
    are reported beside the count, not failed.
    """
    from lethe.retention.plan import build_plan

    ran = [rule.name for _, rule in policy.rules() if rule.name in runs]
    if not ran:
        return {}, {}
    latest = max(runs[r].as_of for r in ran)
    plan = build_plan(
        cur, latest, policy=policy, rules=ran, dry_run=True, cutoffs_as_run={r: runs[r].cutoff for r in ran}
    )
    counts = {rp.rule: rp.rows for rp in plan.rules}
    details = {
        rp.rule: {
            "cutoff": rp.cutoff,
            "held": rp.held,
            "referenced": rp.referenced,
            "awaiting_aggregation": runs[rp.rule].awaiting_aggregation,
        }
        for rp in plan.rules
    }
    return counts, details


def _where(table: str, rule: Any) -> str:
    columns = ", ".join(rule.columns) if rule.columns else rule.after
    return f"table {table}, column {columns}"


def check_retention(
    cur: psycopg2.extensions.cursor, policy: Policy, now: datetime, stale_after: timedelta = STALE_AFTER
) -> CheckResult:
    """Two alarms per rule: `stale.<rule>` (no completed run within `stale_after` of `now`) and
    `expired_rows.<rule>` (rows its last run should have removed are still there)."""
    runs = last_runs(cur)
    rules = policy.rules()
    stale = {
        f"stale.{rule.name}": int(rule.name not in runs or now - runs[rule.name].as_of > stale_after)
        for _, rule in rules
    }
    stale_details = {
        f"stale.{rule.name}": {
            "last_run_as_of": runs[rule.name].as_of.isoformat() if rule.name in runs else None,
            "stale_after_hours": stale_after.total_seconds() / 3600,
        }
        for _, rule in rules
    }
    counts, details = expired_rows(cur, policy, runs)
    where = {f"stale.{r.name}": _where(t, r) for t, r in rules} | {
        f"expired_rows.{r.name}": _where(t, r) for t, r in rules
    }
    return expect_counts(
        "retention",
        stale | {f"expired_rows.{rule}": n for rule, n in counts.items()},
        details=stale_details | {f"expired_rows.{rule}": d for rule, d in details.items()},
        where=where,
    )


def held_rows(cur: psycopg2.extensions.cursor, policy: Policy) -> dict[str, dict[str, int]]:
    """Rows per table of each person under an active hold: hold id -> table -> rows."""
    counts: dict[str, dict[str, int]] = {}
    key_type = sql.SQL(holds.key_type(cur, policy))
    for table, rule in policy.tables.items():
        if rule.subject is None:
            continue
        cur.execute(
            sql.SQL(
                "SELECT h.hold_id, count(*) FROM {table} t JOIN {holds} h ON t.{s} = h.subject_key::{k} "
                "WHERE h.released_at IS NULL GROUP BY h.hold_id"
            ).format(
                table=relation(table),
                holds=lethe_table(holds.HOLDS),
                s=sql.Identifier(rule.subject),
                k=key_type,
            )
        )
        for hold_id, n in cur.fetchall():
            counts.setdefault(str(hold_id), {})[table] = int(n)
    return counts


def check_holds(current: dict[str, dict[str, int]], previous: dict[str, dict[str, int]] | None) -> CheckResult:
    """Held rows never shrink while the hold is active (compared with the previous audit's counts)."""
    shrunk: dict[str, int] = {}
    for hold_id, tables in (previous or {}).items():
        if hold_id not in current:
            continue  # released since (or its hold row was purged a year after release)
        for table, before in tables.items():
            now_rows = current[hold_id].get(table, 0)
            if now_rows < before:
                shrunk[table] = shrunk.get(table, 0) + before - now_rows
    return expect_counts(
        "legal_holds",
        {"held_rows_removed": sum(shrunk.values())},
        details={"held_rows_removed": {"tables": shrunk, "active_holds": len(current)}},
    )


def _tombstones(cur: psycopg2.extensions.cursor) -> tuple[set[str], set[str]]:
    cur.execute("SELECT subject_pseudonym, identifier_pseudonyms FROM erasure_tombstones")
    subjects: set[str] = set()
    identifiers: set[str] = set()
    for subject, idents in cur.fetchall():
        subjects.add(subject)
        identifiers.update(idents or [])
    return subjects, identifiers


def erasure_residue(cur: psycopg2.extensions.cursor, policy: Policy, key: bytes) -> dict[str, int]:
    """Rows still linked to an erased person, per table; identifiers of completed requests not nulled."""
    subjects, identifier_pseudonyms = _tombstones(cur)
    counts: dict[str, int] = {}
    cur.execute(
        "SELECT count(*) FROM erasure_requests WHERE status = ANY(%s) AND identifier IS NOT NULL",
        (list(DONE_STATUSES),),
    )
    counts["identifier_kept_after_completion"] = int(cur.fetchone()[0])  # type: ignore[index]
    linked = {t: r.subject for t, r in policy.tables.items() if r.subject is not None}
    # Pseudonyms are keyed HMACs, so the match runs here in Python over the subjects present.
    cur.execute(
        sql.SQL(" UNION ").join(
            sql.SQL("SELECT DISTINCT {s}::text FROM {t} WHERE {s} IS NOT NULL").format(
                s=sql.Identifier(s), t=relation(t)
            )
            for t, s in linked.items()
        )
    )
    erased_ids = [uid for (uid,) in cur.fetchall() if subject_pseudonym(key, uid) in subjects]
    for table, subject in linked.items():
        n = 0
        if erased_ids:
            cur.execute(
                sql.SQL("SELECT count(*) FROM {t} WHERE {s}::text = ANY(%s::text[])").format(
                    t=relation(table), s=sql.Identifier(subject)
                ),
                (erased_ids,),
            )
            n = int(cur.fetchone()[0])  # type: ignore[index]
        counts[f"erased_subject_rows.{table}"] = n
    counts["erased_identifiers_left"] = _identifiers_left(cur, policy, key, identifier_pseudonyms)
    return counts


def _identifiers_left(
    cur: psycopg2.extensions.cursor, policy: Policy, key: bytes, identifier_pseudonyms: set[str]
) -> int:
    """Email/phone/username values anywhere in subject tables that belong to an erased identifier."""
    if not identifier_pseudonyms:
        return 0
    left = 0
    for table, rule in policy.tables.items():
        for column, cls in rule.columns.items():
            if cls not in ("email", "phone", "username"):
                continue
            cur.execute(
                sql.SQL("SELECT {c} FROM {t} WHERE {c} IS NOT NULL").format(c=sql.Identifier(column), t=relation(table))
            )
            for (value,) in cur:
                try:
                    if pseudonym(key, cls, value) in identifier_pseudonyms:
                        left += 1
                except ValueError:
                    continue
    return left


def check_erasure(cur: psycopg2.extensions.cursor, policy: Policy, key: bytes) -> CheckResult:
    return expect_counts("erasure_residue", erasure_residue(cur, policy, key))


def erasure_residue_scan(
    cur: psycopg2.extensions.cursor, policy: Policy, key: bytes
) -> tuple[dict[str, int], dict[str, Any]]:
    """Rows where an erased person is still found by value, in any text-like column of any table.

    The scanner (lethe.residue) matches every spelling in the data by its keyed pseudonym against
    the tombstones, so emails in any case, phones in any format, handles, names, cookies and IPs are
    found without a raw value and without the eraser's traversal. Not counted as residue: columns
    the policy keeps for kept rows (`erasure.keep`), rows of a person under an active legal hold
    (their redaction waits for the release), and Lethe's own erasure records.
    """
    _, identifiers = _tombstones(cur)
    found: dict[str, int] = {}
    allowed: dict[str, int] = {}
    if identifiers:
        index = residue.KeyedIndex(key, frozenset(identifiers))
        records = {t for t, r in policy.tables.items() if r.purpose == "erasure_record"}
        kept = {t: set(r.erasure.keep) for t, r in policy.tables.items() if r.erasure}
        names = {t: {c for c, cls in r.columns.items() if cls == "name"} for t, r in policy.tables.items()}
        links = {t: [r.subject] for t, r in policy.tables.items() if r.subject}
        links[holds.HOLDS] = ["subject_key"]  # a hold's own row belongs to the held person
        held = set(holds.active_keys(cur))
        tables = [
            t
            for t in residue.text_tables(cur, residue.policy_schemas(cur, policy), policy.tables)
            if t.name not in records
        ]
        for hit in residue.scan_rows(cur, tables, index, links):
            owner = str(hit.extra[0]) if hit.extra and hit.extra[0] is not None else None
            for column in hit.owners:
                name = f"{hit.table.name}.{column}"
                if owner is not None and column in names.get(hit.table.name, set()):
                    continue  # a living person's own name column: theirs, even if an erased person shared the name
                if column in kept.get(hit.table.name, set()) or owner in held:
                    allowed[name] = allowed.get(name, 0) + 1
                else:
                    found[name] = found.get(name, 0) + 1
    counts = {"erased_found_by_value": sum(found.values())}
    counts.update({f"erased_found_by_value.{name}": n for name, n in sorted(found.items())})
    return counts, {"erased_found_by_value": {"kept_or_held": allowed, "tombstones_identifiers": len(identifiers)}}


def check_erasure_scan(cur: psycopg2.extensions.cursor, policy: Policy, key: bytes) -> CheckResult:
    counts, details = erasure_residue_scan(cur, policy, key)
    return expect_counts("erasure_residue_scan", counts, details=details)


def overdue_requests(
    cur: psycopg2.extensions.cursor, now: datetime, statuses: tuple[str, ...] = OVERDUE_STATUSES
) -> int:
    cur.execute("SELECT count(*) FROM erasure_requests WHERE status = ANY(%s) AND due_at < %s", (list(statuses), now))
    return int(cur.fetchone()[0])  # type: ignore[index]


def check_deadlines(cur: psycopg2.extensions.cursor, now: datetime, warn_days: int = 7) -> CheckResult:
    """Open erasure requests past their due date fail the audit; those due within a week are counted."""
    cur.execute(
        "SELECT count(*) FROM erasure_requests WHERE status = ANY(%s) AND due_at >= %s AND due_at < %s",
        (list(OPEN_STATUSES), now, now + timedelta(days=warn_days)),
    )
    due_soon = int(cur.fetchone()[0])  # type: ignore[index]
    return expect_counts(
        "erasure_deadlines",
        {"overdue_erasure_requests": overdue_requests(cur, now)},
        details={
            "overdue_erasure_requests": {
                "due_within_days": warn_days,
                "due_soon": due_soon,
                "overdue_but_held": overdue_requests(cur, now, ("held",)),
            }
        },
    )
