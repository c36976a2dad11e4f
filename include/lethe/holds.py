"""Legal holds: Lethe's own record of whose data must be kept, for any kind of subject key.

A hold names its subject by the value of the policy's subject key, as text, with no
foreign key into the platform's tables. Queries compare the platform's key cast to the
key column's own type, so an index on the platform's link column still drives them.
"""

from __future__ import annotations

import psycopg2.extensions
import psycopg2.extras
from psycopg2 import sql

from lethe.db import table
from lethe.policy.model import Policy
from lethe.pseudonym import subject_pseudonym
from lethe.relations import key_text_is_canonical, stored_key, subject_key_type

HOLDS = "legal_holds"
# The owner of a row whose link retention cut, as the erasure sweep and the audit name it: this, then its pseudonym
CUT_OWNER = "pseudonym:"
HELD_PSEUDONYMS = "held_pseudonyms"  # the keyed pseudonyms of active holds, for the audit's SQL (migration 130)


def key_type(cur: psycopg2.extensions.cursor, policy: Policy) -> str:
    """The SQL type of the subject key column (format_type), to cast held keys to."""
    return subject_key_type(cur, policy)


def active_keys_sql(type_: str) -> sql.Composable:
    """The subject keys under an active hold, typed like the subject key."""
    return sql.SQL("SELECT h.subject_key::{} FROM {} h WHERE h.released_at IS NULL").format(
        sql.SQL(type_), table(HOLDS)
    )


def active_keys(cur: psycopg2.extensions.cursor) -> list[str]:
    cur.execute(sql.SQL("SELECT DISTINCT subject_key FROM {} WHERE released_at IS NULL").format(table(HOLDS)))
    return [str(r[0]) for r in cur.fetchall()]


def active_keys_as_stored(cur: psycopg2.extensions.cursor, policy: Policy) -> list[str]:
    """active_keys; for a key whose equal values are not equal as text (citext), each held key also as the subject
    row stores it (relations.stored_key): the spelling her keyed pseudonym is made of, so that rows whose link
    retention cut to that pseudonym are held whatever the case the hold spells her key in."""
    keys = active_keys(cur)
    if not keys or key_text_is_canonical(cur, policy):
        return keys
    held = sql.SQL("h.k::{}").format(sql.SQL(key_type(cur, policy)))
    cur.execute(sql.SQL("SELECT DISTINCT {} FROM unnest(%s::text[]) AS h(k)").format(stored_key(policy, held)), (keys,))
    return sorted(set(keys) | {str(r[0]) for r in cur.fetchall() if r[0] is not None})


def held_pseudonyms(cur: psycopg2.extensions.cursor, policy: Policy, key: bytes) -> set[str]:
    """The keyed pseudonyms of the people under an active hold: a row whose link retention cut names its person by
    that pseudonym alone, and is held as her linked rows are."""
    return {p for _, p in held_pseudonym_pairs(cur, policy, key)}


def record_held_pseudonyms(cur: psycopg2.extensions.cursor, policy: Policy, key: bytes | None = None) -> int:
    """Rewrite Lethe's held_pseudonyms: per active hold, the keyed pseudonyms of its key, as the hold spells it and,
    on a citext key, as the subject row stores it (the spellings of active_keys_as_stored, the retention executor's).
    The audit's SQL takes no parameters and cannot compute an HMAC: with these it allows a held person's rows whose
    link retention cut to her pseudonym before the hold was placed. Empty when no table of the policy cuts links
    (the key is then not read). `key`: default lethe.connections.pseudonym_key_or_local(). Returns the rows written."""
    target = table(HELD_PSEUDONYMS)
    cur.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(target))  # one rewrite at a time; reads go on
    cur.execute(sql.SQL("DELETE FROM {}").format(target))
    pairs = held_pseudonym_pairs(cur, policy, key)
    if not pairs:
        return 0
    psycopg2.extras.execute_values(
        cur,
        sql.SQL("INSERT INTO {} (hold_id, subject_pseudonym) VALUES %s ON CONFLICT DO NOTHING")
        .format(target)
        .as_string(cur),
        pairs,
    )
    return len(pairs)


def held_pseudonym_pairs(
    cur: psycopg2.extensions.cursor, policy: Policy, key: bytes | None = None
) -> list[tuple[int, str]]:
    """(hold id, keyed pseudonym) per active hold, for the spellings of its key record_held_pseudonyms writes:
    a row whose link retention cut to one of them is that hold's person's. Empty when no table of the policy cuts
    links or no hold is active (the key is then not read). `key`: default lethe.connections.pseudonym_key_or_local()."""
    if not any(t.link_pseudonym for t in policy.tables.values()):
        return []
    spellings: sql.Composable = sql.SQL("h.subject_key")
    if not key_text_is_canonical(cur, policy):
        typed = sql.SQL("h.subject_key::{}").format(sql.SQL(key_type(cur, policy)))
        spellings = sql.SQL("h.subject_key, {}").format(stored_key(policy, typed))
    cur.execute(
        sql.SQL("SELECT h.hold_id, {} FROM {} h WHERE h.released_at IS NULL AND h.subject_key IS NOT NULL").format(
            spellings, table(HOLDS)
        )
    )
    rows = cur.fetchall()
    if not rows:
        return []
    if key is None:
        from lethe.connections import pseudonym_key_or_local

        key = pseudonym_key_or_local()
    return sorted(
        {(int(hold_id), subject_pseudonym(key, str(k))) for hold_id, *keys in rows for k in keys if k is not None}
    )


def held_spellings(cur: psycopg2.extensions.cursor, policy: Policy, owners: set[str]) -> set[str]:
    """The subject keys under an active hold, as text, and of `owners` (keys as rows spell them) those the database
    finds equal to one in the key's type: on a citext key, a hold on 'Anna@x' holds her row spelt 'anna@x' too."""
    held = set(active_keys(cur))
    rest = sorted(o for o in owners if o not in held and not o.startswith(CUT_OWNER))
    if not held or not rest or key_text_is_canonical(cur, policy):
        return held
    type_ = key_type(cur, policy)
    cur.execute(
        sql.SQL("SELECT o.owner FROM unnest(%s::text[]) AS o(owner) WHERE o.owner::{} IN ({})").format(
            sql.SQL(type_), active_keys_sql(type_)
        ),
        (rest,),
    )
    return held | {str(r[0]) for r in cur.fetchall()}


def forget_subjects(
    cur: psycopg2.extensions.cursor, erased: list[tuple[str, str]], policy: Policy | None = None
) -> None:
    """(subject key, keyed pseudonym) of people just erased: their (released) holds stay as the record of a
    legal obligation, but name them only by the pseudonym; the free reference goes too. `policy`: on a key whose
    equal values are not equal as text (citext), a hold is hers when its key equals hers in the key's type, so a
    hold spelling 'anna@x' forgets her too when her row stored 'Anna@x'."""
    if erased:
        match: sql.Composable = sql.SQL("h.subject_key = v.k")
        if policy is not None and not key_text_is_canonical(cur, policy):
            match = sql.SQL("h.subject_key::{t} = v.k::{t}").format(t=sql.SQL(key_type(cur, policy)))
        psycopg2.extras.execute_values(
            cur,
            sql.SQL(
                "UPDATE {} h SET subject_key = NULL, reference = NULL, subject_pseudonym = v.p"
                " FROM (VALUES %s) v (k, p) WHERE {}"
            )
            .format(table(HOLDS), match)
            .as_string(cur),
            erased,
        )
