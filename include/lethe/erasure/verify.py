"""Post-conditions of an erasure, checked with Great Expectations (lethe.quality).

Inside the erasure transaction (before commit): zero rows still linked to the
people by key or foreign key, zero rows holding any of their identifiers,
zero free-text mentions, and rows touched equal to the plan. After commit,
per request: the tombstone and ledger entry exist and the requested
identifier finds nothing. Results are check names and counts, never values.
"""

from __future__ import annotations

from typing import Any

import psycopg2.extensions
from lethe import quality
from lethe import residue as lethe_residue
from lethe.erasure import discovery, indexes, side_effects, sweep
from lethe.erasure.discovery import Graph, Subject
from lethe.policy import Policy
from lethe.pseudonym import normalise
from lethe.relations import relation
from psycopg2 import sql


def residue(cur: psycopg2.extensions.cursor, policy: Policy, graph: Graph, people: list[Subject]) -> dict[str, int]:
    """Rows still pointing at the people, per check name (table and route)."""
    owners = [p.user_id for p in people]
    counts: dict[str, int] = {}
    pseudonyms = [p.pseudonym for p in people if p.pseudonym]
    # the same traversal as the plan, run again (with the pseudonyms that find rows whose link was cut)
    linked = discovery.materialise(cur, graph, policy, owners, pseudonyms if len(pseudonyms) == len(owners) else None)
    for table, n in linked.items():
        counts[f"{table}.linked_by_key"] = n
    # Each compares the expression lethe.erasure.indexes builds its index on (an index lookup when present).
    for table, column, kind in indexes.identifier_columns(policy):
        if kind == "phone":
            values = sorted({normalise("phone", p.identifiers["phone"]) for p in people if p.identifiers.get("phone")})
        else:
            values = sorted({p.identifiers[kind].strip().lower() for p in people if p.identifiers.get(kind)})
        if not values:
            continue
        cur.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE {} = ANY(%s)").format(
                relation(table), indexes.identifier_expression(kind, column)
            ),
            (values,),
        )
        counts[f"{table}.{column}.{kind}"] = int(cur.fetchone()[0])  # type: ignore[index]
    mentions = discovery.find_mentions(cur, graph, policy, people, exclude_linked=False)
    for table, column in discovery.free_text_columns(policy):
        counts[f"{table}.{column}.mentions"] = len(mentions.get((table, column), []))
    return counts


def in_transaction(
    cur: psycopg2.extensions.cursor,
    policy: Policy,
    graph: Graph,
    people: list[Subject],
    planned: dict[str, int],
    done: dict[str, int],
) -> dict[str, Any]:
    """Run both suites; raise DataQualityError (rolling the erasure back) when one fails."""
    left = quality.zero_rows("erasure_residue", residue(cur, policy, graph, people))
    counted = quality.counts_equal("erasure_counts_equal_plan", done, planned)
    summary: dict[str, Any] = {
        "residue": {"success": left.success, "checks": len(left.checks), "failed": left.failures()},
        "counts_equal_plan": {"success": counted.success, "failed": counted.failures()},
    }
    prints = [p.footprint for p in people if p.footprint]
    scanned = None
    if prints:  # by value, anywhere: the scanner, not the plan's traversal
        # Only the columns where the pass before the erasure found the batch: nothing in this transaction
        # writes an identifier (it deletes and masks), and the people's own rows are locked against new
        # children, so the person can appear after the erasure only where they appeared before it.
        only = sweep.scanned_columns(people)
        found, allowed = sweep.left(cur, policy, lethe_residue.PlainIndex(prints), {p.user_id for p in people}, only)
        # And the rows the transaction wrote elsewhere (triggers copying the people): nowhere else to look.
        elsewhere, tolerated = side_effects.left(cur, policy, graph, people)
        for into, more in ((found, elsewhere), (allowed, tolerated)):
            for key, n in more.items():
                into[key] = into.get(key, 0) + n
        scanned = quality.zero_rows("erasure_residue_scan", found)
        summary["residue_scan"] = {"success": scanned.success, "failed": scanned.failed, "allowed": allowed}
    left.raise_if_failed()
    counted.raise_if_failed()
    if scanned:
        scanned.raise_if_failed()
    return summary


def after_commit(cur: psycopg2.extensions.cursor, policy: Policy, requests: list[dict[str, Any]]) -> dict[str, Any]:
    """Per erased request: tombstone present, ledger entry present, identifier finds nobody, counts as planned."""
    counts: dict[str, int] = {}
    observed: dict[str, int] = {}
    expected: dict[str, int] = {}
    erased = [r for r in requests if (r["detail"] or {}).get("outcome") == "erased"]
    found = discovery.resolve(cur, policy, [(r["kind"], r["identifier"]) for r in erased]) if erased else []
    for r, person in zip(erased, found, strict=True):
        rid = r["request_id"]
        cur.execute("SELECT counts FROM erasure_tombstones WHERE request_id = %s", (rid,))
        row = cur.fetchone()
        counts[f"{rid}.tombstone_missing"] = 0 if row else 1
        counts[f"{rid}.identifier_still_resolves"] = 0 if person is None else 1
        cur.execute("SELECT count(*) FROM ledger WHERE kind = 'erasure' AND payload->>'request_id' = %s", (rid,))
        counts[f"{rid}.ledger_entry_missing"] = 0 if int(cur.fetchone()[0]) else 1  # type: ignore[index]
        planned = {t: int(v["rows"]) for t, v in (r["detail"].get("tables") or {}).items()}
        recorded = row[0] if row else {}
        for table, n in planned.items():
            expected[f"{rid}.{table}"] = n
            observed[f"{rid}.{table}"] = int(recorded.get(table, 0))
    left = quality.zero_rows("erasure_after_commit", counts)
    equal = quality.counts_equal("erasure_tombstone_counts", observed, expected)
    return {
        "success": left.success and equal.success,
        "after_commit": {"success": left.success, "checks": len(counts), "failed": left.failures()},
        "tombstone_counts_equal_plan": {"success": equal.success, "failed": equal.failures()},
    }
