"""Erasure requests: identifier validation, registration, claims and deadlines.

The raw identifier lives only in erasure_requests.identifier while the request
is open; everything downstream is keyed by request_id. Messages about a bad
identifier name the kind and the rule, never the value.
"""

from __future__ import annotations

import os
import re
import uuid
from datetime import timedelta
from typing import Any

import psycopg2.extensions
from lethe.erasure.form import FORMATS, IDENTIFIER_KINDS

OPEN_STATUSES = ("pending", "running", "failed", "held", "awaiting_processors")
DEFAULT_DEADLINE_DAYS = 30

# A request id derived from the run id, so a retried registration finds its own row.
_NAMESPACE = uuid.UUID("6f1c1c1e-8d5a-4b7e-9a3e-1e7a5e0e2a51")


# Identifier-shaped text in a note: an email, an @handle, or 7+ digits written like a phone
# number and not glued to a ticket prefix (T-2026-0001 is a reference, 98765 43210 is a phone).
_EMAIL = re.compile(r"[^\s@]+@[^\s@]+\.[A-Za-z]{2,}")
_HANDLE = re.compile(r"(?<![\w.])@[A-Za-z0-9_][A-Za-z0-9_.-]*")
_DIGITS = re.compile(r"(?<![A-Za-z0-9#/_-])\+?\(?\d[\d ().-]*\d")


class InvalidIdentifier(ValueError):
    """The identifier does not match its kind; the message names the kind and the rule only."""


class InvalidNote(ValueError):
    """A reference or reason holds identifier-shaped text; the message names the field and the rule only."""


def validate_identifier(kind: str, value: object) -> str:
    """Return the identifier stripped; raise InvalidIdentifier with a plain message (no value echoed)."""
    if kind not in FORMATS:
        raise InvalidIdentifier(f"identifier_kind must be one of {', '.join(IDENTIFIER_KINDS)}, not {kind!r}")
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise InvalidIdentifier(f"the identifier for kind {kind} must be a string")
    text = str(value).strip()
    if not text:
        raise InvalidIdentifier(f"the identifier for kind {kind} is empty")
    pattern, rule = FORMATS[kind]
    if not re.fullmatch(pattern, text):
        raise InvalidIdentifier(f"the identifier is not a valid {kind}: {rule}")
    return text


