"""Find every row of a set of people: the foreign-key graph, identifiers and free-text mentions.

The graph is read from pg_constraint on each run, so a new table that
references accounts is found without editing Lethe. Rows linked to the people
are materialised into one temporary table per table (primary key + owner),
parents first; the executor and the plan read those, so plan and deletion
see the same rows.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import psycopg2.extensions
from lethe import holds, relations, residue
from lethe.erasure import indexes
from lethe.policy import Policy
from lethe.pseudonym import normalise
from lethe.relations import ForeignKey, relation
from lethe.retention.catalog import being_dropped
from psycopg2 import sql


class ErasureGraphError(RuntimeError):
    """The schema cannot be erased safely (cycle, unmapped table, un-nullable link); names tables and columns."""


@dataclass
class Graph:
    """Tables holding rows of the subject, their keys and links, and the order to delete them in.

    `tables`: the subject table and every table whose rows point (directly or not) at rows of it,
    parents first. `referenced`: tables the subject's rows point to (an address) that the policy
    gives an erasure action, in the order they are reached; they are handled after `tables`.
    """

    subject_table: str
    tables: list[str]  # parents first; reversed, children first (the deletion order)
    primary_keys: dict[str, tuple[str, ...]]
    foreign_keys: list[ForeignKey]
    not_null: dict[str, set[str]] = field(default_factory=dict)
    referenced: list[str] = field(default_factory=list)
    key_type: str = "bigint"  # the subject key's SQL type: owners travel as text and are cast to it
    all_foreign_keys: list[ForeignKey] = field(default_factory=list)  # every key of the database

    def parents_of(self, table: str) -> list[ForeignKey]:
        return [fk for fk in self.foreign_keys if fk.child == table and fk.parent in self.tables]

    def second_links(self, table: str, link: str | None) -> list[ForeignKey]:
        """Links from `table` to the subject table other than its own subject link `link` (a ticket's assignee_id):
        a row is its subject link's, so these name someone in another person's row, and are cut, never followed.
        None for the subject table itself and a table without a link of its own (its rows inherit through them)."""
        if table == self.subject_table or not link:
            return []
        return [
            fk
            for fk in self.foreign_keys
            if fk.child == table and fk.parent == self.subject_table and fk.child_columns != (link,)
        ]

    def pointers_to(self, table: str) -> list[ForeignKey]:
        """Links from erased rows (or referenced rows reached earlier) to `table`, a referenced table."""
        reached = set(self.tables) | set(self.referenced[: self.referenced.index(table)])
        return [fk for fk in self.all_foreign_keys if fk.parent == table and fk.child in reached]

    @property
    def deletion_order(self) -> list[str]:
        return list(reversed(self.tables))


def read_graph(cur: psycopg2.extensions.cursor, policy: Policy) -> Graph:
    """The tables reachable from the subject table through foreign keys and the policy's subject links.

    Foreign keys declared only on partitions count as their partitioned parent's (lethe.relations). An expired
    partition retention has detached and is dropping (`<name>__expired`) is not part of the platform: its rows
    are past retention and go with it, and a plan made in that moment failed on it as a table without a rule.
    """
    dropping = being_dropped(policy, cur)
    fks = [fk for fk in relations.foreign_keys(cur, policy.tables) if fk.child not in dropping]
    subject = policy.subject.table

    involved = {subject}
    involved |= {name for name, rule in policy.tables.items() if rule.subject is not None}
    frontier = list(involved)
    while frontier:  # every table whose rows point (directly or not) at rows already involved
        parent = frontier.pop()
        for fk in fks:
            if fk.parent == parent and fk.child not in involved:
                involved.add(fk.child)
                frontier.append(fk.child)

    referenced: list[str] = []  # tables the involved rows point to, with an erasure rule (an address)
    frontier = sorted(involved)
    while frontier:
        child = frontier.pop(0)
        for fk in fks:
            if fk.child != child or fk.parent in involved or fk.parent in referenced:
                continue
            rule = policy.tables.get(fk.parent)
            if rule is not None and rule.subject is None and rule.erasure is not None:
                referenced.append(fk.parent)
                frontier.append(fk.parent)

    pks = relations.primary_keys(cur, [*involved, *referenced])
    missing = sorted(t for t in [*involved, *referenced] if t not in pks)
    if missing:
        raise ErasureGraphError(f"tables without a primary key cannot be erased row by row: {', '.join(missing)}")
    unmapped = sorted(t for t in involved if t not in policy.tables or policy.tables[t].erasure is None)
    if unmapped:
        raise ErasureGraphError(
            f"tables linked to the data subject have no `erasure` rule in the policy: {', '.join(unmapped)}"
        )

    edges = [fk for fk in fks if fk.child in involved and fk.parent in involved]
    order = _parents_first(involved, edges)
    not_null = relations.not_null_columns(cur, order)
    return Graph(
        subject,
        order,
        {t: pks[t] for t in [*order, *referenced]},
        edges,
        not_null,
        referenced,
        relations.subject_key_type(cur, policy),
        fks,
    )


def _parents_first(tables: set[str], edges: list[ForeignKey]) -> list[str]:
    """Topological order (Kahn); a cycle is reported with the tables on it, never broken by guessing.

    A table's link to itself (users.manager_id) orders nothing: its rows pointing at a deleted one are
    other people's, and lethe.erasure.execute cuts those links before the delete."""
    parents: dict[str, set[str]] = {t: set() for t in tables}
    for fk in edges:
        if fk.child != fk.parent:
            parents[fk.child].add(fk.parent)
    order: list[str] = []
    ready = sorted(t for t, ps in parents.items() if not ps)
    while ready:
        table = ready.pop(0)
        order.append(table)
        for child in sorted(t for t, ps in parents.items() if table in ps):
            parents[child].discard(table)
            if not parents[child] and child not in order and child not in ready:
                ready.append(child)
    stuck = sorted(t for t in tables if t not in order)
    if stuck:
        links = sorted(f"{fk.child}.{','.join(fk.child_columns)} -> {fk.parent}" for fk in edges if fk.child in stuck)
        raise ErasureGraphError(
            f"foreign keys form a cycle among {', '.join(stuck)} ({'; '.join(links)}): "
            "no safe deletion order; break the cycle or make one link nullable and list it in the policy"
        )
    return order


def temp_name(table: str) -> sql.Identifier:
    return sql.Identifier(f"lethe_erase_{table}")


def materialise(
    cur: psycopg2.extensions.cursor,
    graph: Graph,
    policy: Policy,
    owners: list[str],
    pseudonyms: list[str] | None = None,
) -> dict[str, int]:
    """Create lethe_erase_<table> (pk columns, owner) for each table, parents first, then for the tables
    their rows point to (`graph.referenced`); return rows per table. Owners are subject key values as text.

    `pseudonyms`: each owner's keyed subject pseudonym (same order): rows whose link a retention rule cut
    (pseudonym_link) are found through it in the table's pseudonym column."""
    counts: dict[str, int] = {}
    if pseudonyms is not None and len(pseudonyms) != len(owners):
        raise ValueError("one pseudonym per owner")
    key = policy.subject.key
    for table in graph.tables:
        pk = graph.primary_keys[table]
        pk_cols = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in pk)
        sources: list[sql.Composable] = []
        link = key if table == graph.subject_table else policy.tables[table].subject
        if link:  # the owner as given, not as this row spells it (a citext key is equal in any case)
            sources.append(
                sql.SQL("SELECT {pk}, o.owner FROM {t} t {o} WHERE t.{link} = ANY(%(owners)s::text[]::{kt}[])").format(
                    pk=pk_cols,
                    t=relation(table),
                    o=relations.owners_join(sql.Identifier("t", link), graph.key_type, sql.Placeholder("owners")),
                    link=sql.Identifier(link),
                    kt=sql.SQL(graph.key_type),
                )
            )
        cut = policy.tables[table].link_pseudonym if table in policy.tables else None
        if cut and pseudonyms:
            sources.append(
                sql.SQL(
                    "SELECT {pk}, m.owner FROM {t} t JOIN unnest(%(owners)s::text[], %(pseudonyms)s::text[])"
                    " AS m(owner, p) ON t.{c} = m.p"
                ).format(pk=pk_cols, t=relation(table), c=sql.Identifier(cut))
            )
        second = graph.second_links(table, link)
        for fk in graph.parents_of(table):
            if fk.parent == table or fk in second:
                continue
            join_ref = sql.SQL(" AND ").join(
                sql.SQL("t.{} = p.{}").format(sql.Identifier(c), sql.Identifier(pc))
                for c, pc in zip(fk.child_columns, fk.parent_columns, strict=True)
            )
            join_pk = sql.SQL(" AND ").join(
                sql.SQL("p.{0} = e.{0}").format(sql.Identifier(c)) for c in graph.primary_keys[fk.parent]
            )
            sources.append(
                sql.SQL("SELECT {pk}, e.owner FROM {t} t JOIN {p} p ON {ref} JOIN {e} e ON {jpk}").format(
                    pk=pk_cols,
                    t=relation(table),
                    p=relation(fk.parent),
                    ref=join_ref,
                    e=temp_name(fk.parent),
                    jpk=join_pk,
                )
            )
        pk_plain = sql.SQL(", ").join(sql.Identifier(c) for c in pk)
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(temp_name(table)))
        cur.execute(
            sql.SQL(
                "CREATE TEMP TABLE {e} ON COMMIT DROP AS"
                " SELECT DISTINCT ON ({pk}) {pk}, owner FROM ({u}) s ORDER BY {pk}, owner"
            ).format(e=temp_name(table), pk=pk_plain, u=sql.SQL(" UNION ALL ").join(sources)),
            {"owners": owners, "pseudonyms": pseudonyms},
        )
        counts[table] = int(cur.rowcount)
        _analyse(cur, table)
    for table in graph.referenced:  # rows the erased rows point to: reached from their children
        pk = graph.primary_keys[table]
        sources = []
        for fk in graph.pointers_to(table):
            join_ref = sql.SQL(" AND ").join(
                sql.SQL("c.{} = t.{}").format(sql.Identifier(cc), sql.Identifier(pc))
                for cc, pc in zip(fk.child_columns, fk.parent_columns, strict=True)
            )
            join_pk = sql.SQL(" AND ").join(
                sql.SQL("c.{0} = e.{0}").format(sql.Identifier(c)) for c in graph.primary_keys[fk.child]
            )
            sources.append(
                sql.SQL("SELECT {pk}, e.owner FROM {t} t JOIN {c} c ON {ref} JOIN {e} e ON {jpk}").format(
                    pk=sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in pk),
                    t=relation(table),
                    c=relation(fk.child),
                    ref=join_ref,
                    e=temp_name(fk.child),
                    jpk=join_pk,
                )
            )
        pk_plain = sql.SQL(", ").join(sql.Identifier(c) for c in pk)
        union = sql.SQL(" UNION ALL ").join(sources)
        if policy.tables[table].erasure.action == "delete":  # type: ignore[union-attr]
            # only rows nothing else will reference once the person's deleted rows are gone
            union = sql.SQL("SELECT s.* FROM ({u}) s JOIN {t} t ON {m} WHERE {free}").format(
                u=union,
                t=relation(table),
                m=sql.SQL(" AND ").join(sql.SQL("s.{0} = t.{0}").format(sql.Identifier(c)) for c in pk),
                free=_unreferenced_after(graph, policy, table),
            )
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(temp_name(table)))
        cur.execute(
            sql.SQL(
                "CREATE TEMP TABLE {e} ON COMMIT DROP AS"
                " SELECT DISTINCT ON ({pk}) {pk}, owner FROM ({u}) s ORDER BY {pk}, owner"
            ).format(e=temp_name(table), pk=pk_plain, u=union)
        )
        counts[table] = int(cur.rowcount)
        _analyse(cur, table)
    return counts


