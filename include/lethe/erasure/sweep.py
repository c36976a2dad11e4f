"""Handle everything the residue scanner still finds of the people being erased, after the plan ran.

The plan erases what the foreign keys and free-text columns link to a person.
The scanner (lethe.residue) finds the rest by value; each row found is handled
by what it is, never by blocking the erasure:

- a row no one else owns (subject link empty) in a table the policy erases by
  deleting and no foreign key points to, such as an anonymous visitor log carrying
  the person's cookie, IP or email in a URL: deleted;
- a row no one owns in a table other rows point to (a team whose owner_email is the
  person's): masked like any other, never deleted, for deleting it would take the
  rows pointing to it with it (ON DELETE CASCADE: other people's) or fail the erasure;
- any other row (another person's, or a row the policy keeps): every column in
  which the person appears is masked with lethe.residue.redact_text: an IP
  truncated to its network, JSON redacted value by value, text redacted span by
  span (a structured value that is only the identifier becomes `[erased]`);
- a column the policy keeps for a kept row (`erasure.keep`, with its reason):
  left as it is, and counted as kept;
- a row of someone under an active legal hold: never modified by another
  person's erasure; counted as waiting for the hold's release;
- another person's own name column equal to the erased person's name: theirs, left alone.

Lethe's own erasure records (purpose `erasure_record`) are not touched.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import psycopg2.extensions
from lethe import holds, residue
from lethe.connections import pseudonym_key_or_local
from lethe.policy import Policy
from psycopg2 import sql


def held_people(
    cur: psycopg2.extensions.cursor, policy: Policy, hits: list[residue.Hit], key: bytes | None = None
) -> set[str]:
    """The owners (owner_of) of `hits` under an active hold (compared in the key's type: a citext key in any
    case), a row whose link retention cut (`pseudonym:<p>`) by its person's keyed pseudonym. `key`: the
    pseudonym key, default pseudonym_key_or_local()."""
    owners = {o for o in map(owner_of, hits) if o is not None}
    held = holds.held_spellings(cur, policy, owners)
    if held and any(o.startswith(holds.CUT_OWNER) for o in owners):
        held |= {holds.CUT_OWNER + p for p in holds.held_pseudonyms(cur, policy, key or pseudonym_key_or_local())}
    return held


def referenced_tables(cur: psycopg2.extensions.cursor) -> set[int]:
    """The oids of every table a foreign key points to, each partition of a partitioned one included."""
    cur.execute(
        "SELECT confrelid FROM pg_constraint WHERE contype = 'f' UNION SELECT t.relid FROM pg_constraint c,"
        " pg_partition_tree(c.confrelid) t WHERE c.contype = 'f'"  # the tree is empty for a plain table
    )
    return {int(oid) for (oid,) in cur.fetchall()}


def scanned_tables(cur: psycopg2.extensions.cursor, policy: Policy) -> list[residue.Table]:
    """The tables of the policy's schemas but Lethe's own erasure records."""
    records = {t for t, rule in policy.tables.items() if rule.purpose == "erasure_record"}
    return [
        t for t in residue.text_tables(cur, residue.policy_schemas(cur, policy), policy.tables) if t.name not in records
    ]


def scanned_columns(people: list[Any]) -> dict[str, set[str]] | None:
    """The columns the batch's scanner pass found the people in (discovery.Subject.scanned); None (read every
    column) when a person has no such pass."""
    out: dict[str, set[str]] = {}
    for person in people:
        if person.scanned is None:
            return None
        for table, columns in person.scanned.items():
            out.setdefault(table, set()).update(columns)
    return out


def subject_links(policy: Policy) -> dict[str, list[str]]:
    """Per table, the columns that say whose a row is: the subject link, then the keyed pseudonym that
    replaces it once retention cut the link (a cut row is still someone's, never an anonymous one)."""
    links = {
        t: [rule.subject, *([rule.link_pseudonym] if rule.link_pseudonym else [])]
        for t, rule in policy.tables.items()
        if rule.subject
    }
    links[holds.HOLDS] = ["subject_key"]  # a hold's own row belongs to the held person (its key as text)
    return links


def owner_of(hit: residue.Hit) -> str | None:
    """The row's owner: its subject key, or `pseudonym:<value>` for a row whose link was cut (the person
    being erased had theirs deleted by pseudonym already, so it is someone else's), or None (no one's)."""
    if hit.extra and hit.extra[0] is not None:
        return str(hit.extra[0])
    if len(hit.extra) > 1 and hit.extra[1] is not None:
        return f"{holds.CUT_OWNER}{hit.extra[1]}"
    return None


def own_names(policy: Policy) -> dict[str, set[str]]:
    """Name columns: another person's own name there is theirs, even when it equals the erased person's."""
    return {t: {c for c, cls in r.columns.items() if cls == "name"} for t, r in policy.tables.items()}


def _relevant(hit: residue.Hit, people: set[str], owner: str | None, names: dict[str, set[str]]) -> dict[str, set[str]]:
    someone_else = owner is not None and owner not in people
    return {
        c: set(o) & people
        for c, o in hit.owners.items()
        if set(o) & people and not (someone_else and c in names.get(hit.table.name, set()))
    }


def kept_columns(policy: Policy) -> dict[str, set[str]]:
    """Per kept or pseudonymised table, the personal columns its kept rows keep as they are."""
    return {t: set(r.erasure.keep) for t, r in policy.tables.items() if r.erasure and r.erasure.action != "delete"}


def _masked(index: residue.Index, column: residue.Column, value: str, only: set[str]) -> tuple[sql.Composable, Any]:
    """(SET expression, parameter) masking the people of `only` in one column's value (lethe.residue.redact_text:
    the same replacement as in backups and restores; an IP becomes its network, JSON stays JSON)."""
    new = residue.redact_text(index, value, only)[0]
    return sql.SQL("{} = %s::{}").format(sql.Identifier(column.name), sql.SQL(column.type)), new  # type: pg catalog


def sweep(
    cur: psycopg2.extensions.cursor,
    policy: Policy,
    index: residue.Index,
    people: set[str],
    only: dict[str, set[str]] | None = None,
    only_tables: set[str] | None = None,
    tables: list[residue.Table] | None = None,
    since: int | None = None,
) -> dict[str, dict[str, int]]:
    """Handle every row where one of `people` still appears; per person, `action:table.column` -> rows.

    `only`: the columns to read per table (those where the pass before the erasure found the batch);
    all when None. `only_tables`: the tables to read (after a hold's release); all when None. `tables`:
    these tables instead of the policy's schemas', and `since`: only the rows this transaction (or a later
    one) wrote (lethe.erasure.side_effects).
    """
    kept = kept_columns(policy)
    names = own_names(policy)
    pointed_to = referenced_tables(cur)
    out: dict[str, Counter[str]] = defaultdict(Counter)
    if tables is None:
        tables = [t for t in scanned_tables(cur, policy) if only_tables is None or t.name in only_tables]
    hits = list(residue.scan_rows(cur, tables, index, subject_links(policy), only, since=since))
    held = held_people(cur, policy, hits)
    for hit in hits:
        rule = policy.tables.get(hit.table.name)
        owner = owner_of(hit)
        found = _relevant(hit, people, owner, names)
        if not found:
            continue
        where = sql.SQL("tableoid = %s AND ctid = %s::tid")
        if owner is not None and owner in held and owner not in people:
            action = {c: "waiting_for_hold" for c in found}
        elif (
            rule
            and rule.erasure
            and rule.erasure.action == "delete"
            and (owner is None or owner in people)
            and (owner is not None or hit.tableoid not in pointed_to)
        ):
            cur.execute(sql.SQL("DELETE FROM {} WHERE {}").format(hit.table.ident, where), (hit.tableoid, hit.ctid))
            action = {c: "deleted" for c in found}
        else:
            keep = kept.get(hit.table.name, set())
            columns = {c.name: c for c in hit.table.columns}
            sets, params = [], []
            action = {}
            for name, mine in found.items():
                if name in keep:
                    action[name] = "kept"
                    continue
                expr, param = _masked(index, columns[name], hit.values[name], mine)
                sets.append(expr)
                params.append(param)
                action[name] = "masked"
            if sets:
                cur.execute(
                    sql.SQL("UPDATE {} SET {} WHERE {}").format(hit.table.ident, sql.SQL(", ").join(sets), where),
                    (*params, hit.tableoid, hit.ctid),
                )
        for name, mine in found.items():
            for person in mine:
                out[person][f"{action[name]}:{hit.table.name}.{name}"] += 1
    return {p: dict(sorted(c.items())) for p, c in out.items()}


def left(
    cur: psycopg2.extensions.cursor,
    policy: Policy,
    index: residue.Index,
    people: set[str],
    only: dict[str, set[str]] | None = None,
    tables: list[residue.Table] | None = None,
    since: int | None = None,
) -> tuple[dict[str, int], dict[str, int]]:
    """After the sweep: (rows per `table.column` still holding the people, outside what is allowed; allowed rows).

    Allowed: a column the policy keeps, and rows of someone under an active hold. `only`, `tables` and
    `since` as for `sweep`.
    """
    kept = kept_columns(policy)
    names = own_names(policy)
    residue_left: Counter[str] = Counter()
    allowed: Counter[str] = Counter()
    read = scanned_tables(cur, policy) if tables is None else tables
    hits = list(residue.scan_rows(cur, read, index, subject_links(policy), only, since=since))
    held = held_people(cur, policy, hits)
    for hit in hits:
        owner = owner_of(hit)
        for name in _relevant(hit, people, owner, names):
            key = f"{hit.table.name}.{name}"
            if name in kept.get(hit.table.name, set()) or (owner in held and owner not in people):
                allowed[key] += 1
            else:
                residue_left[key] += 1
    return dict(sorted(residue_left.items())), dict(sorted(allowed.items()))
