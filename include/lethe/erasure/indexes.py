"""Lethe's search indexes on the platform's tables: what makes one person's erasure index-driven.

Without them, the erasure's mention search (`col ILIKE ANY(...)` over every free-text column) and
its post-condition's identifier checks (`lower(email) = ANY(...)`, a phone's digits) read whole
tables. With them they are index lookups:

- a `pg_trgm` GIN index (`gin_trgm_ops`) on each free-text column of the policy
  (`discovery.free_text_columns`), named `lethe_trgm_<table>_<column>`;
- a btree expression index on each identifier column the post-condition compares
  (`identifier_columns`), named `lethe_lower_<table>_<column>` or `lethe_phone_<table>_<column>`,
  on exactly the expression the check uses (`identifier_expression`).

These are the only objects Lethe creates on the platform's tables, and only by an explicit step,
`lethe db indexes` (run after `lethe db migrate`, once the policy names the tables); migrations
never do. Each is built with CREATE INDEX CONCURRENTLY (writes to the table go on), except on a
partitioned table, where PostgreSQL cannot (a plain CREATE INDEX there, which also covers future
partitions). An index left invalid by an interrupted build is dropped and built again. One the
policy no longer asks for (a column no longer free text, a table no longer named) is dropped: it
would cost the platform's writes for nothing. Without pg_trgm (not installable, or no privilege) the
erasure still works: the mention search reads the tables, and says so once in the log.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass

import psycopg2.extensions
from lethe.db import PLATFORM_SCHEMA, connect, lethe_schema
from lethe.policy import Policy
from lethe.relations import regclass_literal, relation, split
from psycopg2 import sql

log = logging.getLogger(__name__)

IDENTIFIER_CLASSES = ("email", "phone", "username")
PREFIX = "lethe_"
_warned: set[str] = set()  # databases whose missing indexes were logged (once per process)


@dataclass(frozen=True)
class Index:
    name: str
    table: str  # as the policy names it
    column: str
    kind: str  # trgm | lower | phone


def index_name(kind: str, table: str, column: str) -> str:
    """`lethe_<kind>_<table>_<column>_<hash>`: the hash of the table and column apart tells `forum_posts.body`
    from `forum.posts_body`; the readable part is shortened to keep within PostgreSQL's 63 bytes."""
    digest = hashlib.sha256(f"{kind}\0{table}\0{column}".encode()).hexdigest()[:8]
    readable = f"{PREFIX}{kind}_{split(table)[1]}_{column}".encode()[:54].decode(errors="ignore")
    return f"{readable}_{digest}"


def identifier_columns(policy: Policy) -> list[tuple[str, str, str]]:
    """(table, column, kind) the erasure's post-condition compares with the people's identifiers:
    identifier-classed columns of the subject table and of tables linked to a subject."""
    out = []
    for table, rule in policy.tables.items():
        if rule.subject is None and table != policy.subject.table:
            continue  # Lethe's own bookkeeping (the open request itself) is not the platform's data
        for column, cls in rule.columns.items():
            if cls in IDENTIFIER_CLASSES:
                out.append((table, column, cls))
    return out


def identifier_expression(kind: str, column: str) -> sql.Composable:
    """The expression the post-condition compares (and its index is built on): a phone's digits and +,
    anything else lower-cased."""
    col = sql.Identifier(column)
    if kind == "phone":
        return sql.SQL("regexp_replace({}, '[^0-9+]', '', 'g')").format(col)
    return sql.SQL("lower({})").format(col)


def wanted(policy: Policy) -> list[Index]:
    from lethe.erasure.discovery import free_text_columns

    out = [Index(index_name("trgm", t, c), t, c, "trgm") for t, c in free_text_columns(policy)]
    for table, column, cls in identifier_columns(policy):
        kind = "phone" if cls == "phone" else "lower"
        out.append(Index(index_name(kind, table, column), table, column, kind))
    return out


def trigram_schema(cur: psycopg2.extensions.cursor) -> str | None:
    """The schema pg_trgm is installed in, or None."""
    cur.execute(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_trgm'"
    )
    row = cur.fetchone()
    return str(row[0]) if row else None


def _state(cur: psycopg2.extensions.cursor, index: Index) -> str | None:
    """'valid', 'invalid' (an interrupted concurrent build) or None (absent), in the table's schema."""
    schema = split(index.table)[0] or PLATFORM_SCHEMA
    cur.execute(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = %s AND n.nspname = %s",
        (index.name, schema),
    )
    row = cur.fetchone()
    return None if row is None else ("valid" if row[0] else "invalid")


