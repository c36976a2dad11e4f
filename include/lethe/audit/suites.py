"""The audit's Great Expectations suites over the primary database, as GX suite JSON.

Each check is an `UnexpectedRowsExpectation`: a query, written here for the audit and run by GX
in PostgreSQL, that returns the rows breaking the check (none when it holds). The queries are the
audit's own reading of the policy, not the retention planner's predicates: a row is past a rule
when the rule's clock (its column, the account's closure, or the end of a consent) started before
the cutoff of the rule's last completed run as the ledger recorded it; a held person's rows, and a
deleting rule's rows that surviving rows still reference, are allowed to stay.

The audit's clock comes from the batch the suites validate: one row (`audit_now`, `stale_after`),
so the suites never change between runs. They are generated from the policy and the database's
foreign keys, deterministically; the copies under `expectations/` are the repository's policy's
(`python -m lethe.audit.suites --write` regenerates them; a test checks they are current).
Queries select a row's key only, and the checkpoint's result format never keeps rows.

A row whose subject link a rule cut (pseudonym_link) names its person by her keyed pseudonym alone, which
PostgreSQL cannot compute. Where a check reads an event clock (account closed, consent ended) on such a table
(`keyed_clocks`), the suite leaves the cut-link rows out and the audit judges them in its own transaction
(lethe.audit.primary.cut_link_expired): the same query over the cut-link rows only, the event's people recognised
through a temporary table of their keys and pseudonyms (`LINKS`, dropped with that transaction), as the retention
executor recognises them through its parameters (lethe.retention.links).
"""

# ruff: noqa: S608
# The suites are SQL text by design (GX runs a query, it takes no parameters): every name from the
# policy goes through _q (a quoted identifier), every value through _lit (a quoted literal), and no
# value read from the data ever does.
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

from lethe.policy.model import Policy, RetentionRule
from lethe.retention.catalog import ForeignKey

SUITES_DIR = Path(__file__).parent / "expectations"
RETENTION = "retention"
RESIDUE = "erasure_residue"
DEADLINES = "erasure_deadlines"
REDACTED = "[redacted]"  # what a `redact` strategy leaves (lethe.retention writes it)
HOLDS = "legal_holds"
HELD_PSEUDONYMS = "held_pseudonyms"  # active holds' keyed pseudonyms, written by the audit (lethe.holds)
LEDGER = "ledger"
REQUESTS = "erasure_requests"
CLOCK = "(SELECT audit_now FROM {batch})"
LINKS = "lethe_audit_links"  # (k, p): event clocks' people, each key spelling with its pseudonym (a temp table)


def _q(name: str) -> str:
    """A double-quoted SQL identifier (the policy's names are checked lower-case words, quoted anyway)."""
    return '"' + name.replace('"', '""') + '"'


def _rel(name: str) -> str:
    """A table as the policy names it, `table` or `schema.table`, each part quoted (as to_regclass reads it)."""
    from lethe.relations import regclass_literal

    return regclass_literal(name)


def _lethe(name: str) -> str:
    """One of Lethe's own tables, qualified with its schema (a platform table of the same name never answers)."""
    from lethe.db import lethe_schema

    return f"{_q(lethe_schema())}.{_q(name)}"


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def last_cutoff(rule: str) -> str:
    """The cutoff the rule's last completed, non-dry run applied, from the ledger (NULL before any)."""
    return (
        f"(SELECT (l.payload->>'cutoff')::timestamptz FROM {_lethe(LEDGER)} l WHERE l.kind = 'retention'"
        f" AND l.payload->>'rule' = {_lit(rule)} AND l.payload ? 'now' AND l.payload ? 'cutoff'"
        " AND NOT coalesce((l.payload->>'dry_run')::boolean, false) ORDER BY l.entry_id DESC LIMIT 1)"
    )


def _row_clock(policy: Policy, rule: RetentionRule) -> str:
    """When a row's clock starts: its `after` column, or the latest of it and `also_after`; for a statutory
    period the first moment of the next financial year (in the policy's time zone) after that."""
    columns = [f"t.{_q(c)}" for c in (rule.after, *rule.also_after)]
    at = columns[0] if len(columns) == 1 else f"greatest({', '.join(columns)})"
    if rule.starts == "end_of_financial_year":
        fy = policy.financial_year
        local, month = f"({at} AT TIME ZONE {_lit(fy.time_zone)})", int(fy.first_month)
        year = f"extract(year FROM {local})::int + CASE WHEN extract(month FROM {local}) >= {month} THEN 1 ELSE 0 END"
        at = f"(make_timestamp({year}, {month}, 1, 0, 0, 0) AT TIME ZONE {_lit(fy.time_zone)})"
    return at


