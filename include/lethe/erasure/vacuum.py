"""After an erasure commits: VACUUM the tables it changed, so the person's old row versions leave the pages.

A DELETE or UPDATE in PostgreSQL leaves the old row version (a dead tuple) in the table's pages and
its keys in the indexes until a vacuum removes them; autovacuum comes when a table's dead tuples pass
a share of its size, which for a large table can be weeks. The erase step vacuums every table its
requests deleted from, rewrote or redacted, once per run, after the commit and outside any transaction
(VACUUM cannot run inside one), with INDEX_CLEANUP ON so that index entries (an email in a unique
index) go too, not only heap tuples. What a vacuum cannot reach (WAL, base backups, replicas' lag) is
in docs/erasure.md, "What stays physically".
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from lethe.db import connect
from psycopg2 import sql

WRITES = ("deleted", "masked")  # residue sweep actions that changed a row; "kept" and "waiting_for_hold" did not


def touched(details: Iterable[dict[str, Any]]) -> list[str]:
    """The tables an erasure changed rows of, from its requests' stored detail (tables, redactions, residue)."""
    tables: set[str] = set()
    for detail in details:
        for table, entry in (detail.get("tables") or {}).items():
            if entry.get("action") != "held":
                tables.add(table)
        tables |= {column.split(".", 1)[0] for column in detail.get("redactions") or {}}
        for key in detail.get("residue") or {}:
            action, _, column = key.partition(":")
            if action in WRITES:
                tables.add(column.split(".", 1)[0])
    return sorted(tables)


def vacuum(db_url: str, tables: list[str]) -> list[str]:
    """VACUUM (INDEX_CLEANUP ON) each table, each in its own statement outside a transaction; return them."""
    done: list[str] = []
    if not tables:
        return done
    conn = connect(db_url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            for table in tables:
                cur.execute("SELECT to_regclass(quote_ident(%s)) IS NOT NULL", (table,))
                if not cur.fetchone()[0]:  # type: ignore[index]
                    continue
                cur.execute(sql.SQL("VACUUM (INDEX_CLEANUP ON) {}").format(sql.Identifier(table)))
                done.append(table)
    finally:
        conn.close()
    return done
