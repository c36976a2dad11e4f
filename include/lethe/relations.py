"""The company's tables as the policy names them, and the foreign keys between them.

A policy names a table `table` (found on the connection's search path) or `schema.table`.
Foreign keys are read from pg_constraint wherever they are declared: on a table, on a
partitioned parent, or only on the partitions of a partitioned table (each partition's
constraint then counts as its parent's, once). Tables come back under the policy's own
names, so callers compare them with the policy's keys.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg2.extensions
from psycopg2 import sql

# Types whose values the masking writes as text (a domain over one of them reads as it, BASE_TYPE_JOIN).
TEXT_TYPES = ("text", "character varying", "character", "citext")

# The type under a column's domains (a domain over a domain too), for a query over pg_attribute `a`: what
# PostgreSQL's functions and operators, so the erasure and the purge, work on. Yields `base.oid`, and
# `base.not_null`: one of the domains is NOT NULL (the column refuses a null though `attnotnull` is false),
# and `base.typmod`: the column's or its nearest domain's type modifier (varchar(n): n + 4), NULL when none.
BASE_TYPE_JOIN = """
CROSS JOIN LATERAL (
    WITH RECURSIVE chain(oid, typtype, typbasetype, typnotnull, typtypmod, depth) AS (
        SELECT t.oid, t.typtype, t.typbasetype, t.typnotnull, t.typtypmod, 0 FROM pg_type t WHERE t.oid = a.atttypid
        UNION ALL
        SELECT p.oid, p.typtype, p.typbasetype, p.typnotnull, p.typtypmod, c.depth + 1
        FROM pg_type p JOIN chain c ON p.oid = c.typbasetype
        WHERE c.typtype = 'd'
    )
    SELECT (SELECT chain.oid FROM chain WHERE chain.typtype <> 'd') AS oid, (SELECT bool_or(typnotnull) FROM chain)
        AS not_null,
        coalesce(nullif(a.atttypmod, -1), (SELECT chain.typtypmod FROM chain WHERE chain.typtype = 'd'
            AND chain.typtypmod >= 0 ORDER BY chain.depth LIMIT 1)) AS typmod
) base
"""


def relation(name: str) -> sql.Identifier:
    """A table the policy names: `table` (on the search path) or `schema.table`, quoted. The name splits at its
    last dot, as `split` and `regclass_literal` read it: a schema's name may hold a dot, a table's may not."""
    schema, table = split(name)
    return sql.Identifier(schema, table) if schema else sql.Identifier(table)


def split(name: str) -> tuple[str | None, str]:
    """(schema or None, table) of a policy's table name."""
    schema, _, table = name.rpartition(".")
    return (schema or None), table