def keyed_clocks(policy: Policy, table: str, rule: RetentionRule) -> bool:
    """The rule's expired_rows check reads an event clock (its own, or a deleting rule's that takes rows from an
    anonymising one) on a table whose link a rule cuts: its cut-link rows are judged by the audit's keyed part."""
    spec = policy.tables[table]
    if spec.link_pseudonym is None:
        return False
    if rule.event:
        return True
    return rule.action == "anonymise" and any(o.event for o in spec.retention if o.action != "anonymise")


def _clock_started(policy: Policy, table: str, rule: RetentionRule, cutoff: str, subject: str | None = None) -> str:
    """`subject`: the row's subject key as SQL (default: its link column)."""
    subject = subject or f"t.{_q(policy.tables[table].subject or '')}"
    if rule.event == "account_closed":
        closed = policy.clock_account_closed()
        return (
            f"EXISTS (SELECT 1 FROM {_rel(closed.table)} a WHERE a.{_q(closed.subject)} = {subject}"
            f" AND a.{_q(closed.column)} < {cutoff})"
        )
    consent = policy.clock_consent_ended()
    ended = ", ".join(f"c.{_q(c)}" for c in consent.ended)
    if rule.consent_purpose:
        return (
            f"EXISTS (SELECT 1 FROM {_rel(consent.table)} c WHERE c.{_q(consent.subject)} = {subject}"
            f" AND c.{_q(consent.purpose)} = {_lit(rule.consent_purpose)} AND least({ended}) < {cutoff})"
        )
    started = f"{_row_clock(policy, rule)} < {cutoff}"
    if rule.unless_consent:
        # Collected without permission: a known person none of whose consents to the purpose was given
        # at or before the row's time and still running then.
        at = f"t.{_q(rule.after)}"
        started = (
            f"({started} AND {subject} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {_rel(consent.table)} c"
            f" WHERE c.{_q(consent.subject)} = {subject} AND c.{_q(consent.purpose)} = {_lit(rule.unless_consent)}"
            f" AND c.granted_at <= {at} AND coalesce(least({ended}) > {at}, true)))"
        )
    return f"coalesce({started}, false)"


def _unheld(policy: Policy, table: str, key_type: str | None = None) -> str | None:
    """Not a row of a person under an active hold. `key_type`: the subject key's SQL type (format_type) when equal
    keys are not equal as text (citext): the hold is compared in that type, so a hold on 'Anna@x' holds her row
    spelt 'anna@x', as the retention executor holds it; None compares the key as text (the committed suites).
    On a table whose link a rule cuts (pseudonym_link), a row naming an active hold's person by her keyed pseudonym
    is hers too: the audit writes those pseudonyms to held_pseudonyms before it runs (lethe.holds)."""
    spec = policy.tables[table]
    subject = spec.subject
    if subject is None:
        return None
    if key_type is not None:
        by_key = (
            f"NOT coalesce(t.{_q(subject)} IN (SELECT h.subject_key::{key_type} FROM {_lethe(HOLDS)} h"
            " WHERE h.released_at IS NULL), false)"
        )
    else:
        by_key = (
            f"NOT coalesce(t.{_q(subject)}::text IN"
            f" (SELECT h.subject_key FROM {_lethe(HOLDS)} h WHERE h.released_at IS NULL), false)"
        )
    cut = spec.link_pseudonym
    if cut is None:
        return by_key
    by_pseudonym = (
        f"NOT coalesce(t.{_q(cut)} IN (SELECT p.subject_pseudonym FROM {_lethe(HELD_PSEUDONYMS)} p"
        f" JOIN {_lethe(HOLDS)} h ON h.hold_id = p.hold_id WHERE h.released_at IS NULL), false)"
    )
    return f"{by_key}\n  AND {by_pseudonym}"


def _unreferenced(table: str, fks: list[ForeignKey]) -> list[str]:
    """No row of any table still points at the row (after a completed run, every row left survives it)."""
    out = []
    for fk in sorted(fks, key=lambda f: (f.child, f.child_columns)):
        if fk.parent != table:
            continue
        join = " AND ".join(f"r.{_q(c)} = t.{_q(p)}" for c, p in zip(fk.child_columns, fk.parent_columns, strict=True))
        out.append(f"NOT EXISTS (SELECT 1 FROM {_rel(fk.child)} r WHERE {join})")
    return out


