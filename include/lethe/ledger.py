"""The audit ledger: append-only, each entry hash-chained to the one before.

Entries name tables, rules and counts, never a raw identifier. The chain
makes a removed or edited entry detectable (`verify_chain`); anchors of its head kept
outside the database (lethe.ledger_anchor) make a removed tail detectable too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import psycopg2.extensions
from psycopg2 import sql

from lethe.db import table

GENESIS = "0" * 64


def _digest(prev_hash: str, kind: str, payload: dict[str, Any], recorded_at: str) -> str:
    body = json.dumps(
        {"prev": prev_hash, "kind": kind, "payload": payload, "at": recorded_at}, sort_keys=True, default=str
    )
    return hashlib.sha256(body.encode()).hexdigest()


def append(cur: psycopg2.extensions.cursor, kind: str, payload: dict[str, Any]) -> str:
    """Append one entry in the caller's transaction; return its hash."""
    payload = json.loads(json.dumps(payload, default=str))  # what jsonb will give back
    # One writer at a time keeps the chain linear. An advisory lock, not LOCK TABLE: that would need UPDATE or
    # DELETE privilege on the ledger, which Lethe's role does not have (docs/deployment.md).
    cur.execute("SELECT pg_advisory_xact_lock(hashtext('lethe.ledger'))")
    cur.execute(sql.SQL("SELECT entry_hash FROM {} ORDER BY entry_id DESC LIMIT 1").format(table("ledger")))
    row = cur.fetchone()
    prev_hash = row[0] if row else GENESIS
    cur.execute("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
    recorded_at = cur.fetchone()[0]  # type: ignore[index]
    entry_hash = _digest(prev_hash, kind, payload, recorded_at)
    cur.execute(
        sql.SQL(
            "INSERT INTO {} (recorded_at, kind, payload, prev_hash, entry_hash) VALUES (%s, %s, %s, %s, %s)"
        ).format(table("ledger")),
        (recorded_at, kind, json.dumps(payload), prev_hash, entry_hash),
    )
    return entry_hash


@dataclass(frozen=True)
class Head:
    seq: int  # the head's position in the chain, counted from 1 (entry_id has gaps after rollbacks)
    entry_id: int
    entry_hash: str


def head(cur: psycopg2.extensions.cursor) -> Head | None:
    """The chain's newest entry and its position, read in one snapshot; None for an empty ledger."""
    cur.execute(
        sql.SQL("SELECT count(*) OVER (), entry_id, entry_hash FROM {} ORDER BY entry_id DESC LIMIT 1").format(
            table("ledger")
        )
    )
    row = cur.fetchone()
    return Head(*row) if row else None


@dataclass
class ChainStatus:
    entries: int
    ok: bool
    first_broken_entry: int | None = None
    problem: str = ""


def verify_chain(cur: psycopg2.extensions.cursor) -> ChainStatus:
    cur.execute(
        sql.SQL(
            "SELECT entry_id, to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),"
            " kind, payload, prev_hash, entry_hash FROM {} ORDER BY entry_id"
        ).format(table("ledger"))
    )
    prev = GENESIS
    count = 0
    for entry_id, at, kind, payload, prev_hash, entry_hash in cur:
        count += 1
        if prev_hash != prev:
            return ChainStatus(count, False, entry_id, "its prev_hash does not match the entry before it")
        if _digest(prev_hash, kind, payload, at) != entry_hash:
            return ChainStatus(count, False, entry_id, "its content does not match its hash")
        prev = entry_hash
    return ChainStatus(count, True)
