"""Checks over the primary database: retention, legal holds, erasure residue, erasure deadlines.

The audit recomputes each condition from the policy file with its own SQL, not
from what the DAGs reported: a check that read the executors' own counts back
would only prove they are consistent with themselves.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import psycopg2.extensions
from psycopg2 import sql

from lethe.audit.expect import expect_counts, merge
from lethe.policy.model import Policy, RetentionRule
from lethe.pseudonym import pseudonym, subject_pseudonym
from lethe.quality import CheckResult

# Lethe's schema conventions the policy's events rely on (see 001_platform.sql).
CLOSED_AT = "closed_at"
HOLDS_TABLE = "legal_holds"
CONSENTS_TABLE = "consents"
# 'held': a legal hold keeps the person's rows and the request open; it is reported, not failed.
OPEN_STATUSES = ("pending", "running", "failed", "held")
OVERDUE_STATUSES = ("pending", "running", "failed")
DONE_STATUSES = ("completed", "no_data")


def _held(policy: Policy, table: str) -> sql.Composable:
    """`AND` clause excluding rows of people under an active legal hold (holds block deletion)."""
    subject = policy.tables[table].subject
    if subject is None:
        return sql.SQL("")
    return sql.SQL(
        " AND NOT EXISTS (SELECT 1 FROM {holds} h WHERE h.user_id = t.{subject} AND h.released_at IS NULL)"
    ).format(holds=sql.Identifier(HOLDS_TABLE), subject=sql.Identifier(subject))


def _due(policy: Policy, table: str, rule: RetentionRule, cutoff: datetime) -> tuple[sql.Composable, list[Any]]:
    """The rows of `table` whose retention under `rule` has run out at `cutoff`."""
    subject = policy.tables[table].subject
    if rule.event == "account_closed":
        assert subject is not None  # the policy model enforces a subject link for event rules
        return sql.SQL("t.{s} IN (SELECT {key} FROM {accounts} WHERE {closed} < %s)").format(
            s=sql.Identifier(subject),
            key=sql.Identifier(policy.subject.key),
            accounts=sql.Identifier(policy.subject.table),
            closed=sql.Identifier(CLOSED_AT),
        ), [cutoff]
    if rule.event == "consent_ended":
        assert subject is not None
        return sql.SQL(
            "t.{s} IN (SELECT user_id FROM {consents} WHERE purpose = %s AND LEAST(withdrawn_at, objected_at) < %s)"
        ).format(s=sql.Identifier(subject), consents=sql.Identifier(CONSENTS_TABLE)), [rule.consent_purpose, cutoff]
    if rule.action == "drop_partitions":
        # Whole monthly partitions go: only months that ended before the cutoff are due.
        return sql.SQL("t.{c} < date_trunc('month', %s::timestamptz AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'").format(
            c=sql.Identifier(rule.after)
        ), [cutoff]
    return sql.SQL("t.{c} < %s").format(c=sql.Identifier(rule.after)), [cutoff]


def _not_anonymised(rule: RetentionRule) -> sql.Composable:
    """Rows on which an anonymise rule's columns still hold their original value."""
    parts: list[sql.Composable] = []
    for column, strategy in rule.columns.items():
        col = sql.Identifier(column)
        if strategy == "null":
            parts.append(sql.SQL("t.{} IS NOT NULL").format(col))
        elif strategy == "truncate_ip":
            # Truncated means the host bits are zero: /24 for IPv4, /48 for IPv6.
            parts.append(
                sql.SQL(
                    "(t.{c} IS NOT NULL AND host(t.{c}) <> host(t.{c} & CASE WHEN family(t.{c}) = 4 "
                    "THEN inet '255.255.255.0' ELSE inet 'ffff:ffff:ffff::' END))"
                ).format(c=col)
            )
        elif strategy == "redact":
            parts.append(sql.SQL("(t.{c} IS NOT NULL AND t.{c}::text <> '[redacted]')").format(c=col))
        else:
            raise ValueError(f"rule {rule.name}: the audit cannot check anonymise strategy {strategy!r}")
    return sql.SQL("(") + sql.SQL(" OR ").join(parts) + sql.SQL(")")


def expired_rows(cur: psycopg2.extensions.cursor, policy: Policy, now: datetime) -> dict[str, int]:
    """Per retention rule: unheld rows still present (or not anonymised) past their retention."""
    counts: dict[str, int] = {}
    for table, rule in policy.rules():
        cutoff = now - rule.keep.to_timedelta()
        due, params = _due(policy, table, rule, cutoff)
        query = sql.SQL("SELECT count(*) FROM {table} t WHERE {due}{held}").format(
            table=sql.Identifier(table), due=due, held=_held(policy, table)
        )
        if rule.action == "anonymise":
            query = query + sql.SQL(" AND ") + _not_anonymised(rule)
        cur.execute(query, params)
        counts[rule.name] = int(cur.fetchone()[0])  # type: ignore[index]
    return counts


def check_retention(cur: psycopg2.extensions.cursor, policy: Policy, now: datetime) -> CheckResult:
    counts = expired_rows(cur, policy, now)
    return expect_counts("retention", {f"expired_rows.{rule}": n for rule, n in counts.items()})


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