def _anonymised(rule: RetentionRule, subject: str | None) -> str:
    parts = []
    for column, strategy in rule.columns.items():
        c = f"t.{_q(column)}"
        if strategy in ("null", "pseudonym_link"):  # pseudonym_link: the link cut, the pseudonym beside it
            parts.append(f"{c} IS NULL")
        elif strategy == "redact":
            parts.append(f"({c} IS NULL OR {c} = {_lit(REDACTED)})")
        elif strategy == "unique_redact" and subject:  # "[redacted <subject key>]": unique, names no one
            parts.append(f"({c} IS NULL OR {c} = '[redacted ' || t.{_q(subject)}::text || ']')")
        elif strategy == "truncate_ip":  # no more than the network (/24, /48) is left
            parts.append(f"({c} IS NULL OR masklen({c}) <= CASE family({c}) WHEN 4 THEN 24 ELSE 48 END)")
        else:
            raise ValueError(f"rule {rule.name}: strategy {strategy!r} is not a retention anonymisation")
    return " AND ".join(parts)


def expired_rows_query(
    policy: Policy,
    table: str,
    rule: RetentionRule,
    fks: list[ForeignKey],
    key_type: str | None = None,
    links_key_type: str | None = None,
) -> str:
    """Rows the rule's last run should have deleted or anonymised and that are still here as they were.
    `key_type`: see _unheld. Where the rule reads an event clock on a table whose link a rule cuts (keyed_clocks),
    the rows with their link cut are left out; `links_key_type` (the subject key's SQL type) asks for those rows
    instead, each the person's whose pseudonym it carries in the temporary table LINKS (the audit's keyed part)."""
    spec = policy.tables[table]
    key = next(iter(spec.columns))
    cutoff = last_cutoff(rule.name)
    subject: str | None = None
    where = []
    if keyed_clocks(policy, table, rule):
        link, cut = f"t.{_q(spec.subject or '')}", f"t.{_q(spec.link_pseudonym or '')}"
        if links_key_type is None:
            where.append(f"({link} IS NOT NULL OR {cut} IS NULL)")
        else:
            where += [f"{link} IS NULL", f"{cut} IS NOT NULL"]
            subject = f"(SELECT m.k::{links_key_type} FROM pg_temp.{_q(LINKS)} m WHERE m.p = {cut} LIMIT 1)"
    elif links_key_type is not None:
        raise ValueError(f"rule {rule.name}: no event clock on a table whose link a rule cuts")
    where.append(_clock_started(policy, table, rule, cutoff, subject))
    unheld = _unheld(policy, table, key_type)
    if unheld:
        where.append(unheld)
    if rule.action == "anonymise":
        # Rows a deleting rule of the table takes are that rule's (its own check counts them if left):
        # an earlier rule's whatever references them, a later rule's when nothing does.
        rules = policy.tables[table].retention
        position = rules.index(rule)
        unreferenced = _unreferenced(table, fks)
        for i, other in enumerate(rules):
            if other.action == "anonymise":
                continue
            started = _clock_started(policy, table, other, last_cutoff(other.name), subject)
            if i < position or not unreferenced:
                where.append(f"NOT {started}")
            else:
                where.append(f"NOT ({' AND '.join([started, *unreferenced])})")
        where.append(f"NOT ({_anonymised(rule, policy.tables[table].subject)})")
    else:
        where.extend(_unreferenced(table, fks))
    conditions = "\n  AND ".join(where)
    return f"SELECT t.{_q(key)} FROM {_rel(table)} t\nWHERE {conditions}"


def stale_query(rule: str) -> str:
    """One row when the rule has no completed, non-dry run within `stale_after` of the audit's clock."""
    return (
        "SELECT 1 AS stale FROM (SELECT audit_now, stale_after FROM {batch}) clock\n"
        f"WHERE NOT EXISTS (SELECT 1 FROM {_lethe(LEDGER)} l WHERE l.kind = 'retention'"
        f" AND l.payload->>'rule' = {_lit(rule)}"
        " AND l.payload ? 'now' AND l.payload ? 'cutoff' AND NOT coalesce((l.payload->>'dry_run')::boolean, false)"
        " AND (l.payload->>'now')::timestamptz >= clock.audit_now - clock.stale_after)"
    )


def _where(table: str, rule: RetentionRule) -> str:
    columns = ", ".join(rule.columns) if rule.columns else rule.after
    return f"table {table}, column {columns}"


def _expectation(check: str, query: str, where: str, description: str) -> dict[str, Any]:
    return {
        "type": "unexpected_rows_expectation",
        "description": description,
        "kwargs": {"unexpected_rows_query": query},
        "meta": {"check": check, "where": where},
    }