def _analyse(cur: psycopg2.extensions.cursor, table: str) -> None:
    # A temp table has no statistics: the planner then guesses a thousand rows and joins a partitioned table
    # by hashing all of it (0.8 s for visitor_logs' 500k rows) instead of probing its primary key (1 ms).
    cur.execute(sql.SQL("ANALYZE {}").format(temp_name(table)))


def _unreferenced_after(graph: Graph, policy: Policy, table: str) -> sql.Composable:
    """Rows `t` of a referenced table that no row will point at after the erasure: every row pointing
    at it is one this erasure deletes (listed in its lethe_erase_ table, of a table erased by deleting)."""
    parts: list[sql.Composable] = []
    erased = set(graph.tables) | set(graph.referenced)
    for fk in graph.all_foreign_keys:
        if fk.parent != table:
            continue
        ref = sql.SQL(" AND ").join(
            sql.SQL("x.{} = t.{}").format(sql.Identifier(cc), sql.Identifier(pc))
            for cc, pc in zip(fk.child_columns, fk.parent_columns, strict=True)
        )
        child = policy.tables.get(fk.child)
        if fk.child in erased and child and child.erasure and child.erasure.action == "delete" and fk.child != table:
            pk = graph.primary_keys[fk.child]
            ref = sql.SQL("{} AND NOT EXISTS (SELECT 1 FROM {} y WHERE {})").format(
                ref,
                temp_name(fk.child),
                sql.SQL(" AND ").join(sql.SQL("y.{0} = x.{0}").format(sql.Identifier(c)) for c in pk),
            )
        parts.append(sql.SQL("NOT EXISTS (SELECT 1 FROM {} x WHERE {})").format(relation(fk.child), ref))
    return sql.SQL(" AND ").join(parts) if parts else sql.SQL("true")


