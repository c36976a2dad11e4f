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

import psycopg2.extensions
from lethe.erasure import lifecycle
from lethe.erasure.form import FORMATS, IDENTIFIER_KINDS, MAX_USER_ID

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
    if not re.fullmatch(pattern, text) or (kind == "user_id" and text.isdigit() and int(text) > MAX_USER_ID):
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
    require_approval: bool = False,
    requested_by: str | None = None,
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
        (kind, identifier, list(lifecycle.OPEN), dry_run),
    )
    row = cur.fetchone()
    if row:
        return row[0], False
    request_id = request_id or str(uuid.uuid4())
    cur.execute(
        "INSERT INTO erasure_requests (request_id, identifier_kind, identifier, reference, reason, dry_run, due_at,"
        " require_approval, requested_by, status_changed_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, now() + %s, %s, %s, now()) ON CONFLICT (request_id) DO NOTHING",
        (
            request_id,
            kind,
            identifier,
            reference,
            reason,
            dry_run,
            timedelta(days=deadline_days()),
            require_approval,
            requested_by,
        ),
    )
    return request_id, cur.rowcount == 1


def overdue_or_failed(cur: psycopg2.extensions.cursor) -> dict[str, int]:
    """Counts of open requests past their due date and of failed requests (no identifiers)."""
    cur.execute(
        "SELECT count(*) FILTER (WHERE status = ANY(%s) AND status <> 'held' AND due_at < now()),"
        " count(*) FILTER (WHERE status = 'failed'),"
        " count(*) FILTER (WHERE status = 'held' AND due_at < now())"
        " FROM erasure_requests",
        (list(lifecycle.OPEN),),
    )
    overdue, failed, held = cur.fetchone()  # type: ignore[misc]
    return {"overdue": int(overdue), "failed": int(failed), "held_past_due": int(held)}
