"""Objections and withdrawn consents as first-class events: recorded, ledgered, applied by the next night.

"You may object to the processing of your personal data for the purposes i) to v) at any time."
`record` writes the objection (or the withdrawal of a consent) into the platform's consents table,
where the retention rules counting from `consent_ended:<purpose>` and the processors listing the
purpose under `on_objection` find it, and appends a ledger entry naming the purpose and the consent
row, never the person. What it then does is the policy's `objections` section (docs/policy.md).

The command line (`lethe objection record`) and the compliance page both call `submit`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import psycopg2.extensions
from psycopg2 import sql

from lethe import ledger
from lethe.db import ConfigurationError, transaction
from lethe.policy.model import Policy, load_policy
from lethe.relations import relation

Kind = Literal["objection", "withdrawal"]
KINDS: tuple[Kind, ...] = ("objection", "withdrawal")
IDENTIFIER_KINDS = ("user_id", "email", "username")


class ObjectionError(ConfigurationError):
    """An objection that cannot be recorded; the message names the field, never its value."""


@dataclass(frozen=True)
class Recorded:
    consent_id: int
    purpose: str
    kind: Kind
    at: datetime
    already: bool  # the purpose had already ended for this person: nothing changed, nothing ledgered
    effect: str  # what the policy says the objection does

    def line(self) -> str:
        if self.already:
            return f"{self.purpose}: already ended for this person (consent record {self.consent_id}); nothing changed"
        return (
            f"{self.kind} to {self.purpose} recorded (consent record {self.consent_id}), in effect from"
            f" {self.at.isoformat()}; the next retention_nightly applies it: {self.effect}"
        )


def _subject_key(cur: psycopg2.extensions.cursor, policy: Policy, kind: str, value: str) -> int:
    if kind not in IDENTIFIER_KINDS:
        raise ObjectionError(f"identifier kind must be one of {', '.join(IDENTIFIER_KINDS)}")
    column = policy.subject.identifiers.get(kind)  # type: ignore[call-overload]
    if column is None:
        raise ObjectionError(f"the policy's subject has no {kind} identifier")
    if kind == "user_id":
        try:
            value = str(int(value))
        except ValueError:
            raise ObjectionError("user_id must be a whole number") from None
    match = sql.SQL("lower({}) = lower(%s)" if kind != "user_id" else "{} = %s::bigint").format(sql.Identifier(column))
    cur.execute(
        sql.SQL("SELECT {} FROM {} WHERE {}").format(
            sql.Identifier(policy.subject.key), sql.Identifier(policy.subject.table), match
        ),
        (value.strip(),),
    )
    rows = cur.fetchall()
    if not rows:
        raise ObjectionError(f"no account has that {kind}")
    if len(rows) > 1:
        raise ObjectionError(f"more than one account has that {kind}: use user_id")
    return int(rows[0][0])


def record(
    cur: psycopg2.extensions.cursor,
    policy: Policy,
    identifier_kind: str,
    identifier: str,
    purpose: str,
    kind: Kind = "objection",
    at: datetime | None = None,
) -> Recorded:
    """Record an objection to (or the withdrawal of consent for) `purpose`, in the caller's transaction."""
    if purpose not in policy.consent_purposes:
        raise ObjectionError(f"purpose must be one of {', '.join(policy.consent_purposes)}")
    if kind not in KINDS:
        raise ObjectionError(f"kind must be one of {', '.join(KINDS)}")
    at = at or datetime.now(UTC)
    if at.tzinfo is None:
        raise ObjectionError("the time of the objection must carry a time zone")
    user_id = _subject_key(cur, policy, identifier_kind, identifier)
    column = "objected_at" if kind == "objection" else "withdrawn_at"
    consents = relation(policy.clock_consent_ended().table)
    # One writer at a time picks the next consent id (the platform's table has no sequence).
    cur.execute("SELECT pg_advisory_xact_lock(hashtext('lethe.objection'))")
    cur.execute(
        sql.SQL(
            "SELECT consent_id, least(withdrawn_at, objected_at) FROM {} WHERE user_id = %s AND purpose = %s FOR UPDATE"
        ).format(consents),
        (user_id, purpose),
    )
    row = cur.fetchone()
    effect = policy.objections[purpose].effect if purpose in policy.objections else "(the policy says nothing)"
    if row is not None and row[1] is not None:
        return Recorded(int(row[0]), purpose, kind, row[1], True, effect)
    if row is not None:
        consent_id = int(row[0])
        cur.execute(
            sql.SQL("UPDATE {} SET {} = %s WHERE consent_id = %s").format(consents, sql.Identifier(column)),
            (at, consent_id),
        )
    else:
        # Never asked (a legitimate-interest purpose such as iv) or never recorded: the objection is the record.
        cur.execute(sql.SQL("SELECT coalesce(max(consent_id), 0) + 1 FROM {}").format(consents))
        consent_id = int(cur.fetchone()[0])  # type: ignore[index]
        cur.execute(
            sql.SQL("INSERT INTO {} (consent_id, user_id, purpose, granted_at, {}) VALUES (%s, %s, %s, %s, %s)").format(
                consents, sql.Identifier(column)
            ),
            (consent_id, user_id, purpose, at, at),
        )
    ledger.append(
        cur,
        "objection",
        {
            "kind": kind,
            "purpose": purpose,
            "consent_id": consent_id,
            "at": at.isoformat(),
            "rules": [r.name for _, r in policy.objection_rules(purpose)],
            "processors": policy.objection_processors(purpose),
            "policy_version": policy.version,
            "policy_digest": policy.digest,
        },
    )
    return Recorded(consent_id, purpose, kind, at, False, effect)


def submit(
    db_url: str,
    identifier_kind: str,
    identifier: str,
    purpose: str,
    kind: Kind = "objection",
    policy: Policy | None = None,
) -> Recorded:
    """Record one objection or withdrawal now, in its own transaction (the command line and the page)."""
    policy = policy or load_policy()
    with transaction(db_url) as cur:
        return record(cur, policy, identifier_kind, identifier, purpose, kind)


def purposes(policy: Policy) -> list[dict[str, object]]:
    """Each purpose one can object to, with its clause, effect, rules, processors and what stays (for the page)."""
    out: list[dict[str, object]] = []
    for purpose in policy.consent_purposes:
        objection = policy.objections.get(purpose)
        out.append(
            {
                "purpose": purpose,
                "clause": objection.clause if objection else None,
                "effect": objection.effect if objection else None,
                "rules": [f"{t}.{r.name}" for t, r in policy.objection_rules(purpose)],
                "processors": policy.objection_processors(purpose),
                "kept": dict(objection.kept) if objection else {},
            }
        )
    return out
