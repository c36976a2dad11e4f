"""The links of kept rows that the primary's erasure cuts, cut the same way in backups and restores.

The primary's erasure (lethe.erasure.execute) does more to kept rows than its per-table action:
- a kept row's foreign key to a row being deleted is set to NULL (`_cut_links`);
- an erased person's legal holds stay as the record of a legal obligation, but their subject key and
  free reference go and the keyed pseudonym names them instead (`lethe.holds.forget_subjects`).

Propagation and restore do the same to the frames they rewrite or load, so a restored snapshot has
intact foreign keys and no hold pointing at an erased person. `foreign_keys` and `orphans` read the
target database's own catalogue, so a restore verifies the links it loaded rather than trusting them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import psycopg2.extensions
import pyarrow as pa
import pyarrow.compute as pc
from psycopg2 import sql

from lethe import relations
from lethe.db import ConfigurationError
from lethe.holds import HOLDS
from lethe.pseudonym import subject_pseudonym

KEYS_PER_QUERY = 50_000  # link values asked of the database at once (`rows_without_parent`)


class LinkError(ConfigurationError):
    """A kept row references an erased row through a NOT NULL link: names table, columns and count."""


class MissingParentError(ConfigurationError):
    """Restored rows link to rows of a table the snapshot does not hold, and the target lacks them: names the
    links (tables and columns) and row counts, never a value."""


@dataclass(frozen=True)
class ForeignKey:
    child: str
    child_columns: tuple[str, ...]
    parent: str
    parent_columns: tuple[str, ...]
    not_null: bool  # some child column is NOT NULL: the link cannot be cut

    def describe(self) -> str:
        return f"{self.child}({', '.join(self.child_columns)}) -> {self.parent}({', '.join(self.parent_columns)})"


def foreign_keys(cur: psycopg2.extensions.cursor, tables: list[str]) -> list[ForeignKey]:
    """Foreign keys among `tables` (the policy's names: `table` on the search path or `schema.table`), each side
    named as the policy names it. Keys are read as lethe.relations reads them: a key declared only on the
    partitions of a partitioned table counts once, as that table's, so its links are cut and checked too."""
    named = set(tables)
    not_null = relations.not_null_columns(cur, tables)
    found = [
        ForeignKey(
            fk.child,
            fk.child_columns,
            fk.parent,
            fk.parent_columns,
            any(c in not_null.get(fk.child, set()) for c in fk.child_columns),
        )
        for fk in relations.foreign_keys(cur, tables)
        if fk.child in named and fk.parent in named
    ]
    return sorted(found, key=lambda fk: (fk.child, fk.parent, fk.child_columns))


def outside_foreign_keys(
    cur: psycopg2.extensions.cursor, tables: list[str], names: Iterable[str] = ()
) -> list[ForeignKey]:
    """Foreign keys from one of `tables` (a snapshot's) to a table not among them: a table the snapshot does not
    hold (`backup: false` in the policy, or not in the policy at all), whose rows a restore cannot bring. The
    parent is named as `names` (the policy's tables) name it, else `schema.table`."""
    inside, named = set(tables), set(names)
    not_null = relations.not_null_columns(cur, tables)
    found = []
    for fk in relations.foreign_keys(cur, [*named, *tables]):  # the snapshot's names win for a table named twice
        if fk.child not in inside or fk.parent in inside:
            continue
        parent = fk.parent
        if parent not in named:  # regclass's text (quoted, or bare on the search path): as `relation` reads it
            cur.execute(
                "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE c.oid = %s::regclass",
                (parent,),
            )
            schema, table = cur.fetchone()  # type: ignore[misc]
            parent = f"{schema}.{table}"
        nulls = not_null.get(fk.child, set())
        found.append(
            ForeignKey(fk.child, fk.child_columns, parent, fk.parent_columns, any(c in nulls for c in fk.child_columns))
        )
    return sorted(found, key=lambda fk: (fk.child, fk.parent, fk.child_columns))


def rows_without_parent(cur: psycopg2.extensions.cursor, fk: ForeignKey, frame: pa.Table) -> int:
    """Rows of `frame` (rows of `fk.child` about to be loaded) whose link (every column set, as PostgreSQL checks
    it) finds no row of `fk.parent` in the database, compared as the foreign key compares (`missing_parents`)."""
    if frame.num_rows == 0 or any(c not in frame.column_names for c in fk.child_columns):
        return 0
    keys = _keys(frame, fk.child_columns)
    linked = sorted({key for key in keys if all(v is not None for v in key)}, key=repr)
    missing: set[tuple[object, ...]] = set()
    for start in range(0, len(linked), KEYS_PER_QUERY):
        missing |= missing_parents(cur, fk, linked[start : start + KEYS_PER_QUERY])
    return sum(1 for key in keys if key in missing)


def orphans(cur: psycopg2.extensions.cursor, fk: ForeignKey) -> int:
    """Rows of the child whose (non-null) link finds no parent row: 0 when the link is intact."""
    match = sql.SQL(" AND ").join(
        sql.SQL("p.{} = c.{}").format(sql.Identifier(pc_), sql.Identifier(cc))
        for cc, pc_ in zip(fk.child_columns, fk.parent_columns, strict=True)
    )
    present = sql.SQL(" AND ").join(sql.SQL("c.{} IS NOT NULL").format(sql.Identifier(c)) for c in fk.child_columns)
    cur.execute(
        sql.SQL("SELECT count(*) FROM {c} c WHERE {present} AND NOT EXISTS (SELECT 1 FROM {p} p WHERE {m})").format(
            c=relations.relation(fk.child), p=relations.relation(fk.parent), present=present, m=match
        )
    )
    return int(cur.fetchone()[0])  # type: ignore[index]


def _keys(frame: pa.Table, columns: tuple[str, ...]) -> list[tuple[object, ...]]:
    return list(zip(*(frame.column(c).to_pylist() for c in columns), strict=True))


def parent_keys(frame: pa.Table, columns: tuple[str, ...]) -> set[tuple[object, ...]]:
    """The key tuples a parent table still has (after its erased rows left), for its children's links."""
    return set(_keys(frame, columns))


def missing_parents(
    cur: psycopg2.extensions.cursor,
    fk: ForeignKey,
    keys: list[tuple[object, ...]],
    among: set[tuple[object, ...]] | None = None,
) -> set[tuple[object, ...]]:
    """Of these (non-null) link values of `fk.child`, those no row of `fk.parent` in the database matches, compared
    as the foreign key compares them: each value cast to its child column's type (citext is case-insensitive, a
    numeric 1.0 is 1), by the column types' own equality. With `among` (a table's links to itself: its rows are
    not loaded yet), the parent's key values are those, each cast to its parent column's type; only those equal to
    a link but for case are passed (`among` holds every exact match already)."""
    if not keys:
        return set()
    width = len(fk.child_columns)

    def arrays(table: str, columns: tuple[str, ...]) -> sql.Composable:
        return sql.SQL(", ").join(
            sql.SQL("CAST(%s AS {}[])").format(sql.SQL(relations.column_type(cur, table, column))) for column in columns
        )

    params = [[key[i] for key in keys] for i in range(width)]
    if among is None:
        parent = sql.SQL("{} p").format(relations.relation(fk.parent))
    else:
        folded = {tuple(str(v).casefold() for v in key) for key in keys}
        alike = sorted((p for p in among if tuple(str(v).casefold() for v in p) in folded), key=repr)
        if not alike:
            return set(keys)
        parent = sql.SQL("unnest({}) AS p({})").format(
            arrays(fk.parent, fk.parent_columns), sql.SQL(", ").join(sql.Identifier(c) for c in fk.parent_columns)
        )
        params += [[key[i] for key in alike] for i in range(width)]
    names = [sql.Identifier(f"k{i}") for i in range(width)]
    cur.execute(
        sql.SQL(
            "SELECT k.i FROM unnest({child}) WITH ORDINALITY AS k({names}, i)"
            " WHERE NOT EXISTS (SELECT 1 FROM {p} WHERE {m})"
        ).format(
            child=arrays(fk.child, fk.child_columns),
            names=sql.SQL(", ").join(names),
            p=parent,
            m=sql.SQL(" AND ").join(
                sql.SQL("p.{} = k.{}").format(sql.Identifier(pc_), name)
                for pc_, name in zip(fk.parent_columns, names, strict=True)
            ),
        ),
        params,
    )
    return {keys[int(i) - 1] for (i,) in cur.fetchall()}


def cut_dangling(
    frame: pa.Table,
    fk: ForeignKey,
    present: set[tuple[object, ...]],
    confirm: Callable[[list[tuple[object, ...]]], set[tuple[object, ...]]] | None = None,
) -> tuple[pa.Table, int]:
    """Null the link of every row that points at a parent row no longer there; (new frame, rows cut).

    In a consistent snapshot a missing parent row is one the erasure removed, so this is the primary's
    `_cut_links` on the same rows. A NOT NULL link cannot be cut: the primary refuses such an erasure too,
    unless the policy re-points it to the placeholder subject row (the restore counts that row as present).
    `present` holds the parent's key tuples as Python compares them; the values not found there are given to
    `confirm` (when given), which returns those the database, comparing as the key does, finds no parent for
    (`missing_parents`: a citext link differing in case only is intact).
    """
    if frame.num_rows == 0 or any(c not in frame.column_names for c in fk.child_columns):
        return frame, 0
    keys = _keys(frame, fk.child_columns)
    unmatched = {key for key in keys if all(v is not None for v in key) and key not in present}
    if unmatched and confirm is not None:
        unmatched = confirm(sorted(unmatched, key=repr))
    dangling = [key in unmatched for key in keys]
    cut = sum(dangling)
    if not cut:
        return frame, 0
    if fk.not_null:
        raise LinkError(
            f"{cut} kept row(s) of {fk.describe()} reference erased rows through a NOT NULL link; "
            f"the primary's erasure refuses this too: make the column nullable, give {fk.child} a delete action, "
            "or re-point the link (erasure strategy placeholder)"
        )
    mask = pa.array(dangling, pa.bool_())
    for name in fk.child_columns:
        index = frame.column_names.index(name)
        column = frame.column(name).combine_chunks()
        frame = frame.set_column(index, name, pc.if_else(mask, pa.nulls(len(column), column.type), column))
    return frame, cut


def forget_holds(frame: pa.Table, key: bytes, erased: set[str]) -> tuple[pa.Table, int]:
    """Holds on erased people: subject key and reference go, the keyed pseudonym names them (as on the primary).

    `frame` is a snapshot's copy of Lethe's legal holds table; `erased` the subjects' keyed pseudonyms.
    """
    if not erased or frame.num_rows == 0 or "subject_key" not in frame.column_names:
        return frame, 0
    names: list[str | None] = []
    for value in frame.column("subject_key").to_pylist():
        p = _pseudonym(key, value)
        names.append(p if p in erased else None)
    hit = pa.array([n is not None for n in names], pa.bool_())
    count = sum(1 for n in names if n is not None)
    if not count:
        return frame, 0
    for name in ("subject_key", "reference"):
        if name in frame.column_names:
            index = frame.column_names.index(name)
            column = frame.column(name).combine_chunks()
            frame = frame.set_column(index, name, pc.if_else(hit, pa.nulls(len(column), column.type), column))
    if "subject_pseudonym" in frame.column_names:
        index = frame.column_names.index("subject_pseudonym")
        column = frame.column("subject_pseudonym").combine_chunks()
        frame = frame.set_column(index, "subject_pseudonym", pc.if_else(hit, pa.array(names, column.type), column))
    return frame, count


def held_subjects_left(frame: pa.Table, key: bytes, erased: set[str]) -> int:
    """Holds in a frame still naming one of these erased subjects by key (the post-condition of forget_holds)."""
    if "subject_key" not in frame.column_names:
        return 0
    return sum(1 for v in frame.column("subject_key").to_pylist() if _pseudonym(key, v) in erased)


def _pseudonym(key: bytes, value: object) -> str | None:
    if value is None:
        return None
    try:
        return subject_pseudonym(key, value)  # type: ignore[arg-type]
    except ValueError:  # a key value the pseudonym cannot be formed of is no erased person's
        return None


def is_holds_table(table: str) -> bool:
    return table == HOLDS
