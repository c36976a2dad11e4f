"""Checks over the primary database: retention, legal holds, erasure residue, erasure deadlines.

Each check reads the database as it is now, not what the DAGs reported: a check
that read the executors' own counts back would only prove they agree with themselves.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg2.extensions
import psycopg2.extras
from psycopg2 import sql

from lethe import holds, residue
from lethe.audit import suites
from lethe.audit.limits import STALE_AFTER_HOURS
from lethe.db import table as lethe_table
from lethe.erasure import lifecycle, sweep
from lethe.policy.model import Policy
from lethe.pseudonym import folded_subject_pseudonym, pseudonym, subject_pseudonym
from lethe.quality import CheckResult, expect_counts, merge
from lethe.relations import ForeignKey, fold_sql, key_folds_case, key_text_is_canonical, relation

log = logging.getLogger(__name__)

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


def sql_checks(
    db_url: str,
    policy: Policy,
    now: datetime,
    stale_after: timedelta = STALE_AFTER,
    only: set[str] | None = None,
    run_name: str = "audit",
) -> dict[str, CheckResult]:
    """The audit's SQL suites (retention, erasure_residue, erasure_deadlines) run in PostgreSQL by a GX
    Checkpoint (lethe.audit.checkpoint); suite name -> result. Reads committed data only; first rewrites
    Lethe's held_pseudonyms (lethe.holds.record_held_pseudonyms), which the retention suite reads."""
    from lethe.audit import checkpoint
    from lethe.db import transaction
    from lethe.retention.catalog import foreign_keys

    with transaction(db_url) as cur:
        fks = foreign_keys(cur)
        # a citext key: holds compared in its type (a hold on 'Anna@x' holds her row spelt 'anna@x')
        key_type = None if key_text_is_canonical(cur, policy) else holds.key_type(cur, policy)
        # active holds' keyed pseudonyms, so the SQL allows a held person's rows whose link retention cut before
        # the hold (written with the key here: the suites take no parameters and PostgreSQL has no key)
        holds.record_held_pseudonyms(cur, policy)
    results = checkpoint.run(db_url, policy, fks, now, stale_after, run_name, only, key_type)
    if suites.RETENTION in results:
        with transaction(db_url) as cur:
            add_cut_link_rows(results[suites.RETENTION], cut_link_expired(cur, policy, fks, key_type))
    return results


def cut_link_expired(
    cur: psycopg2.extensions.cursor,
    policy: Policy,
    fks: list[ForeignKey],
    key_type: str | None = None,
    key: bytes | None = None,
) -> dict[str, int | None]:
    """Per rule reading an event clock on a table whose link a rule cuts (suites.keyed_clocks): its rows with the link
    cut that its last run should have removed or anonymised, each recognised by its keyed pseudonym among the people
    whose event clock may have started (lethe.retention.links.load, as the executor recognises them). Their keys
    and pseudonyms live in a temporary table of this transaction only. `key_type`: as sql_checks passes it."""
    from lethe.retention import links

    rules = [(t, r) for t, r in policy.rules() if suites.keyed_clocks(policy, t, r)]
    if not rules:
        return {}
    people = links.load(cur, policy, key)
    if not people.subjects:
        return {r.name: 0 for _, r in rules}
    cur.execute(
        sql.SQL("CREATE TEMPORARY TABLE {} (k text NOT NULL, p text NOT NULL) ON COMMIT DROP").format(
            sql.Identifier(suites.LINKS)
        )
    )
    psycopg2.extras.execute_values(
        cur,
        sql.SQL("INSERT INTO pg_temp.{} (k, p) VALUES %s").format(sql.Identifier(suites.LINKS)).as_string(cur),
        list(zip(people.subjects, people.pseudonyms, strict=True)),
    )
    # each cut-link row looks its pseudonym up: by index, not a scan of every person per row
    cur.execute(sql.SQL("CREATE INDEX ON pg_temp.{} (p)").format(sql.Identifier(suites.LINKS)))
    cur.execute(sql.SQL("ANALYZE pg_temp.{}").format(sql.Identifier(suites.LINKS)))
    type_ = holds.key_type(cur, policy)
    counts: dict[str, int | None] = {}
    for table, rule in rules:
        query = suites.expired_rows_query(policy, table, rule, fks, key_type, links_key_type=type_)
        cur.execute("SAVEPOINT lethe_cut_link_check")
        try:
            cur.execute(f"SELECT count(*) FROM ({query}) e")  # noqa: S608  (generated SQL, no parameters)
            counts[rule.name] = int(cur.fetchone()[0])  # type: ignore[index]
        except psycopg2.Error as exc:  # one check fails, as a GX expectation whose query fails (no message: data)
            cur.execute("ROLLBACK TO SAVEPOINT lethe_cut_link_check")
            log.warning("expired_rows.%s: the cut-link rows' query failed (SQLSTATE %s)", rule.name, exc.pgcode)
            counts[rule.name] = None
    return counts