def regclass_literal(name: str) -> str:
    """The name as to_regclass() reads it (each part quoted, a `"` in either doubled)."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in split(name) if part is not None)


@dataclass(frozen=True)
class ForeignKey:
    """`child.child_columns` references `parent.parent_columns` (tables under the policy's names)."""

    child: str
    child_columns: tuple[str, ...]
    parent: str
    parent_columns: tuple[str, ...]
    name: str = ""


def policy_oids(cur: psycopg2.extensions.cursor, names: Iterable[str]) -> dict[int, str]:
    """oid -> the policy's name, for each named table that exists."""
    names = list(names)
    cur.execute(
        "SELECT n.name, to_regclass(n.lit)::oid FROM unnest(%s::text[], %s::text[]) n(name, lit)",
        (names, [regclass_literal(n) for n in names]),
    )
    return {int(oid): name for name, oid in cur.fetchall() if oid is not None}


# The comment retention puts on an expired partition it has detached and is about to drop (lethe.retention.catalog).
EXPIRED_PARTITION_MARK = "lethe retention: expired partition detached from "

# Whether each side carries retention's mark is read by this very statement: retention renames, marks and later
# drops its detached partitions in transactions of its own, and a list read in two statements (the keys, then
# what is being dropped) raced them.
_FK_SQL = """
SELECT c.conname,
       coalesce(pg_partition_root(c.conrelid), c.conrelid)::oid,
       coalesce(pg_partition_root(c.conrelid), c.conrelid)::regclass::text,
       coalesce(pg_partition_root(c.confrelid), c.confrelid)::oid,
       coalesce(pg_partition_root(c.confrelid), c.confrelid)::regclass::text,
       ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY k(n, i)
             JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.i),
       ARRAY(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY k(n, i)
             JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.i),
       EXISTS (SELECT 1 FROM pg_description d WHERE d.classoid = 'pg_class'::regclass AND d.objsubid = 0
               AND d.objoid = c.conrelid AND starts_with(d.description, %(mark)s)),
       EXISTS (SELECT 1 FROM pg_description d WHERE d.classoid = 'pg_class'::regclass AND d.objsubid = 0
               AND d.objoid = c.confrelid AND starts_with(d.description, %(mark)s)),
       n.nspname || '.' || (SELECT relname FROM pg_class WHERE oid = c.conrelid)
FROM pg_constraint c
JOIN pg_namespace n ON n.oid = (SELECT relnamespace FROM pg_class WHERE oid = c.conrelid)
WHERE c.contype = 'f' AND c.conparentid = 0
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%%'
ORDER BY 3, 1
"""


def _keys(cur: psycopg2.extensions.cursor, names: Iterable[str]) -> list[tuple[ForeignKey, bool, bool]]:
    """Every foreign key (once), with whether its child and its parent carry retention's mark. A marked child
    (no table of the policy) is named `schema.name`, unquoted, as `relation` reads it: its schema need not be
    on the search path, and regclass's text quotes a mixed-case name."""
    known = policy_oids(cur, names)
    cur.execute(_FK_SQL, {"mark": EXPIRED_PARTITION_MARK})
    seen: set[tuple[str, tuple[str, ...], str, tuple[str, ...]]] = set()
    out = []
    for row in cur.fetchall():
        conname, child_oid, child, parent_oid, parent, ccols, pcols, child_marked, parent_marked, qualified = row
        child = qualified if child_marked else known.get(int(child_oid), child)
        fk = (child, tuple(ccols), known.get(int(parent_oid), parent), tuple(pcols))
        if fk in seen:
            continue
        seen.add(fk)
        out.append((ForeignKey(*fk, name=conname), bool(child_marked), bool(parent_marked)))
    return out


def foreign_keys(cur: psycopg2.extensions.cursor, names: Iterable[str] = ()) -> list[ForeignKey]:
    """Every foreign key of the database, partitions' own folded into their partitioned parent; keys of
    retention's marked expired partitions (`<name>__expired`) left out: they are no table of the platform.

    A key the parent declares is cloned onto each partition (conparentid set): only the parent's
    counts. A key declared on partitions only (conparentid 0, a partition's conrelid) counts once,
    as its root's. Tables named in `names` (the policy's tables) come back under those names.
    """
    return [fk for fk, child_marked, parent_marked in _keys(cur, names) if not (child_marked or parent_marked)]


def expired_partitions(cur: psycopg2.extensions.cursor, schemas: Iterable[str]) -> list[tuple[str, str]]:
    """(schema, name) of each relation of `schemas` carrying retention's mark (`<name>__expired`: detached, not
    dropped yet), read in one statement: the purge marks and drops them in transactions of its own."""
    cur.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " JOIN pg_description d ON d.objoid = c.oid AND d.classoid = 'pg_class'::regclass AND d.objsubid = 0"
        " WHERE n.nspname = ANY(%s) AND starts_with(d.description, %s) ORDER BY 1, 2",
        (list(schemas), EXPIRED_PARTITION_MARK),
    )
    return [(str(schema), str(name)) for schema, name in cur.fetchall()]


def expired_partition_keys(cur: psycopg2.extensions.cursor, names: Iterable[str] = ()) -> list[ForeignKey]:
    """The foreign keys of retention's marked expired partitions (`<name>__expired`: detached, not dropped yet).
    A detached partition keeps its keys: its rows still point at live rows, which cannot be deleted before them."""
    return [fk for fk, child_marked, _ in _keys(cur, names) if child_marked]