def rows_per_owner(cur: psycopg2.extensions.cursor, graph: Graph) -> dict[str, dict[str, int]]:
    """owner -> table -> rows linked to that owner."""
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for table in [*graph.tables, *graph.referenced]:
        cur.execute(sql.SQL("SELECT owner, count(*) FROM {} GROUP BY owner").format(temp_name(table)))
        for owner, n in cur.fetchall():
            out[str(owner)][table] = int(n)
    return dict(out)


# --- identifiers and free text ---------------------------------------------------------------


@dataclass
class Subject:
    """One person found in the subject table: the key and the identifiers to search for."""

    user_id: str  # the subject key's value, as text
    identifiers: dict[str, str]  # kind -> stored value (email, phone, username)
    footprint: Any = None  # lethe.residue.Footprint, read from the person's rows before they go
    # Per table, the columns where the batch's scanner pass before the erasure found anyone of the batch:
    # the sweep and the post-condition read only these (an erasure deletes and masks; it writes no identifier).
    scanned: dict[str, set[str]] | None = None
    pseudonym: str | None = None  # the keyed subject pseudonym: finds rows whose link retention cut

    def search_terms(self) -> list[str]:
        """Spellings of the identifiers as they may appear in free text, lowercased."""
        terms: set[str] = set()
        for kind, value in self.identifiers.items():
            if not value or kind == "user_id":
                continue
            terms.add(value.strip().lower())
            if kind == "phone":
                norm = normalise("phone", value)
                terms |= {norm, norm.lstrip("+")}
                last = value.strip().split()[-1] if value.strip() else ""
                if len(re.sub(r"\D", "", last)) >= 7:
                    terms.add(last)
        return sorted(t for t in terms if len(t) >= 3)