def add_cut_link_rows(result: CheckResult, counts: dict[str, int | None]) -> None:
    """The cut-link rows of cut_link_expired added to their rule's expired_rows check (`cut_link_rows` beside);
    a rule whose cut-link query failed fails its check."""
    for check in result.checks:
        kind, _, rule = check["name"].partition(".")
        if kind != "expired_rows" or rule not in counts:
            continue
        n = counts[rule]
        check["cut_link_rows"] = n
        if n is None:
            check["success"] = False
            check["error"] = "the check's query failed: see the task log"
            continue
        if check["observed"] is not None:
            check["observed"] += n
        if n:
            check["success"] = False
    result.success = all(c["success"] for c in result.checks)


def retention_result(sql_result: CheckResult, runs: dict[str, LastRun], stale_after: timedelta) -> CheckResult:
    """The retention suite's checks with what the ledger says of each rule's last run beside them."""
    for check in sql_result.checks:
        kind, _, rule = check["name"].partition(".")
        last = runs.get(rule)
        if kind == "stale":
            check["details"] = {
                "last_run_as_of": last.as_of.isoformat() if last else None,
                "stale_after_hours": stale_after.total_seconds() / 3600,
            }
        elif kind == "expired_rows" and last is not None:
            check["details"] = {
                "cutoff": last.cutoff.isoformat(),
                "awaiting_aggregation": last.awaiting_aggregation,
            }
    return sql_result


def check_retention(
    db_url: str,
    policy: Policy,
    now: datetime,
    stale_after: timedelta = STALE_AFTER,
    sql_result: CheckResult | None = None,
) -> CheckResult:
    """Two alarms per rule, both SQL of the audit's own (lethe.audit.suites) run by GX in PostgreSQL:
    `stale.<rule>` (no completed run within `stale_after` of `now`) and `expired_rows.<rule>` (rows
    its last run should have removed or anonymised are still there, judged as of that run's cutoff)."""
    from lethe.db import transaction

    if sql_result is None:
        sql_result = sql_checks(db_url, policy, now, stale_after, {"retention"})["retention"]
    with transaction(db_url) as cur:
        runs = last_runs(cur)
    return retention_result(sql_result, runs, stale_after)


