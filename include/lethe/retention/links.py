"""Find a person's rows after a retention rule cut their subject link (strategy pseudonym_link).

Such a row keeps only the subject's keyed pseudonym (HMAC with lethe_pseudonym_key). PostgreSQL cannot
compute it, and a stored map from subject key to pseudonym would be the very join to the name the rule
removed. So each retention run computes, in memory, the pseudonyms of the few people the rules must still
recognise in those rows: people whose consent ended (objections), whose account closed, and who are under
legal hold. They travel as query parameters (never logged, never in an XCom) and are gone with the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg2.extensions
from lethe import holds
from lethe.connections import pseudonym_key_or_local
from lethe.policy import Policy
from lethe.pseudonym import subject_pseudonym
from lethe.relations import key_text_is_canonical, relation, stored_key
from psycopg2 import sql


@dataclass
class Links:
    """Subject keys (as text) with their pseudonyms, and the pseudonyms of the people under hold."""

    key: bytes | None = None
    subjects: list[str] = field(default_factory=list)
    pseudonyms: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)

    def held_pseudonyms(self, held_keys: list[str]) -> list[str]:
        """The pseudonyms of the subjects held now (the executor reads holds per batch)."""
        return [subject_pseudonym(self.key, k) for k in held_keys] if self.key else []

    def params(self) -> dict[str, list[str]]:
        return {"link_subjects": self.subjects, "link_pseudonyms": self.pseudonyms, "held_pseudonyms": self.held}


def needed(policy: Policy) -> bool:
    return any(t.link_pseudonym for t in policy.tables.values())


def load(cur: psycopg2.extensions.cursor, policy: Policy, key: bytes | None = None) -> Links:
    """The people whose cut-link rows the policy's event clocks and holds must still recognise."""
    if not needed(policy):
        return Links()
    key = key or pseudonym_key_or_local()
    events = {r.event for t in policy.tables.values() if t.link_pseudonym for r in t.retention if r.event}
    # The clock's people as its rows spell their keys, and, on a key whose equal values are not equal as text
    # (citext), also as the subject row stores each (relations.stored_key): the spelling the executor made her
    # cut-link rows' pseudonym of, whatever the case her consent or account row spells her key in.
    canonical = key_text_is_canonical(cur, policy)

    def spellings(column: sql.Composable) -> sql.Composable:
        text = sql.SQL("{}::text").format(column)
        return text if canonical else sql.SQL("{}, {}").format(text, stored_key(policy, column))

    subjects: set[str] = set()
    if "consent_ended" in events:
        clock = policy.clock_consent_ended()
        ended = sql.SQL(" OR ").join(sql.SQL("c.{} IS NOT NULL").format(sql.Identifier(c)) for c in clock.ended)
        cur.execute(
            sql.SQL("SELECT DISTINCT {} FROM {} c WHERE {}").format(
                spellings(sql.SQL("c.{}").format(sql.Identifier(clock.subject))), relation(clock.table), ended
            )
        )
        subjects |= {k for row in cur.fetchall() for k in row if k is not None}
    if "account_closed" in events:
        closed = policy.clock_account_closed()
        cur.execute(
            sql.SQL("SELECT {} FROM {} c WHERE c.{} IS NOT NULL").format(
                spellings(sql.SQL("c.{}").format(sql.Identifier(closed.subject))),
                relation(closed.table),
                sql.Identifier(closed.column),
            )
        )
        subjects |= {k for row in cur.fetchall() for k in row if k is not None}
    ordered = sorted(subjects)
    held = sorted(holds.held_pseudonyms(cur, policy, key))
    return Links(key, ordered, [subject_pseudonym(key, k) for k in ordered], held)
