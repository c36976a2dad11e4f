"""What an erasure's own statements made the database write elsewhere: triggers and rules.

The sweep and the in-transaction residue check read only where the pass before the erasure found the
people, since the erasure itself only deletes and masks. A trigger does not care: `AFTER DELETE ON users
... INSERT INTO users_audit SELECT OLD.*` (or `to_jsonb(OLD)`) copies the person into a table the pass
never saw them in, in the erasure's own transaction. So, before the commit, the server's per-transaction
counts (`pg_stat_xact_user_tables`) say which tables the transaction wrote that the erasure's statements
do not write by design (any table it inserted into; any table it updated outside its own targets), and
only the rows this transaction wrote there are read (`residue.scan_rows(since=...)`). Nothing written
elsewhere, the common case, costs one catalog read.

What is found there is erased like any residue when the policy gives the table an erasure rule
(lethe.erasure.sweep); otherwise the erasure fails before its commit, naming the tables, columns and
triggers, never a value: a whole copy of the person's row holds more than the scanner can match.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import psycopg2.extensions
from lethe import residue
from lethe.db import lethe_schema
from lethe.erasure import discovery, sweep
from lethe.erasure.discovery import ErasureGraphError, Graph
from lethe.policy import Policy
from lethe.relations import policy_oids

log = logging.getLogger(__name__)


class ErasureSideEffectError(ErasureGraphError):
    """The database copied a person being erased into a table no erasure rule covers (names only, no value)."""


def own_tables(policy: Policy, graph: Graph, people: Iterable[Any]) -> set[str]:
    """The policy's tables the erasure's statements update by design: the plan's, the free-text columns' and
    those where the sweep may mask (every table of the policy when a person has no scanner pass)."""
    only = sweep.scanned_columns(list(people))
    swept = set(policy.tables) if only is None else set(only)
    return {*graph.tables, *graph.referenced, *(t for t, _ in discovery.free_text_columns(policy)), *swept}


def since(cur: psycopg2.extensions.cursor) -> int:
    """This transaction's id (32 bits, as `xmin` holds it): the rows it wrote have this one or a later one."""
    cur.execute("SELECT pg_current_xact_id()::xid::text::bigint")
    return int(cur.fetchone()[0])  # type: ignore[index]


def written_elsewhere(cur: psycopg2.extensions.cursor, policy: Policy, own: set[str]) -> list[residue.Table]:
    """The tables with text-like columns (partitioned ones whole) this transaction inserted rows into, or
    updated rows of outside `own`, in any schema but Lethe's and the temporary ones. Without `track_counts`
    the server keeps no counts: every table."""
    records = {t for t, rule in policy.tables.items() if rule.purpose == "erasure_record"}
    own_oids = set(policy_oids(cur, own))
    cur.execute("SELECT current_setting('track_counts')::bool")
    if cur.fetchone()[0]:  # type: ignore[index]
        cur.execute(
            "SELECT DISTINCT coalesce(pg_partition_root(s.relid), s.relid)::oid, n.nspname, c.relname"
            " FROM pg_stat_xact_user_tables s"
            " JOIN pg_class c ON c.oid = coalesce(pg_partition_root(s.relid), s.relid)"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE (s.n_tup_ins > 0 OR (s.n_tup_upd > 0 AND NOT c.oid = ANY(%s::oid[])))"
            " AND n.nspname <> %s AND n.nspname NOT LIKE 'pg\\_temp\\_%%'",
            (sorted(own_oids), lethe_schema()),
        )
    else:
        cur.execute(
            "SELECT c.oid, n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND n.nspname <> %s"
            " AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%%'",
            (lethe_schema(),),
        )
    written = {(schema, relname) for _, schema, relname in cur.fetchall()}
    if not written:
        return []
    tables = residue.text_tables(cur, sorted({s for s, _ in written}), policy.tables)
    return [t for t in tables if (t.schema, t.relname) in written and t.name not in records]


def covered(policy: Policy, table: residue.Table) -> bool:
    """The policy says how to erase the person in this table (the sweep's rules apply)."""
    rule = policy.tables.get(table.name)
    return rule is not None and rule.erasure is not None


def triggers(cur: psycopg2.extensions.cursor) -> list[str]:
    """`table.trigger` (or `table.rule`) of every enabled user trigger and rule on the tables this transaction
    wrote: what may have copied the person."""
    cur.execute(
        "WITH w AS (SELECT relid FROM pg_stat_xact_user_tables WHERE n_tup_ins + n_tup_upd + n_tup_del > 0)"
        " SELECT t.tgrelid::regclass::text || '.' || t.tgname FROM pg_trigger t"
        " WHERE NOT t.tgisinternal AND t.tgenabled <> 'D' AND t.tgrelid IN (SELECT relid FROM w)"
        " UNION SELECT r.ev_class::regclass::text || '.' || r.rulename FROM pg_rewrite r"
        " WHERE r.rulename <> '_RETURN' AND r.ev_enabled <> 'D' AND r.ev_class IN (SELECT relid FROM w)"
        " ORDER BY 1"
    )
    return [r[0] for r in cur.fetchall()]


def handle(
    cur: psycopg2.extensions.cursor,
    policy: Policy,
    graph: Graph,
    people: list[discovery.Subject],
) -> dict[str, dict[str, int]]:
    """Erase what the transaction's triggers copied of `people` into tables the policy covers; per person,
    `action:table.column` -> rows (as the sweep counts). Raise ErasureSideEffectError, before any commit,
    when one of them is in a table no erasure rule covers."""
    prints = [p.footprint for p in people if p.footprint]
    if not prints:
        return {}
    tables = written_elsewhere(cur, policy, own_tables(policy, graph, people))
    if not tables:
        return {}
    log.info(
        "erasure wrote rows outside its own targets (triggers, rules): reading %s", ", ".join(t.name for t in tables)
    )
    index = residue.PlainIndex(prints)
    ids = {p.user_id for p in people}
    first = since(cur)
    outside = [t for t in tables if not covered(policy, t)]
    if outside:
        found, _ = sweep.left(cur, policy, index, ids, tables=outside, since=first)
        if found:
            raise ErasureSideEffectError(
                f"the erasure's own statements made the database copy the person into {', '.join(sorted(found))}"
                f" (triggers and rules on the tables it wrote: {', '.join(triggers(cur)) or 'none found'});"
                " nothing was committed. Give each of those tables a rule with an erasure action in the policy,"
                " or make the trigger not copy personal data when Lethe erases (e.g. a WHEN condition on"
                " current_user), then retry the request"
            )
    inside = [t for t in tables if covered(policy, t)]
    return sweep.sweep(cur, policy, index, ids, tables=inside, since=first) if inside else {}


def left(
    cur: psycopg2.extensions.cursor, policy: Policy, graph: Graph, people: list[discovery.Subject]
) -> tuple[dict[str, int], dict[str, int]]:
    """For the in-transaction check: (rows per `table.column` of the tables written elsewhere that still hold
    the people, outside what is allowed; allowed rows), reading only the rows this transaction wrote."""
    prints = [p.footprint for p in people if p.footprint]
    tables = written_elsewhere(cur, policy, own_tables(policy, graph, people)) if prints else []
    if not tables:
        return {}, {}
    return sweep.left(
        cur, policy, residue.PlainIndex(prints), {p.user_id for p in people}, tables=tables, since=since(cur)
    )