def held_rows(cur: psycopg2.extensions.cursor, policy: Policy, key: bytes | None = None) -> dict[str, dict[str, int]]:
    """Rows per table of each person under an active hold: hold id -> table -> rows. Her rows are those naming
    her by the subject key and, on a table whose link a retention rule cuts, those whose link is cut and that
    name her by her keyed pseudonym alone (holds.held_pseudonym_pairs; `key`: the pseudonym key, default
    lethe.connections.pseudonym_key_or_local(), read only when such a table and an active hold exist)."""
    counts: dict[str, dict[str, int]] = {}
    key_type = sql.SQL(holds.key_type(cur, policy))
    pairs = holds.held_pseudonym_pairs(cur, policy, key)
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
        cut = rule.link_pseudonym
        if cut is None or not pairs:
            continue
        # a row with its link cut is hers by her pseudonym alone (a row still linked was counted above)
        cur.execute(
            sql.SQL(
                "SELECT p.hold_id, count(*) FROM {table} t"
                " JOIN unnest(%s::bigint[], %s::text[]) AS p(hold_id, pseudonym) ON t.{c} = p.pseudonym"
                " WHERE t.{s} IS NULL GROUP BY p.hold_id"
            ).format(table=relation(table), c=sql.Identifier(cut), s=sql.Identifier(rule.subject)),
            ([h for h, _ in pairs], [p for _, p in pairs]),
        )
        for hold_id, n in cur.fetchall():
            tables = counts.setdefault(str(hold_id), {})
            tables[table] = tables.get(table, 0) + int(n)
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


def tombstones_of(cur: psycopg2.extensions.cursor) -> tuple[set[str], set[str]]:
    cur.execute("SELECT subject_pseudonym, identifier_pseudonyms FROM erasure_tombstones")
    subjects: set[str] = set()
    identifiers: set[str] = set()
    for subject, idents in cur.fetchall():
        subjects.add(subject)
        identifiers.update(idents or [])
    return subjects, identifiers


def erasure_residue(
    cur: psycopg2.extensions.cursor,
    policy: Policy,
    key: bytes,
    tombstones: tuple[set[str], set[str]] | None = None,
) -> dict[str, int]:
    """Rows still linked to an erased person, per table, and their identifiers left in subject tables
    (matched by keyed pseudonym in Python: the database never gets the key). `tombstones`: (subject,
    identifier pseudonyms) from elsewhere (the live primary's, for a restored copy); default: this database's."""
    subjects, identifier_pseudonyms = tombstones or tombstones_of(cur)
    counts: dict[str, int] = {}
    linked = {t: r.subject for t, r in policy.tables.items() if r.subject is not None}
    # Pseudonyms are keyed HMACs, so the match runs here in Python over the subjects present. A citext key is
    # also matched in its case-folded spelling (the tombstone keeps its pseudonym): her rows may come back spelt
    # in a case none of hers stored, and with no row in her stored spelling left to find them by.
    fold = key_folds_case(cur, policy)
    cur.execute(
        sql.SQL(" UNION ").join(
            sql.SQL("SELECT DISTINCT {s}::text, {f} FROM {t} WHERE {s} IS NOT NULL").format(
                s=sql.Identifier(s),
                t=relation(t),
                f=fold_sql(sql.Identifier(s)) if fold else sql.SQL("NULL::text"),
            )
            for t, s in linked.items()
        )
    )
    erased_ids = sorted(
        {
            uid
            for uid, folded in cur.fetchall()
            if subject_pseudonym(key, uid) in subjects
            or (folded is not None and folded_subject_pseudonym(key, folded) in identifier_pseudonyms)
        }
    )
    # compared in the key's type: a row spelling an erased citext key in another case is hers too
    key_type = sql.SQL(holds.key_type(cur, policy) if erased_ids else "text")
    for table, subject in linked.items():
        n = 0
        if erased_ids:
            cur.execute(
                sql.SQL("SELECT count(*) FROM {t} WHERE {s} = ANY(%s::text[]::{k}[])").format(
                    t=relation(table), s=sql.Identifier(subject), k=key_type
                ),
                (erased_ids,),
            )
            n = int(cur.fetchone()[0])  # type: ignore[index]
        counts[f"erased_subject_rows.{table}"] = n
    for table, rule in policy.tables.items():
        cut = rule.link_pseudonym  # rows whose link retention cut name their person by the pseudonym alone
        if cut and subjects:
            cur.execute(
                sql.SQL("SELECT count(*) FROM {t} WHERE {c} = ANY(%s::text[])").format(
                    t=relation(table), c=sql.Identifier(cut)
                ),
                (sorted(subjects),),
            )
            counts[f"erased_subject_rows.{table}"] += int(cur.fetchone()[0])  # type: ignore[index]
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