def primary_keys(cur: psycopg2.extensions.cursor, names: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """The primary-key columns of each named table that has one, in key order."""
    known = policy_oids(cur, names)
    cur.execute(
        """
        SELECT c.conrelid::oid,
               ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY k(n, i)
                     JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.i)
        FROM pg_constraint c WHERE c.contype = 'p' AND c.conrelid = ANY(%s::oid[])
        """,
        (list(known),),
    )
    return {known[int(oid)]: tuple(cols) for oid, cols in cur.fetchall()}


def not_null_columns(cur: psycopg2.extensions.cursor, names: Iterable[str]) -> dict[str, set[str]]:
    known = policy_oids(cur, names)
    cur.execute(
        "SELECT attrelid::oid, attname::text FROM pg_attribute"
        " WHERE attrelid = ANY(%s::oid[]) AND attnum > 0 AND NOT attisdropped AND attnotnull",
        (list(known),),
    )
    out: dict[str, set[str]] = {}
    for oid, column in cur.fetchall():
        out.setdefault(known[int(oid)], set()).add(column)
    return out


def column_type(cur: psycopg2.extensions.cursor, table: str, column: str) -> str:
    """format_type() of one column; ValueError naming it when it does not exist."""
    cur.execute(
        "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a"
        " WHERE a.attrelid = to_regclass(%s) AND a.attname = %s AND a.attnum > 0 AND NOT a.attisdropped",
        (regclass_literal(table), column),
    )
    row = cur.fetchone()
    if row is None:
        raise ValueError(f"column {table}.{column} is not in the database")
    return str(row[0])


def subject_key_type(cur: psycopg2.extensions.cursor, policy: Any) -> str:
    """The SQL type of the policy's subject key (format_type), to cast keys given as text to."""
    return column_type(cur, policy.subject.table, policy.subject.key)


def key_text_is_canonical(cur: psycopg2.extensions.cursor, policy: Any) -> bool:
    """Whether equal subject keys are equal as text: not so for a citext key, or one of a nondeterministic
    collation, whose rows may spell one key in several ways ('Anna@x' and 'anna@x' are the same customer)."""
    cur.execute(
        "SELECT t.typname <> 'citext' AND coalesce(c.collisdeterministic, true) FROM pg_attribute a"
        " JOIN pg_type t ON t.oid = a.atttypid LEFT JOIN pg_collation c ON c.oid = a.attcollation"
        " WHERE a.attrelid = to_regclass(%s) AND a.attname = %s AND a.attnum > 0 AND NOT a.attisdropped",
        (regclass_literal(policy.subject.table), policy.subject.key),
    )
    row = cur.fetchone()
    return bool(row[0]) if row else True


def key_folds_case(cur: psycopg2.extensions.cursor, policy: Any) -> bool:
    """Whether the subject key is citext: its values are equal when their lower() is, so a tombstone keeps the
    pseudonym of that folded spelling too (lethe.pseudonym.folded_subject_pseudonym), and rows spelling an erased
    key in a case no row of hers stored are still found hers."""
    cur.execute(
        "SELECT t.typname = 'citext' FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
        " WHERE a.attrelid = to_regclass(%s) AND a.attname = %s AND a.attnum > 0 AND NOT a.attisdropped",
        (regclass_literal(policy.subject.table), policy.subject.key),
    )
    row = cur.fetchone()
    return bool(row[0]) if row else False


def fold_sql(value: sql.Composable) -> sql.Composable:
    """SQL of a key's case-folded spelling, as citext's equality folds it: lower() in the database's default
    collation, whatever collation the column (or the expression) carries (a citext column `COLLATE "tr-x-icu"`
    still says 'INGRID' = 'ingrid', while lower() in its own collation gives a dotless i)."""
    return sql.SQL('lower(({})::text COLLATE "default")').format(value)


def folded_keys(cur: psycopg2.extensions.cursor, keys: Iterable[str]) -> dict[str, str]:
    """Each key text with the database's lower() of it: the spelling citext compares by (one query; `fold_sql`)."""
    cur.execute(
        sql.SQL("SELECT k, {} FROM unnest(%s::text[]) AS u(k)").format(fold_sql(sql.SQL("k"))), (sorted(set(keys)),)
    )
    return {k: f for k, f in cur.fetchall()}


def stored_key(policy: Any, link: sql.Composable) -> sql.Composable:
    """The SQL of the subject key (as text) as the subject row stores it, for a link value `link`; the link's own
    text when no subject row has it. Pseudonyms are of this one spelling (see key_text_is_canonical)."""
    return sql.SQL("coalesce((SELECT s.{k}::text FROM {s} s WHERE s.{k} = {l} LIMIT 1), {l}::text)").format(
        k=sql.Identifier(policy.subject.key), s=relation(policy.subject.table), l=link
    )


def owners_join(link: sql.Composable, key_type: str, owners: sql.Composable) -> sql.Composable:
    """`JOIN unnest(<owners>::text[]) o(owner) ON <link> = o.owner::<key_type>`: each row under the owner it was
    asked for (`o.owner`), not under its own text. The database compares the values in the key's type, so a
    citext key spelt in another case in a child row ('anna@x' for 'Anna@x') is that one owner, as its foreign
    key says, and everything keyed by the owner (footprints, plans, pseudonyms) sees one person."""
    return sql.SQL("JOIN unnest({}::text[]) AS o(owner) ON {} = o.owner::{}").format(owners, link, sql.SQL(key_type))


def subject_link(policy: Any, table: str) -> str | None:
    """The column of `table` holding the subject's key (the key itself in the subject table)."""
    if table == policy.subject.table:
        return str(policy.subject.key)
    rule = policy.tables.get(table)
    return rule.subject if rule is not None else None


def referenced_owner(
    policy: Any, fks: list[ForeignKey], table: str, alias: str = "t", canonical: bool = True
) -> sql.Composable | None:
    """For a table the subject's rows point to (an address, no subject column of its own): the SQL of the
    subject key (as text) of the one person whose rows point at each of its rows; NULL when rows of more
    than one person, or rows linked to no one, point at it, since then the row is not that person's alone.
    `canonical`: key_text_is_canonical; when not (citext), each pointing row's key is read as the subject row
    stores it (stored_key), so her rows spelling it in several cases are one person, and her pseudonym's."""
    rule = policy.tables.get(table)
    if rule is None or rule.subject is not None or rule.erasure is None or table == policy.subject.table:
        return None
    pointing = [fk for fk in fks if fk.parent == table and fk.child != table]
    if not any(subject_link(policy, fk.child) for fk in pointing):
        return None

    def owner_of(fk: ForeignKey) -> sql.Composable:
        link = subject_link(policy, fk.child)
        match = sql.SQL(" AND ").join(
            sql.SQL("r.{} = {}.{}").format(sql.Identifier(cc), sql.Identifier(alias), sql.Identifier(pc))
            for cc, pc in zip(fk.child_columns, fk.parent_columns, strict=True)
        )
        owner = _owner_text(policy, sql.Identifier("r", link), canonical) if link else sql.SQL("NULL::text")
        return sql.SQL("SELECT {} AS o FROM {} r WHERE {}").format(owner, relation(fk.child), match)

    return _one_owner([owner_of(fk) for fk in pointing])


def _owner_text(policy: Any, link: sql.Composable, canonical: bool) -> sql.Composable:
    """The subject key of a row's link as text: its own text for a canonical key, else as stored (stored_key)."""
    return sql.SQL("{}::text").format(link) if canonical else stored_key(policy, link)


def inherited_owner(
    policy: Any, fks: list[ForeignKey], table: str, alias: str = "t", canonical: bool = True
) -> sql.Composable | None:
    """For a table with no subject link of its own whose rows point at rows that have one (a delivery to a
    customer's address): the SQL of the subject key (as text) of the one person whose rows each of its rows points
    at; NULL when it points at rows of more than one person, or at none. The primary's erasure takes such a row
    with that person's rows (lethe.erasure.discovery: a table without a link of its own inherits through its
    keys), so snapshots must know whose it is to leave it out of a restore and a rewritten backup.
    `canonical`: as for referenced_owner."""
    rule = policy.tables.get(table)
    if rule is None or rule.subject is not None or rule.erasure is None or table == policy.subject.table:
        return None
    pointing = [fk for fk in fks if fk.child == table and fk.parent != table and subject_link(policy, fk.parent)]
    if not pointing:
        return None

    def owner_of(fk: ForeignKey) -> sql.Composable:
        match = sql.SQL(" AND ").join(
            sql.SQL("p.{} = {}.{}").format(sql.Identifier(pc), sql.Identifier(alias), sql.Identifier(cc))
            for cc, pc in zip(fk.child_columns, fk.parent_columns, strict=True)
        )
        owner = _owner_text(policy, sql.Identifier("p", str(subject_link(policy, fk.parent))), canonical)
        return sql.SQL("SELECT {} AS o FROM {} p WHERE {}").format(owner, relation(fk.parent), match)

    return _one_owner([owner_of(fk) for fk in pointing])


def _one_owner(candidates: list[sql.Composable]) -> sql.Composable:
    """The one owner (`o`) the candidate queries name, or NULL when they name several, or any names no one."""
    return sql.SQL(
        "(SELECT CASE WHEN count(DISTINCT x.o) = 1 AND bool_and(x.o IS NOT NULL) THEN min(x.o) END FROM ({}) x)"
    ).format(sql.SQL(" UNION ALL ").join(candidates))
