"""Checks over the primary database: retention, legal holds, erasure residue, erasure deadlines.

Each check reads the database as it is now, not what the DAGs reported: a check
that read the executors' own counts back would only prove they agree with themselves.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import psycopg2.extensions
from psycopg2 import sql

from lethe.audit.expect import expect_counts, merge
from lethe.policy.model import Policy
from lethe.pseudonym import pseudonym, subject_pseudonym
from lethe.quality import CheckResult

HOLDS_TABLE = "legal_holds"
# 'held': a legal hold keeps the person's rows and the request open; it is reported, not failed.
OPEN_STATUSES = ("pending", "running", "failed", "held")
OVERDUE_STATUSES = ("pending", "running", "failed")
DONE_STATUSES = ("completed", "no_data")


def expired_rows(
    cur: psycopg2.extensions.cursor, policy: Policy, now: datetime
) -> tuple[dict[str, int], dict[str, Any]]:
    """Per retention rule: rows retention_nightly would still act on now (must be zero after its run).

    Counted with lethe.retention's own plan (dry run), so the audit and the purge never disagree
    on what a rule means; rows kept for a legal hold, for a reference from rows kept longer, or
    until usage_sharing has aggregated them are reported beside the count, not failed.
    """
    from lethe.retention.plan import build_plan

    plan = build_plan(cur, now, policy=policy, dry_run=True)
    counts = {rp.rule: rp.rows for rp in plan.rules}
    details = {
        rp.rule: {"held": rp.held, "referenced": rp.referenced, "awaiting_aggregation": rp.cutoff != rp.rule_cutoff}
        for rp in plan.rules
    }
    return counts, details


def check_retention(cur: psycopg2.extensions.cursor, policy: Policy, now: datetime) -> CheckResult:
    counts, details = expired_rows(cur, policy, now)
    return expect_counts(
        "retention",
        {f"expired_rows.{rule}": n for rule, n in counts.items()},
        details={f"expired_rows.{rule}": d for rule, d in details.items()},
    )


def held_rows(cur: psycopg2.extensions.cursor, policy: Policy) -> dict[str, dict[str, int]]:
    """Rows per table of each person under an active hold: hold id -> table -> rows."""
    counts: dict[str, dict[str, int]] = {}
    for table, rule in policy.tables.items():
        if rule.subject is None:
            continue
        cur.execute(
            sql.SQL(
                "SELECT h.hold_id, count(*) FROM {table} t JOIN {holds} h ON h.user_id = t.{s} "
                "WHERE h.released_at IS NULL GROUP BY h.hold_id"
            ).format(table=sql.Identifier(table), holds=sql.Identifier(HOLDS_TABLE), s=sql.Identifier(rule.subject))
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
            sql.SQL("SELECT DISTINCT {s} FROM {t} WHERE {s} IS NOT NULL").format(
                s=sql.Identifier(s), t=sql.Identifier(t)
            )
            for t, s in linked.items()
        )
    )
    erased_ids = [uid for (uid,) in cur.fetchall() if subject_pseudonym(key, uid) in subjects]
    for table, subject in linked.items():
        n = 0
        if erased_ids:
            cur.execute(
                sql.SQL("SELECT count(*) FROM {t} WHERE {s} = ANY(%s)").format(
                    t=sql.Identifier(table), s=sql.Identifier(subject)
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
                sql.SQL("SELECT {c} FROM {t} WHERE {c} IS NOT NULL").format(
                    c=sql.Identifier(column), t=sql.Identifier(table)
                )
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


def check_primary(cur: psycopg2.extensions.cursor, policy: Policy, now: datetime, key: bytes) -> CheckResult:
    """All primary checks but the holds (which need the previous audit's counts)."""
    return merge(
        "primary", check_retention(cur, policy, now), check_erasure(cur, policy, key), check_deadlines(cur, now)
    )
