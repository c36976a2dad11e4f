"""Finish an erasure's redactions that waited for someone else's legal hold to be released.

An erasure never changes the rows of another person under an active legal hold (they are
evidence): a mention of the erased person there is counted on the request as
`waiting_for_hold:<table>.<column>` and the certificate lists it as left unchanged. The request is
certified all the same (everything else is done), and its identifier is forgotten; what is left to
find the mention by is the tombstone's keyed pseudonyms.

Every batch run of subject_erasure calls `finish`: for each closed request still waiting, it
matches the tombstone's pseudonyms (lethe.residue.KeyedIndex) in the tables it waits on, and masks
every match in a row whose owner is no longer held, exactly as the erasure's sweep masks others'
rows (lethe.erasure.sweep). The request's record moves those counts from `waiting_for_hold:` to
`masked_after_hold:`, records when the last one was done (`detail.after_hold`), a ledger entry says
so, and the certificate is rewritten with a "Completed after the hold's release" section. A row
whose owner is still held keeps waiting, for a later run.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import psycopg2.extensions
import psycopg2.extras
from lethe import ledger, residue
from lethe.db import transaction
from lethe.erasure import lifecycle, sweep
from lethe.policy import Policy

WAITING = "waiting_for_hold:"
AFTER = "_after_hold"  # suffix of the action done after the release: masked_after_hold:<table>.<column>
LEDGER_KIND = "erasure_after_hold"
# Closed requests whose certificate can still change; open ones finish their own sweep.
CLOSED = (lifecycle.CERTIFIED, lifecycle.AWAITING_PROCESSORS, lifecycle.LEGACY_COMPLETED)


def waiting(cur: psycopg2.extensions.cursor) -> list[dict[str, Any]]:
    """Closed requests with mentions still waiting for a hold, and their tombstone's pseudonyms."""
    cur.execute(
        """
        SELECT r.request_id::text, r.detail, t.identifier_pseudonyms
        FROM erasure_requests r
        JOIN erasure_tombstones t ON t.subject_pseudonym = r.subject_pseudonym
        WHERE r.status = ANY(%s)
          AND jsonb_typeof(r.detail->'residue') = 'object'
          AND EXISTS (SELECT 1 FROM jsonb_each(r.detail->'residue') w
                      WHERE w.key LIKE %s AND jsonb_typeof(w.value) = 'number' AND (w.value)::numeric > 0)
        ORDER BY r.received_at
        FOR UPDATE OF r SKIP LOCKED
        """,
        (list(CLOSED), WAITING + "%"),
    )
    return [{"request_id": rid, "detail": d or {}, "identifiers": ids or []} for rid, d, ids in cur.fetchall()]


def finish(db_url: str, policy: Policy, key: bytes, s3: Any | None = None) -> dict[str, int]:
    """Mask what waited for a released hold, request by request; return counts of requests and rows."""
    done: Counter[str] = Counter()
    with transaction(db_url) as cur:
        ids = [r["request_id"] for r in waiting(cur)]
    for rid in ids:
        with transaction(db_url) as cur:  # one request per transaction: a failure holds back no other
            rows = [r for r in waiting(cur) if r["request_id"] == rid]
            if not rows:
                continue
            row = rows[0]
            masked, left = _finish_one(cur, policy, key, row)
            if not masked and left:
                done["still_waiting"] += 1
                continue
            detail = _record(row["detail"], masked, left)
            cur.execute(
                "UPDATE erasure_requests SET detail = %s::jsonb WHERE request_id = %s::uuid",
                (psycopg2.extras.Json(detail), rid),
            )
            ledger.append(cur, LEDGER_KIND, {"request_id": rid, "masked": masked, "still_waiting": left})
        done["requests"] += 1
        done["rows"] += sum(masked.values())
        if s3 is not None:
            _rewrite_certificate(s3, rid, detail)
    return dict(done)


def _finish_one(
    cur: psycopg2.extensions.cursor, policy: Policy, key: bytes, row: dict[str, Any]
) -> tuple[dict[str, int], dict[str, int]]:
    """(column -> `action_after_hold:column` -> rows handled now, column -> rows still waiting) for one request."""
    residue_counts = row["detail"].get("residue") or {}
    columns = {w[len(WAITING) :] for w, n in residue_counts.items() if w.startswith(WAITING) and n}
    index = residue.KeyedIndex(key, frozenset(row["identifiers"]))
    handled = sweep.sweep(cur, policy, index, {residue.ERASED}, only_tables={_table_of(policy, c) for c in columns})
    found = handled.get(residue.ERASED, {})
    # `masked:comments.body` -> `masked_after_hold:comments.body` (deleted and kept alike)
    done = {w.replace(":", AFTER + ":", 1): n for w, n in found.items() if not w.startswith(WAITING)}
    left = {w[len(WAITING) :]: n for w, n in found.items() if w.startswith(WAITING)}
    return done, left


def _table_of(policy: Policy, column: str) -> str:
    """The policy's table of a `<table>.<column>` count: the longest table name it starts with (a name may be
    `schema.table`, holding a dot itself), else the text before its last dot."""
    return max((t for t in policy.tables if column.startswith(t + ".")), key=len, default=column.rsplit(".", 1)[0])


def _record(detail: dict[str, Any], masked: dict[str, int], left: dict[str, int]) -> dict[str, Any]:
    """The request's detail with `masked` done after the release and `left` still waiting."""
    counts = {k: v for k, v in (detail.get("residue") or {}).items() if not k.startswith(WAITING)}
    for what, n in masked.items():
        counts[what] = counts.get(what, 0) + n
    for column, n in left.items():
        counts[WAITING + column] = n
    now = datetime.now(UTC).isoformat()
    after = {**(detail.get("after_hold") or {}), "last_at": now}
    if not left:
        after["completed_at"] = now
    return {**detail, "residue": dict(sorted(counts.items())), "after_hold": after}


def _rewrite_certificate(s3: Any, request_id: str, detail: dict[str, Any]) -> None:
    """The certificate, with what was done after the hold's release (the rest as it was issued)."""
    from lethe.erasure import certificate

    try:
        cert = certificate.read(s3, request_id)
    except s3.exceptions.NoSuchKey:
        return  # a request closed before certificates existed: its record in erasure_requests says it
    cert["residue_handled"] = detail.get("residue") or {}
    cert["after_hold"] = detail["after_hold"]
    certificate.write(s3, cert)