def _matches(kind: str, given: str) -> str | None:
    """The spelling an identifier is compared in: lethe.residue's normalisation (email and username
    NFKC case-folded, phones as E.164 in any format, with or without country code or trunk zero)."""
    if kind == "user_id":  # the subject key, any type: an integer in one spelling, others as given
        return normalise("user_id", given) if given.strip() else None
    return residue.normalise(kind, given)


def resolve(cur: psycopg2.extensions.cursor, policy: Policy, lookups: list[tuple[str, str]]) -> list[Subject | None]:
    """Find the person each (kind, identifier) names, in any case or format; None where nobody matches.

    SQL narrows (the exact spelling through the unique index first; then lower-case, or a phone's
    national digits); Python confirms with the scanner's normalisation.
    """
    subject = policy.subject
    columns = {kind: col for kind, col in subject.identifiers.items() if kind != "user_id"}
    key_type = sql.SQL(relations.subject_key_type(cur, policy))
    select = sql.SQL(", ").join(
        [sql.SQL("{}::text").format(sql.Identifier(subject.key))]
        + [sql.SQL("{}::text").format(sql.Identifier(c)) for c in columns.values()]
    )
    wanted: dict[str, set[str]] = defaultdict(set)
    raw: dict[str, set[str]] = defaultdict(set)
    for kind, value in lookups:
        norm = _matches(kind, value) if subject.identifiers.get(kind) else None  # type: ignore[call-overload]
        if norm is not None:
            wanted[kind].add(norm)
            raw[kind].add(value.strip())
    found: dict[tuple[str, str], Subject] = {}

    def fetch(kind: str, where: sql.Composable, params: list[Any]) -> None:
        cur.execute(sql.SQL("SELECT {} FROM {} WHERE {}").format(select, relation(subject.table), where), params)
        for row in cur.fetchall():
            person = Subject(str(row[0]), dict(zip(columns, row[1:], strict=True)))
            person.identifiers["user_id"] = str(row[0])
            stored = _matches(kind, person.identifiers.get(kind) or "")
            if stored in wanted[kind]:
                found.setdefault((kind, stored), person)

    for kind, norms in wanted.items():
        col = sql.Identifier(subject.identifiers[kind])  # type: ignore[index]
        if kind == "user_id":
            fetch(kind, sql.SQL("{} = ANY(%s::text[]::{}[])").format(col, key_type), [sorted(norms)])
            continue
        if kind == "phone":  # stored phones vary in format: narrow by the national number's digits
            tails = sorted({_national(v) for v in norms})
            where = sql.SQL("right(regexp_replace({}, '[^0-9]', '', 'g'), %s) = ANY(%s)").format(col)
            for length in sorted({len(t) for t in tails}):
                fetch(kind, where, [length, [t for t in tails if len(t) == length]])
            continue
        fetch(kind, sql.SQL("{} = ANY(%s)").format(col), [sorted(raw[kind] | norms)])  # the unique index
        missing = sorted(n for n in norms if (kind, n) not in found)
        if missing:  # stored in another case: one pass over the column
            fetch(kind, sql.SQL("lower({}) = ANY(%s)").format(col), [sorted({m.lower() for m in missing})])
    return [
        found.get((kind, n)) if (n := _matches(kind, value) if kind in wanted else None) else None
        for kind, value in lookups
    ]