def validate_note(field: str, value: object, max_length: int) -> str | None:
    """A reference or reason, stripped (None when empty); refuses emails, @handles and phone numbers."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidNote(f"the {field} must be text")
    text = value.strip()
    if len(text) > max_length:
        raise InvalidNote(f"the {field} is longer than {max_length} characters")
    if _EMAIL.search(text):
        raise InvalidNote(f"the {field} holds an email address: write a ticket number or a plain reason, no identifier")
    if _HANDLE.search(text):
        raise InvalidNote(f"the {field} holds an @handle: write a ticket number or a plain reason, no identifier")
    for match in _DIGITS.finditer(text):
        if sum(c.isdigit() for c in match.group()) >= 7:
            raise InvalidNote(
                f"the {field} holds a number written like a phone number (7 or more digits): "
                "give a ticket number with its prefix (e.g. T-2026-0001) and no identifier"
            )
    return text or None


def deadline_days() -> int:
    """Days from receipt to due date: LETHE_ERASURE_DEADLINE_DAYS, else 30 (one month, as regulators expect)."""
    raw = os.environ.get("LETHE_ERASURE_DEADLINE_DAYS", str(DEFAULT_DEADLINE_DAYS))
    try:
        days = int(raw)
    except ValueError:
        raise ValueError(f"LETHE_ERASURE_DEADLINE_DAYS must be a whole number of days, not {raw!r}") from None
    if days < 1:
        raise ValueError("LETHE_ERASURE_DEADLINE_DAYS must be at least 1")
    return days


def request_id_for_run(run_id: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, run_id))


def register(
    cur: psycopg2.extensions.cursor,
    kind: str,
    identifier: str,
    *,
    reference: str | None = None,
    reason: str | None = None,
    dry_run: bool = False,
    request_id: str | None = None,
) -> tuple[str, bool]:
    """Record a request (or find the open one for the same identifier); return (request_id, created).

    One open request per identifier: a second submission, or a retrigger after a
    failure, resumes the open request instead of queueing a duplicate.
    """
    identifier = validate_identifier(kind, identifier)
    reference = validate_note("reference", reference, 200)
    reason = validate_note("reason", reason, 500)
    cur.execute(
        "SELECT request_id::text FROM erasure_requests WHERE identifier_kind = %s AND identifier = %s"
        " AND status = ANY(%s) AND dry_run = %s ORDER BY received_at LIMIT 1",
        (kind, identifier, list(OPEN_STATUSES), dry_run),
    )
    row = cur.fetchone()
    if row:
        return row[0], False
    request_id = request_id or str(uuid.uuid4())
    cur.execute(
        "INSERT INTO erasure_requests (request_id, identifier_kind, identifier, reference, reason, dry_run, due_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, now() + %s) ON CONFLICT (request_id) DO NOTHING",
        (request_id, kind, identifier, reference, reason, dry_run, timedelta(days=deadline_days())),
    )
    return request_id, cur.rowcount == 1


def claim_one(cur: psycopg2.extensions.cursor, request_id: str, run_id: str) -> str | None:
    """Claim a named request for this run; return its status (None when there is no such request)."""
    cur.execute(
        "UPDATE erasure_requests SET claimed_by = %s, claimed_at = now() WHERE request_id = %s RETURNING status",
        (run_id, request_id),
    )
    row = cur.fetchone()
    return row[0] if row else None


def claim_batch(cur: psycopg2.extensions.cursor, run_id: str, limit: int, stale_after: timedelta) -> int:
    """Claim up to `limit` queued requests (oldest due first) for this run; return how many.

    Held requests are retried (the hold may have been released); a request left
    'running' by a run that died is taken over once its claim is stale.
    """
    cur.execute(
        """
        UPDATE erasure_requests r SET claimed_by = %(run)s, claimed_at = now()
        FROM (
            SELECT request_id FROM erasure_requests
            WHERE (status IN ('pending', 'held', 'failed', 'awaiting_processors')
                   OR (status = 'running' AND (claimed_at IS NULL OR claimed_at < now() - %(stale)s)))
              AND (claimed_by IS DISTINCT FROM %(run)s)
            ORDER BY due_at, request_id
            LIMIT %(limit)s
            FOR UPDATE SKIP LOCKED
        ) q
        WHERE r.request_id = q.request_id
        """,
        {"run": run_id, "stale": stale_after, "limit": limit},
    )
    return int(cur.rowcount)


def claimed(cur: psycopg2.extensions.cursor, run_id: str, statuses: tuple[str, ...]) -> list[dict[str, Any]]:
    """The requests this run claimed, in the given statuses (raw identifier included: keep it in the task)."""
    cur.execute(
        "SELECT request_id::text, identifier_kind, identifier, status, dry_run, subject_pseudonym, detail"
        " FROM erasure_requests WHERE claimed_by = %s AND status = ANY(%s) ORDER BY due_at, request_id",
        (run_id, list(statuses)),
    )
    cols = ("request_id", "kind", "identifier", "status", "dry_run", "subject_pseudonym", "detail")
    return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


def overdue_or_failed(cur: psycopg2.extensions.cursor) -> dict[str, int]:
    """Counts of open requests past their due date and of failed requests (no identifiers)."""
    cur.execute(
        "SELECT count(*) FILTER (WHERE status IN ('pending', 'running', 'failed', 'awaiting_processors')"
        " AND due_at < now()),"
        " count(*) FILTER (WHERE status = 'failed'),"
        " count(*) FILTER (WHERE status = 'held' AND due_at < now())"
        " FROM erasure_requests"
    )
    overdue, failed, held = cur.fetchone()  # type: ignore[misc]
    return {"overdue": int(overdue), "failed": int(failed), "held_past_due": int(held)}