def _statuses(values: tuple[str, ...]) -> str:
    return ", ".join(_lit(v) for v in values)


def generate(policy: Policy, fks: list[ForeignKey], key_type: str | None = None) -> dict[str, dict[str, Any]]:
    """Suite name -> GX suite JSON (name, expectations, meta), the same for the same policy and keys.
    `key_type`: the subject key's SQL type when its equal values are not equal as text (citext), else None."""
    retention = []
    for table, rule in policy.rules():
        where = _where(table, rule)
        retention.append(
            _expectation(
                f"stale.{rule.name}",
                stale_query(rule.name),
                where,
                f"Rule {rule.name} ({rule.action}, keep {rule.keep} after {rule.after}) completed a run"
                " within stale_after of the audit's clock.",
            )
        )
        retention.append(
            _expectation(
                f"expired_rows.{rule.name}",
                expired_rows_query(policy, table, rule, fks, key_type),
                where,
                f"No unheld row of {table} is past the cutoff of rule {rule.name}'s last completed run"
                + (
                    " with its columns not anonymised."
                    if rule.action == "anonymise"
                    else " (unless rows kept still reference it)."
                ),
            )
        )
    from lethe.audit.primary import DONE_STATUSES, OVERDUE_STATUSES

    deadlines = [
        _expectation(
            "overdue_erasure_requests",
            f"SELECT r.request_id FROM {_lethe(REQUESTS)} r WHERE r.status IN ({_statuses(OVERDUE_STATUSES)})"
            f" AND r.due_at < {CLOCK}",
            "table erasure_requests, column due_at",
            "No open erasure request is past its due date at the audit's clock.",
        )
    ]
    residue = [
        _expectation(
            "identifier_kept_after_completion",
            f"SELECT r.request_id FROM {_lethe(REQUESTS)} r WHERE r.status IN ({_statuses(DONE_STATUSES)})"
            " AND r.identifier IS NOT NULL",
            "table erasure_requests, column identifier",
            "A completed erasure request no longer holds the person's identifier.",
        ),
    ]
    meta = {"generated_from": f"policy {policy.version}", "generator": "lethe.audit.suites"}
    return {
        RETENTION: {"name": RETENTION, "expectations": retention, "meta": meta},
        RESIDUE: {"name": RESIDUE, "expectations": residue, "meta": meta},
        DEADLINES: {"name": DEADLINES, "expectations": deadlines, "meta": meta},
    }


def dumps(suite: dict[str, Any]) -> str:
    return json.dumps(suite, indent=2) + "\n"


def committed(name: str) -> str | None:
    path = SUITES_DIR / f"{name}.json"
    return path.read_text() if path.exists() else None


def build(suite: dict[str, Any]) -> Any:
    """The GX ExpectationSuite of one generated suite."""
    import great_expectations as gx

    expectations = []
    for e in suite["expectations"]:
        # GX prints a hint when a query does not read `{batch}`: only the clock-reading checks do.
        with contextlib.redirect_stdout(io.StringIO()):
            expectations.append(
                gx.expectations.UnexpectedRowsExpectation(
                    unexpected_rows_query=e["kwargs"]["unexpected_rows_query"],
                    description=e["description"],
                    meta=e["meta"],
                )
            )
    return gx.ExpectationSuite(name=suite["name"], expectations=expectations, meta=suite["meta"])


def write(db_url: str, policy_file: str | None = None) -> list[Path]:
    """Regenerate the committed suites from the policy and the foreign keys of the database at `db_url`."""
    from lethe.db import transaction
    from lethe.policy import load_policy
    from lethe.retention.catalog import foreign_keys

    policy = load_policy(policy_file) if policy_file else load_policy()
    with transaction(db_url) as cur:
        fks = foreign_keys(cur)
    SUITES_DIR.mkdir(exist_ok=True)
    paths = []
    for name, suite in generate(policy, fks).items():
        path = SUITES_DIR / f"{name}.json"
        path.write_text(dumps(suite))
        paths.append(path)
    return paths


if __name__ == "__main__":
    import argparse

    from lethe.db import database_url

    parser = argparse.ArgumentParser(
        prog="python -m lethe.audit.suites", description="regenerate the audit's committed GX suites"
    )
    parser.add_argument("--write", action="store_true", help="write include/lethe/audit/expectations/*.json")
    args = parser.parse_args()
    if args.write:
        for p in write(database_url()):
            print(p)
