"""Processors in the workflows: erasure (subject_erasure) and objection (processor_objections).

An erasure captures the identifiers processors need (`remember`, in the erasure's own
transaction), then one mapped task per processor calls it for every open request of the run
(`erase_in`). Each call's receipt is upserted into processor_receipts and appended to the
ledger. A processor that cannot be reached leaves a `pending` receipt: the task raises so
Airflow retries it with backoff, and on its last try returns instead, so the run succeeds and
the request stays open (`awaiting_processors`) until a later run gets a confirmation or the
deadline alert fires. Identifiers are read from the database at call time and never leave
the task: not in logs, XComs or exceptions.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

import psycopg2.extensions

from lethe import ledger
from lethe.db import transaction
from lethe.policy import Policy
from lethe.processors.base import (
    DONE,
    Credentials,
    MissingIdentifier,
    Person,
    ProcessorUnavailable,
    Receipt,
    connector,
)

log = logging.getLogger(__name__)

CredentialsFor = Callable[[str], Credentials | None]
OBJECTION_BATCH = 10_000


def retry_args() -> dict[str, Any]:
    """Airflow retry settings of the per-processor tasks: LETHE_PROCESSOR_RETRIES (4) and
    LETHE_PROCESSOR_RETRY_SECONDS (60), doubling each time up to an hour."""
    retries = int(os.environ.get("LETHE_PROCESSOR_RETRIES", "4"))
    delay = int(os.environ.get("LETHE_PROCESSOR_RETRY_SECONDS", "60"))
    return {
        "retries": retries,
        "retry_delay": timedelta(seconds=delay),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(hours=1),
    }


def erasure_targets(policy: Policy) -> list[str]:
    return list(policy.processors)


def objection_targets(policy: Policy) -> list[str]:
    return [name for name, p in policy.processors.items() if p.on_objection]


def remember(cur: psycopg2.extensions.cursor, policy: Policy, works: Iterable[Any]) -> None:
    """Keep, with each erased request, the identifiers its processors know the person by."""
    kinds = {p.identifier for p in policy.processors.values()}
    if not kinds:
        return
    for w in works:
        if w.outcome != "erased" or w.subject is None:
            continue
        found = {**w.subject.identifiers, "user_id": str(w.subject.user_id)}
        ids = {k: str(found[k]) for k in sorted(kinds) if found.get(k)}
        cur.execute(
            "UPDATE erasure_requests SET processor_identifiers = %s WHERE request_id = %s",
            (json.dumps(ids), w.request_id),
        )


def _record(cur: psycopg2.extensions.cursor, cause: str, ref: str, pseudonym: str | None, receipt: Receipt) -> None:
    cur.execute(
        """
        INSERT INTO processor_receipts (cause, subject_ref, processor, status, job_id, error, detail)
        VALUES (%s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (cause, subject_ref, processor) DO UPDATE SET
            status = EXCLUDED.status, job_id = coalesce(EXCLUDED.job_id, processor_receipts.job_id),
            error = EXCLUDED.error, detail = EXCLUDED.detail,
            attempts = processor_receipts.attempts + 1, updated_at = now()
        """,
        (cause, ref, receipt.processor, receipt.status, receipt.job_id, receipt.error, json.dumps(receipt.detail)),
    )
    entry = {"cause": cause, "ref": ref, **receipt.as_dict()}
    if pseudonym:
        entry["subject_pseudonym"] = pseudonym
    ledger.append(cur, f"processor_{cause}", entry)


def _call(conn: Any, name: str, person: Person) -> Receipt:
    try:
        return conn.erase(person)  # type: ignore[no-any-return]
    except ProcessorUnavailable as exc:
        return Receipt(name, "pending", error=str(exc))
    except MissingIdentifier as exc:  # retrying cannot help: the provider cannot know them by it either
        return Receipt(name, "skipped", error=str(exc))


def _finish(name: str, counts: Counter[str], final_try: bool) -> dict[str, Any]:
    summary = {"processor": name, **dict(counts)}
    log.info("processor %s: %s", name, json.dumps(summary, sort_keys=True))
    if counts["pending"] and not final_try:
        raise ProcessorUnavailable(f"{name}: {counts['pending']} call(s) not confirmed; Airflow retries with backoff")
    return summary


def erase_in(
    name: str, run_id: str, db_url: str, policy: Policy, credentials: CredentialsFor, *, final_try: bool
) -> dict[str, Any]:
    """Erase, at one processor, every open erasure request of this run it has not confirmed."""
    spec = policy.processors[name]
    with transaction(db_url) as cur:
        cur.execute(
            """
            SELECT r.request_id::text, r.subject_pseudonym, r.processor_identifiers
            FROM erasure_requests r
            LEFT JOIN processor_receipts p
              ON p.cause = 'erasure' AND p.subject_ref = r.request_id::text AND p.processor = %s
            WHERE r.claimed_by = %s AND r.processor_identifiers IS NOT NULL AND NOT r.dry_run
              AND r.status IN ('verified', 'awaiting_processors')
              AND (p.status IS NULL OR p.status <> ALL(%s))
            ORDER BY r.due_at, r.request_id
            """,
            (name, run_id, list(DONE)),
        )
        rows = cur.fetchall()
    creds = credentials(spec.connection)
    conn = connector(name, spec, creds) if creds is not None else None
    counts: Counter[str] = Counter()
    for request_id, pseudonym, ids in rows:
        if conn is None:
            receipt = Receipt(name, "skipped", error=f"no Airflow connection {spec.connection}: not configured")
        else:
            receipt = _call(conn, name, Person(dict(ids)))
        counts[receipt.status] += 1
        with transaction(db_url) as cur:
            _record(cur, "erasure", request_id, pseudonym, receipt)
    return _finish(name, counts, final_try)


def object_in(
    name: str, db_url: str, policy: Policy, credentials: CredentialsFor, *, final_try: bool
) -> dict[str, Any]:
    """Remove from one processor everyone who objected to (or withdrew) a purpose it is used for."""
    from lethe.relations import relation

    spec = policy.processors[name]
    creds = credentials(spec.connection)
    if creds is None:  # nothing recorded: once the connection exists, every objection is still sent
        log.warning("processor %s: no Airflow connection %s; objections not sent", name, spec.connection)
        return {"processor": name, "not_configured": 1}
    subject = policy.subject
    clock = policy.clock_consent_ended()
    column = subject.identifiers.get(spec.identifier, subject.key)  # type: ignore[call-overload]
    from psycopg2 import sql

    query = sql.SQL(
        """
        SELECT c.consent_id::text, c.{purpose}, s.{key}::text, s.{column}::text
        FROM {consents} c JOIN {subject} s ON s.{key} = c.{link}
        LEFT JOIN processor_receipts p
          ON p.cause = 'objection' AND p.subject_ref = c.consent_id::text AND p.processor = %s
        WHERE c.{purpose} = ANY(%s) AND least({ended}) IS NOT NULL
          AND (p.status IS NULL OR p.status <> ALL(%s))
        ORDER BY c.consent_id LIMIT %s
        """
    ).format(
        key=sql.Identifier(subject.key),
        column=sql.Identifier(column),
        consents=relation(clock.table),
        subject=relation(subject.table),
        link=sql.Identifier(clock.subject),
        purpose=sql.Identifier(clock.purpose),
        ended=sql.SQL(", ").join(sql.SQL("c.{}").format(sql.Identifier(c)) for c in clock.ended),
    )
    with transaction(db_url) as cur:
        cur.execute(query, (name, list(spec.on_objection), list(DONE), OBJECTION_BATCH))
        rows = cur.fetchall()
    conn = connector(name, spec, creds)
    counts: Counter[str] = Counter()
    for consent_id, purpose, user_id, value in rows:
        receipt = _call(conn, name, Person({"user_id": user_id, spec.identifier: value or ""}))
        receipt.detail = {**receipt.detail, "purpose": purpose}
        counts[receipt.status] += 1
        with transaction(db_url) as cur:
            _record(cur, "objection", consent_id, None, receipt)
    return _finish(name, counts, final_try)


def receipts(cur: psycopg2.extensions.cursor, request_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Per request: each processor's latest receipt (for the certificate), and whether it needs them."""
    cur.execute(
        "SELECT request_id::text FROM erasure_requests WHERE request_id = ANY(%s::uuid[])"
        " AND processor_identifiers IS NOT NULL",
        (request_ids,),
    )
    out: dict[str, dict[str, Any]] = {rid: {} for (rid,) in cur.fetchall()}
    cur.execute(
        "SELECT subject_ref, processor, status, job_id, error, attempts, detail,"
        " to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
        " FROM processor_receipts WHERE cause = 'erasure' AND subject_ref = ANY(%s)",
        (request_ids,),
    )
    for ref, processor, status, job_id, error, attempts, detail, at in cur.fetchall():
        out.setdefault(ref, {})[processor] = {
            "status": status,
            "at": at,
            "job_id": job_id,
            "attempts": attempts,
            "error": error,
            "detail": detail,
        }
    return out


def all_done(policy: Policy, got: dict[str, Any] | None) -> bool:
    """Every processor of the policy has a receipt that lets the request close."""
    if got is None:  # the request needed no processor (nobody found, or erased under another request)
        return True
    return all((got.get(name) or {}).get("status") in DONE for name in policy.processors)


def certificate_entries(policy: Policy, got: dict[str, Any] | None) -> dict[str, Any]:
    """One certificate entry per processor: its receipt, or `pending` when it has not been called yet."""
    if got is None:
        return {}
    return {name: got.get(name) or {"status": "pending", "attempts": 0} for name in policy.processors}