def ensure(url: str, policy: Policy) -> list[tuple[Index, str]]:
    """Create the missing indexes; return each with what happened: exists, created, rebuilt, or skipped (why)."""
    conn = connect(url)
    conn.autocommit = True  # CREATE INDEX CONCURRENTLY cannot run in a transaction
    out: list[tuple[Index, str]] = []
    try:
        with conn.cursor() as cur:
            _one_run_at_a_time(cur)
            trgm = trigram_schema(cur)
            why_not = ""
            for index in wanted(policy):
                cur.execute("SELECT to_regclass(%s)", (regclass_literal(index.table),))
                if cur.fetchone()[0] is None:  # type: ignore[index]
                    out.append((index, "skipped: no such table"))
                    continue
                if index.kind == "trgm" and trgm is None and not why_not:
                    trgm, why_not = _install_trigram(cur)
                if index.kind == "trgm" and trgm is None:
                    out.append((index, f"skipped: {why_not}"))
                    continue
                state = _state(cur, index)
                if state == "valid":
                    out.append((index, "exists"))
                    continue
                if state == "invalid":
                    schema = split(index.table)[0] or PLATFORM_SCHEMA
                    cur.execute(
                        sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(schema, index.name))
                    )
                cur.execute(_create(cur, index, trgm))
                out.append((index, "rebuilt" if state == "invalid" else "created"))
            for index, schema, partitioned in _stale(cur, policy):
                cur.execute(
                    sql.SQL("DROP INDEX {how} IF EXISTS {name}").format(
                        how=sql.SQL("" if partitioned else "CONCURRENTLY"),  # as it was built
                        name=sql.Identifier(schema, index.name),
                    )
                )
                out.append((index, "dropped: the policy no longer asks for it"))
    finally:
        conn.close()
    return out


_NAME = r"^lethe_(trgm|lower|phone)_.*_[0-9a-f]{8}$"  # what index_name() writes


def _stale(cur: psycopg2.extensions.cursor, policy: Policy) -> list[tuple[Index, str, bool]]:
    """Indexes named as Lethe names its own, on tables of the policy's schemas, that the policy no longer
    asks for; with each one's schema and whether it is on a partitioned table. Lethe's own schema is not
    the platform's."""
    schemas = {split(t)[0] or PLATFORM_SCHEMA for t in policy.tables} - {lethe_schema()}
    cur.execute(
        "SELECT ic.relname, n.nspname, t.relname, t.relkind = 'p', pg_get_indexdef(i.indexrelid, 1, true),"
        " substring(ic.relname from %s)"
        " FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid"
        " JOIN pg_namespace n ON n.oid = t.relnamespace"
        " WHERE n.nspname = ANY(%s) AND ic.relname ~ %s AND NOT ic.relispartition",
        (_NAME, sorted(schemas), _NAME),
    )
    keep = {i.name for i in wanted(policy)}
    return [
        (
            Index(name, table if schema == PLATFORM_SCHEMA else f"{schema}.{table}", column, kind),
            schema,
            bool(partitioned),
        )
        for name, schema, table, partitioned, column, kind in cur.fetchall()
        if name not in keep
    ]


def _one_run_at_a_time(cur: psycopg2.extensions.cursor) -> None:
    """Wait for any other run to end: a second run took the first's build in progress (invalid until it ends)
    for an interrupted one and dropped it, and the two deadlocked. Polled, not a blocking pg_advisory_lock:
    a session waiting inside a statement holds a snapshot, which the other run's CONCURRENTLY build waits for."""
    waited = False
    while True:
        cur.execute("SELECT pg_try_advisory_lock(hashtext('lethe db indexes'))")
        if cur.fetchone()[0]:  # type: ignore[index]
            return
        if not waited:
            log.info("another `lethe db indexes` is building: waiting for it to end")
            waited = True
        time.sleep(1)


def _install_trigram(cur: psycopg2.extensions.cursor) -> tuple[str | None, str]:
    """Install pg_trgm in Lethe's schema (trusted since PostgreSQL 13: a database owner may); (schema, why not)."""
    try:
        cur.execute(sql.SQL("CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA {}").format(sql.Identifier(lethe_schema())))
    except psycopg2.Error as exc:
        why_not = f"pg_trgm not available ({type(exc).__name__})"
        log.warning("%s: the erasure's mention search reads whole tables", why_not)
        return None, why_not
    return trigram_schema(cur), ""


def _create(cur: psycopg2.extensions.cursor, index: Index, trgm: str | None) -> sql.Composable:
    cur.execute(
        "SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)",
        (regclass_literal(index.table),),
    )
    partitioned = cur.fetchone()[0] == "p"  # type: ignore[index]
    if index.kind == "trgm":
        using = sql.SQL("gin ({} {}.gin_trgm_ops)").format(sql.Identifier(index.column), sql.Identifier(str(trgm)))
    else:
        using = sql.SQL("btree (({}))").format(identifier_expression(index.kind, index.column))
    return sql.SQL("CREATE INDEX {how} IF NOT EXISTS {name} ON {table} USING {using}").format(
        how=sql.SQL("" if partitioned else "CONCURRENTLY"),
        name=sql.Identifier(index.name),
        table=relation(index.table),
        using=using,
    )


def warn_if_missing(cur: psycopg2.extensions.cursor, policy: Policy) -> None:
    """Say once per process and database when a search index is missing (the search reads the table)."""
    cur.execute("SELECT current_database()")
    database = str(cur.fetchone()[0])  # type: ignore[index]
    if database in _warned:
        return
    _warned.add(database)
    missing = [f"{i.table}.{i.column}" for i in wanted(policy) if _state(cur, i) != "valid"]
    if missing:
        log.warning(
            "no Lethe search index on %s (pg_trgm %s): the erasure's mention search and identifier checks read"
            " those tables whole; `lethe db indexes` creates the indexes",
            ", ".join(missing),
            "installed" if trigram_schema(cur) else "not installed",
        )
