"""What retention needs to know about the live schema: keys, foreign keys, partitions.

Read from pg_catalog, so the plan follows the database as it is, not as a
migration file says it should be.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg2.extensions
from lethe import relations
from lethe.db import ConfigurationError
from lethe.relations import ForeignKey

INTEGER_TYPES = {"smallint", "integer", "bigint"}
_BOUND = re.compile(r"^FOR VALUES FROM \('([^']*)'\) TO \('([^']*)'\)$")


@dataclass(frozen=True)
class Partition:
    schema: str  # its own schema (a partition need not share its parent's)
    name: str
    lower: datetime
    upper: datetime
    bound: str  # the FOR VALUES clause as PostgreSQL prints it, to re-attach a partition


def aware(value: datetime) -> datetime:
    """Timestamps from timestamptz columns, made timezone-aware whatever the driver's type casters do."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _oid(cur: psycopg2.extensions.cursor, table: str) -> int:
    cur.execute("SELECT to_regclass(%s)::oid", (relations.regclass_literal(table),))
    row = cur.fetchone()
    if row is None or row[0] is None:
        raise ConfigurationError(f"table {table!r} named in the policy does not exist in the primary database")
    return int(row[0])


def primary_key(cur: psycopg2.extensions.cursor, table: str) -> list[tuple[str, str]]:
    """(column, type) of the primary key, in key order."""
    cur.execute(
        """
        SELECT a.attname, format_type(a.atttypid, a.atttypmod)
        FROM pg_index i
        JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) ON true
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
        WHERE i.indrelid = %s AND i.indisprimary
        ORDER BY k.n
        """,
        (_oid(cur, table),),
    )
    rows = [(str(r[0]), str(r[1])) for r in cur.fetchall()]
    if not rows:
        raise ConfigurationError(f"table {table!r} has no primary key: retention batches over primary-key ranges")
    return rows


def column_types(cur: psycopg2.extensions.cursor, table: str) -> dict[str, str]:
    """Each column's type under its domains, without length (varchar(40) is character varying)."""
    cur.execute(
        f"SELECT a.attname, format_type(base.oid, NULL) FROM pg_attribute a {relations.BASE_TYPE_JOIN}"  # noqa: S608
        " WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        (_oid(cur, table),),
    )
    return {str(name): str(kind) for name, kind in cur.fetchall()}


def foreign_keys(cur: psycopg2.extensions.cursor, names: Iterable[str] = ()) -> list[ForeignKey]:
    """Every foreign key, those declared only on partitions counted as their parent's (lethe.relations)."""
    return relations.foreign_keys(cur, names)


def is_partitioned(cur: psycopg2.extensions.cursor, table: str) -> bool:
    cur.execute("SELECT relkind = 'p' FROM pg_class WHERE oid = %s", (_oid(cur, table),))
    row = cur.fetchone()
    return bool(row and row[0])


EXPIRED_SUFFIX = "__expired"


def expired_marker(table: str) -> str:
    """The comment on a partition retention detached from `table` and has yet to drop."""
    return f"{relations.EXPIRED_PARTITION_MARK}{table}, to be dropped"


def detached_leftovers(cur: psycopg2.extensions.cursor, table: str) -> list[tuple[str, str]]:
    """(schema, name) of expired partitions of `table` that a killed run detached but did not drop
    (`<name>__expired`), each to be named qualified: its schema need not be on the search path.

    Known by retention's comment on them (in whichever schema the partition lived), or (left by a version that
    set none) by a name `<table>_...__expired` beside the table, with exactly the table's columns.
    """
    cur.execute(
        """
        WITH parent AS (SELECT %(oid)s::oid AS oid),
             shape AS (SELECT array_agg(attname || ' ' || format_type(atttypid, atttypmod) ORDER BY attname) AS cols
                       FROM pg_attribute, parent WHERE attrelid = parent.oid AND attnum > 0 AND NOT attisdropped)
        SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, parent p, shape s
        WHERE c.relkind = 'r' AND NOT c.relispartition AND c.relname LIKE %(like)s
          AND (obj_description(c.oid, 'pg_class') = %(marker)s
               OR (c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = p.oid)
                   AND starts_with(c.relname, %(prefix)s)
                   AND s.cols = (SELECT array_agg(attname || ' ' || format_type(atttypid, atttypmod) ORDER BY attname)
                                 FROM pg_attribute WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped)))
        ORDER BY 1, 2
        """,
        {
            "oid": _oid(cur, table),
            "like": "%" + EXPIRED_SUFFIX.replace("_", r"\_"),
            "marker": expired_marker(table),
            "prefix": f"{relations.split(table)[1]}_",
        },
    )
    return [(str(schema), str(name)) for schema, name in cur.fetchall()]


def being_dropped(policy: Any, cur: psycopg2.extensions.cursor, live: set[str] | None = None) -> set[str]:
    """Expired partitions retention has detached and not yet dropped (`<name>__expired`), of every partitioned
    table of the policy (of those in `live`, when given): retention's own transient state, which a task
    starting meanwhile (or after a killed purge, until the next plan drops them) must neither refuse nor treat
    as the platform's."""
    found = set()
    for table, rule in policy.tables.items():
        if rule.partitioned_by and (live is None or table in live):  # a missing table is reported on its own
            qualified = relations.split(table)[0] is not None
            found |= {f"{schema}.{name}" if qualified else name for schema, name in detached_leftovers(cur, table)}
    return found


def partitions(cur: psycopg2.extensions.cursor, table: str) -> list[Partition]:
    """The range partitions of `table` with both bounds set, oldest first (DEFAULT and open ranges left out)."""
    cur.execute(
        "SELECT n.nspname, c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE i.inhparent = %s",
        (_oid(cur, table),),
    )
    found = []
    for schema, name, bound in cur.fetchall():
        m = _BOUND.match(bound or "")
        if not m:
            continue
        cur.execute("SELECT %s::timestamptz, %s::timestamptz", (m.group(1), m.group(2)))
        lower, upper = cur.fetchone()  # type: ignore[misc]
        found.append(Partition(str(schema), str(name), aware(lower), aware(upper), str(bound)))
    return sorted(found, key=lambda p: p.lower)