def _national(e164: str) -> str:
    """The national significant number of an E.164 phone (its digits without the country code)."""
    import phonenumbers

    number = phonenumbers.parse(e164, None)
    return str(number.national_number)


def mention_pattern(terms: list[str]) -> re.Pattern[str]:
    """A term counts as mentioned when it is not part of a longer email, name or number.

    An @ before it is allowed when it starts a handle (@name), not when it ends an email's local part.
    """
    alternatives = "|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True))
    return re.compile(
        rf"(?<![A-Za-z0-9._%+-])(?<![A-Za-z0-9._%+-]@)(?:{alternatives})(?![A-Za-z0-9_@-])(?!\.[A-Za-z0-9])",
        re.IGNORECASE,
    )


def _like_escape(term: str) -> str:
    return "%" + term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def free_text_columns(policy: Policy) -> list[tuple[str, str]]:
    return [(table, column) for table, rule in policy.tables.items() for column in rule.free_text]


def find_mentions(
    cur: psycopg2.extensions.cursor,
    graph: Graph,
    policy: Policy,
    people: list[Subject],
    exclude_linked: bool = True,
) -> dict[tuple[str, str], list[tuple[tuple[Any, ...], str, set[str]]]]:
    """(table, column) -> [(primary key, text, owners mentioned)] for rows not themselves being erased.

    SQL narrows with ILIKE; Python confirms with word boundaries, so 'al' does not match 'also'.
    Rows of someone under an active legal hold are evidence: nobody else's erasure touches them (the
    residue sweep counts them as waiting for the hold's release).
    """
    term_owner: dict[str, set[str]] = defaultdict(set)
    for person in people:
        for term in person.search_terms():
            term_owner[term].add(person.user_id)
    out: dict[tuple[str, str], list[tuple[tuple[Any, ...], str, set[str]]]] = {}
    if not term_owner:
        return out
    indexes.warn_if_missing(cur, policy)
    pattern = mention_pattern(list(term_owner))
    likes = [_like_escape(t) for t in term_owner]
    for table, column in free_text_columns(policy):
        pk = graph.primary_keys.get(table)
        if pk is None:
            continue
        pk_cols = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in pk)
        query = sql.SQL("SELECT {pk}, t.{c} FROM {t} t WHERE t.{c} ILIKE ANY(%s)").format(
            pk=pk_cols, c=sql.Identifier(column), t=relation(table)
        )
        if exclude_linked and table in graph.tables and policy.tables[table].erasure.action == "delete":  # type: ignore[union-attr]
            match_pk = sql.SQL(" AND ").join(sql.SQL("e.{0} = t.{0}").format(sql.Identifier(c)) for c in pk)
            query += sql.SQL(" AND NOT EXISTS (SELECT 1 FROM {e} e WHERE {m})").format(e=temp_name(table), m=match_pk)
        subject = policy.tables[table].subject
        if subject:
            # compared in the key's type, as the hold's own rows are: a hold on a citext key holds every spelling
            query += sql.SQL(" AND NOT coalesce(t.{s} IN ({held}), false)").format(
                s=sql.Identifier(subject), held=holds.active_keys_sql(graph.key_type)
            )
        cur.execute(query, (likes,))
        hits = []
        for row in cur.fetchall():
            text = row[-1] or ""
            owners = {o for m in pattern.finditer(text) for o in term_owner[m.group(0).lower()]}
            if owners:
                hits.append((tuple(row[:-1]), text, owners))
        if hits:
            out[(table, column)] = hits
    return out


def redact(text: str, terms: list[str], replacement: str = "[erased]") -> str:
    return mention_pattern(terms).sub(replacement, text)