def check_erasure(
    db_url: str, policy: Policy, key: bytes, now: datetime, sql_result: CheckResult | None = None
) -> CheckResult:
    """identifier_kept_after_completion in SQL (GX in PostgreSQL); the keyed-pseudonym counts on a frame."""
    from lethe.db import transaction

    if sql_result is None:
        sql_result = sql_checks(db_url, policy, now, only={"erasure_residue"})["erasure_residue"]
    with transaction(db_url) as cur:
        keyed = expect_counts("erasure_residue_keyed", erasure_residue(cur, policy, key))
    return merge("erasure_residue", sql_result, keyed)


def erasure_residue_scan(
    cur: psycopg2.extensions.cursor, policy: Policy, key: bytes, tombstones: tuple[set[str], set[str]] | None = None
) -> tuple[dict[str, int], dict[str, Any]]:
    """Rows where an erased person is still found by value, in any text-like column of any table.

    The scanner (lethe.residue) matches every spelling in the data by its keyed pseudonym against
    the tombstones, so emails in any case, phones in any format, handles, names, cookies and IPs are
    found without a raw value and without the eraser's traversal. Not counted as residue: columns
    the policy keeps for kept rows (`erasure.keep`), rows of a person under an active legal hold
    (their redaction waits for the release), and Lethe's own erasure records.
    """
    _, identifiers = tombstones or tombstones_of(cur)
    found: dict[str, int] = {}
    allowed: dict[str, int] = {}
    if identifiers:
        index = residue.KeyedIndex(key, frozenset(identifiers))
        records = {t for t, r in policy.tables.items() if r.purpose == "erasure_record"}
        kept = {t: set(r.erasure.keep) for t, r in policy.tables.items() if r.erasure}
        names = {t: {c for c, cls in r.columns.items() if cls == "name"} for t, r in policy.tables.items()}
        tables = [
            t
            for t in residue.text_tables(cur, residue.policy_schemas(cur, policy), policy.tables)
            if t.name not in records
        ]
        hits = list(residue.scan_rows(cur, tables, index, sweep.subject_links(policy)))

        # compared in the key's type, as the erasure sweep leaves them: a hold on a citext key in one spelling
        # holds her rows spelt in any other case; a row whose link was cut is held by her keyed pseudonym
        held = sweep.held_people(cur, policy, hits, key)
        for hit in hits:
            owner = sweep.owner_of(hit)
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


def check_deadlines(
    db_url: str, now: datetime, warn_days: int = 7, sql_result: CheckResult | None = None
) -> CheckResult:
    """Open erasure requests past their due date fail the audit (SQL in PostgreSQL through GX); those due
    within a week, and overdue ones paused by a legal hold, are counted beside it."""
    from lethe.db import transaction
    from lethe.policy import load_policy

    if sql_result is None:
        sql_result = sql_checks(db_url, load_policy(), now, only={"erasure_deadlines"})["erasure_deadlines"]
    with transaction(db_url) as cur:
        cur.execute(
            "SELECT count(*) FROM erasure_requests WHERE status = ANY(%s) AND due_at >= %s AND due_at < %s",
            (list(OPEN_STATUSES), now, now + timedelta(days=warn_days)),
        )
        due_soon = int(cur.fetchone()[0])  # type: ignore[index]
        held = overdue_requests(cur, now, ("held",))
    for check in sql_result.checks:
        if check["name"] == "overdue_erasure_requests":
            check["details"] = {"due_within_days": warn_days, "due_soon": due_soon, "overdue_but_held": held}
    return sql_result
