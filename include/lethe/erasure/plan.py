"""The erasure plan: per request, what happens to each table's rows, as counts.

A plan is plain data (no identifier in it): it is stored in the request's
`detail`, printed by a dry run and written into the certificate. It is built
inside the same transaction that executes it, so the counts describe the rows
actually touched.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psycopg2.extensions
from lethe import residue
from lethe.db import table as lethe_table
from lethe.erasure import discovery
from lethe.erasure.discovery import Graph, Subject
from lethe.holds import HOLDS
from lethe.policy import Policy
from lethe.pseudonym import pseudonym, subject_pseudonym
from lethe.relations import owners_join
from psycopg2 import sql

HOLD_REASON = "An active legal hold on the person keeps every row of the person until it is released."
OUTCOMES = ("erased", "held", "no_data", "already_erased", "same_subject", "dry_run")


@dataclass
class Work:
    """One request being processed: what was found and what is (to be) done. Holds the raw
    identifier in memory only; `as_detail()` is what leaves the task."""

    request_id: str
    kind: str
    identifier: str
    subject: Subject | None = None
    outcome: str = "no_data"
    pseudonym: str | None = None
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    redactions: dict[str, int] = field(default_factory=dict)
    holds: list[int] = field(default_factory=list)
    same_as: str | None = None
    footprint: dict[str, int] = field(default_factory=dict)  # the scanner's rows per table.column
    residue: dict[str, int] = field(default_factory=dict)  # action:table.column -> rows handled after the plan

    @property
    def rows(self) -> dict[str, int]:
        return {t: int(v["rows"]) for t, v in self.tables.items()}

    def as_detail(self) -> dict[str, Any]:
        detail: dict[str, Any] = {
            "outcome": self.outcome,
            "tables": self.tables,
            "redactions": self.redactions,
            "rows_total": sum(self.rows.values()),
        }
        if self.holds:
            detail["legal_holds"] = self.holds
        if self.same_as:
            detail["same_subject_as"] = self.same_as
        if self.footprint:
            detail["footprint"] = self.footprint
        if self.residue:
            detail["residue"] = self.residue
        return detail


def table_entry(policy: Policy, table: str, rows: int, held: bool) -> dict[str, Any]:
    rule = policy.tables[table]
    erasure = rule.erasure
    assert erasure is not None
    if held:
        return {
            "action": "held",
            "rows": rows,
            "legal_basis": policy.tables["legal_holds"].legal_basis
            if "legal_holds" in policy.tables
            else "legal_obligation",
            "retained_because": HOLD_REASON,
        }
    entry: dict[str, Any] = {"action": erasure.action, "rows": rows}
    if erasure.action != "delete":
        entry["legal_basis"] = rule.legal_basis
        entry["retained_because"] = erasure.retained_because
    if erasure.columns:
        entry["columns"] = dict(erasure.columns)
    if erasure.keep:  # the personal columns a kept row keeps, each with its reason (the certificate lists them)
        entry["kept_columns"] = dict(erasure.keep)
    return entry


def tombstone_match(cur: psycopg2.extensions.cursor, key: bytes, kind: str, identifier: str) -> bool:
    """Whether a tombstone already records this identifier (the person was erased before)."""
    p = pseudonym(key, kind, identifier)
    spellings = [p]
    norm = residue.normalise(kind, identifier) if kind != "user_id" else None
    if norm:  # the scanner's spelling (a phone in another format, an email in another case)
        spellings.append(residue.keyed(key, kind, norm))
    cur.execute(
        sql.SQL("SELECT 1 FROM {} WHERE subject_pseudonym = %s OR identifier_pseudonyms && %s::text[] LIMIT 1").format(
            lethe_table("erasure_tombstones")
        ),
        (p, spellings),
    )
    return cur.fetchone() is not None


def active_holds(cur: psycopg2.extensions.cursor, owners: list[str], key_type: str) -> dict[str, list[int]]:
    """Owner -> ids of the active legal holds on them. Holds name their subject by key value, as text: the database
    compares it with the owner in the key's type (`key_type`), so a hold on a citext key in any case is hers."""
    cur.execute(
        sql.SQL(
            "SELECT o.owner, array_agg(DISTINCT h.hold_id ORDER BY h.hold_id) FROM {} h {}"
            " WHERE h.released_at IS NULL GROUP BY o.owner"
        ).format(
            lethe_table(HOLDS),
            owners_join(sql.SQL("h.subject_key::{}").format(sql.SQL(key_type)), key_type, sql.Placeholder()),
        ),
        (list(owners),),
    )
    return {str(u): [int(h) for h in ids] for u, ids in cur.fetchall()}


def build(
    cur: psycopg2.extensions.cursor, policy: Policy, graph: Graph, key: bytes, works: list[Work]
) -> dict[tuple[str, str], list[tuple[tuple[Any, ...], str, set[str]]]]:
    """Fill each Work with its outcome and per-table plan; return the free-text mentions to redact.

    Leaves the lethe_erase_<table> temp tables in the transaction for the executor.
    """
    found = discovery.resolve(cur, policy, [(w.kind, w.identifier) for w in works])
    first_for: dict[str, Work] = {}
    for work, person in zip(works, found, strict=True):
        if person is None:
            work.outcome = "already_erased" if tombstone_match(cur, key, work.kind, work.identifier) else "no_data"
            continue
        work.pseudonym = subject_pseudonym(key, person.user_id)
        if person.user_id in first_for:  # two requests in one batch name the same person
            work.outcome, work.same_as = "same_subject", first_for[person.user_id].request_id
            continue
        person.pseudonym = work.pseudonym
        work.subject, work.outcome = person, "erased"
        first_for[person.user_id] = work

    owners = sorted(first_for)
    holds = active_holds(cur, owners, graph.key_type) if owners else {}
    per_owner: dict[str, dict[str, int]] = {}
    if owners:  # the scanner's footprint, before anything goes: what the dry run shows by table and column
        prints = residue.footprints(cur, policy, owners, key)
        findings = residue.scan(cur, policy, residue.PlainIndex(prints))
        scanned = residue.found_columns(cur, policy, findings)
        for fp in prints:
            subject = first_for[fp.user_id].subject
            assert subject is not None
            subject.footprint = fp
            subject.scanned = scanned
            first_for[fp.user_id].footprint = findings.get(fp.user_id, {})
        discovery.materialise(cur, graph, policy, owners, [subject_pseudonym(key, o) for o in owners])
        per_owner = discovery.rows_per_owner(cur, graph)
    erasing = [w.subject for w in first_for.values() if w.subject and w.subject.user_id not in holds]
    mentions = discovery.find_mentions(cur, graph, policy, [p for p in erasing if p is not None]) if erasing else {}
    redactions: dict[str, Counter[str]] = {}
    for (table, column), hits in mentions.items():
        for _pk, _text, mentioned in hits:
            for owner in mentioned:
                redactions.setdefault(owner, Counter())[f"{table}.{column}"] += 1

    for owner, work in first_for.items():
        held = owner in holds
        if held:
            work.outcome, work.holds = "held", holds[owner]
        counts = per_owner.get(owner, {})
        order = [*graph.deletion_order, *graph.referenced]
        work.tables = {t: table_entry(policy, t, counts[t], held) for t in order if counts.get(t)}
        work.redactions = dict(sorted(redactions.get(owner, Counter()).items()))
    return mentions
