"""`lethe demo`'s part for subject_erasure: erase one seeded person, then summarise (no PII)."""

from __future__ import annotations

from typing import Any

from lethe.db import transaction


def conf(db_url: str) -> dict[str, Any]:
    """An active account without a legal hold, with comments mentioning it if there is one; erase it for real."""
    with transaction(db_url) as cur:
        cur.execute(
            """
            SELECT a.email FROM accounts a
            WHERE a.closed_at IS NULL
              AND NOT EXISTS (
                  SELECT 1 FROM legal_holds h WHERE h.subject_key = a.user_id::text AND h.released_at IS NULL
              )
            ORDER BY EXISTS (SELECT 1 FROM invoices i WHERE i.user_id = a.user_id) DESC, a.user_id
            LIMIT 1
            """
        )
        row = cur.fetchone()
    if row is None:
        return {}  # nobody to erase: the run processes the (empty) queue
    return {"identifier_kind": "email", "identifier": row[0], "request_reference": "demo", "dry_run": False}


def summary(db_url: str, s3_endpoint: str) -> list[str]:
    from lethe.config import BUCKETS, PRIMARY_REGION
    from lethe.erasure import certificate
    from lethe.storage import s3_client

    with transaction(db_url) as cur:
        cur.execute(
            "SELECT request_id::text, status, detail FROM erasure_requests"
            " WHERE status <> 'pending' ORDER BY received_at DESC LIMIT 1"
        )
        row = cur.fetchone()
    if row is None:
        return ["subject_erasure: no request processed"]
    request_id, status, detail = row
    detail = detail or {}
    lines = [f"subject_erasure: request {request_id} {status} ({detail.get('outcome', '?')})"]
    for table, entry in (detail.get("tables") or {}).items():
        lines.append(f"  {table:<20} {entry['action']:<13} {entry['rows']:>6} rows")
    for column, n in (detail.get("redactions") or {}).items():
        lines.append(f"  mentions redacted in {column}: {n}")
    with transaction(db_url) as cur:
        cur.execute(
            "SELECT processor, status, job_id, error FROM processor_receipts"
            " WHERE cause = 'erasure' AND subject_ref = %s ORDER BY processor",
            (request_id,),
        )
        for processor, state, job_id, error in cur.fetchall():
            lines.append(
                f"  processor {processor:<12} {state}"
                + (f" (job {job_id})" if job_id else "")
                + (f": {error}" if error else "")
            )
    key = certificate.json_key(request_id)
    try:
        s3_client(PRIMARY_REGION, s3_endpoint).head_object(Bucket=BUCKETS.evidence, Key=key)
        lines.append(f"  certificate: s3://{BUCKETS.evidence}/{key} (+ .md)")
    except Exception:  # a dry run or a failed run leaves no certificate
        lines.append("  certificate: none written")
    return lines
