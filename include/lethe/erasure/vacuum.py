"""After an erasure commits: VACUUM the tables it changed, so the person's old row versions leave the pages.

A DELETE or UPDATE in PostgreSQL leaves the old row version (a dead tuple) in the table's pages and
its keys in the indexes until a vacuum removes them; autovacuum comes when a table's dead tuples pass
a share of its size, which for a large table can be weeks. The erase step vacuums every table its
requests deleted from, rewrote or redacted, once per run, after the commit and outside any transaction
(VACUUM cannot run inside one), with INDEX_CLEANUP ON so that index entries (an email in a unique
index) go too, not only heap tuples. What a vacuum cannot reach (WAL, base backups, replicas' lag) is
in docs/erasure.md, "What stays physically".

A VACUUM reads every index of what it vacuums whole, however few rows died: for a partitioned table,
every partition's. So the erasure's transaction records, before its commit, which relations it wrote
rows of (`written`: the server's per-transaction counts, leaf partitions apart), and only those are
vacuumed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg2.errors
import psycopg2.extensions
from lethe.db import connect
from lethe.relations import regclass_literal, relation
from psycopg2 import sql

WRITES = ("deleted", "masked")  # residue sweep actions that changed a row; "kept" and "waiting_for_hold" did not


def touched(details: Iterable[dict[str, Any]]) -> list[str]:
    """The tables an erasure changed rows of, from its requests' stored detail (tables, redactions, residue)."""
    tables: set[str] = set()
    for detail in details:
        for table, entry in (detail.get("tables") or {}).items():
            if entry.get("action") != "held":
                tables.add(table)
        # `table.column`, the table maybe `schema.table`: the column is what follows the last dot
        tables |= {column.rsplit(".", 1)[0] for column in detail.get("redactions") or {}}
        for key in detail.get("residue") or {}:
            action, _, column = key.partition(":")
            if action in WRITES:
                tables.add(column.rsplit(".", 1)[0])
    return sorted(tables)


def written(cur: psycopg2.extensions.cursor, tables: list[str]) -> list[str]:
    """The relations of `tables` (`schema.relname`; a partitioned table's leaf partitions) that the current
    transaction inserted, updated or deleted rows of, from pg_stat_xact_user_tables.

    Without `track_counts` the server keeps no such counts: every table, whole.
    """
    if not tables:
        return []
    cur.execute("SELECT current_setting('track_counts')::bool")
    if not cur.fetchone()[0]:  # type: ignore[index]
        return sorted(tables)
    cur.execute(
        "SELECT DISTINCT s.schemaname || '.' || s.relname"
        " FROM unnest(%s::text[]) t(lit) JOIN pg_stat_xact_user_tables s"
        " ON to_regclass(t.lit) IN (s.relid, pg_partition_root(s.relid))"
        " WHERE s.n_tup_ins + s.n_tup_upd + s.n_tup_del > 0",
        ([regclass_literal(t) for t in tables],),
    )
    return sorted(r[0] for r in cur.fetchall())


def targets(details: Iterable[dict[str, Any]]) -> list[str]:
    """What to vacuum after a run: the relations each erasure recorded as written (`vacuum` in its detail);
    for a detail from before that record, every table it changed, whole."""
    out: set[str] = set()
    for detail in details:
        recorded = detail.get("vacuum")
        out |= set(recorded) if recorded is not None else set(touched([detail]))
    return sorted(out)


def vacuum(db_url: str, tables: list[str]) -> list[str]:
    """VACUUM (INDEX_CLEANUP ON) each table (a policy's name or `schema.relname`), each in its own statement
    outside a transaction; return them."""
    done: list[str] = []
    if not tables:
        return done
    conn = connect(db_url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            for table in tables:
                try:
                    cur.execute(sql.SQL("VACUUM (INDEX_CLEANUP ON) {}").format(relation(table)))
                except psycopg2.errors.UndefinedTable:
                    # Gone since the erasure wrote it: a partition retention detached (renamed) or dropped. Not
                    # asked beforehand: the purge's commit could come between the question and the VACUUM.
                    continue
                done.append(table)
    finally:
        conn.close()
    return done
