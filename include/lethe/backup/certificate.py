"""The erasure certificate's `backup_propagation` section, one entry per region.

subject_erasure writes certificates/{request_id}.json (and .md) to the evidence
bucket with each region "pending"; propagation marks a region "applied" with its
counts and re-renders the Markdown. A snapshot that completes holding a person
erased while it was written puts their region back to "pending", with the reason,
until propagation has rewritten it too. A missing certificate is skipped and
retried on the next run (the erasure may not have written it yet).
"""

from __future__ import annotations

import json
from typing import Any

from lethe.backup import store, writer
from lethe.config import BUCKETS, PRIMARY_REGION
from lethe.db import transaction
from lethe.storage import s3_client

REOPENED = "a snapshot written while the erasure was propagated holds the person until the next propagation run"


def certificate_key(request_id: str, suffix: str = "json") -> str:
    return f"certificates/{request_id}.{suffix}"


def set_region_entry(endpoint_url: str | None, request_id: str, region: str, entry: dict[str, Any]) -> bool:
    """Set the region's entry in the certificate; False when the certificate does not exist (yet)."""
    client = s3_client(PRIMARY_REGION, endpoint_url)
    bucket = BUCKETS.evidence
    key = certificate_key(request_id)
    if not store.exists(client, bucket, key):
        return False
    cert = json.loads(store.get(client, bucket, key))
    cert.setdefault("backup_propagation", {})[region] = entry
    store.put(client, bucket, key, json.dumps(cert, indent=2, sort_keys=True).encode(), "application/json")
    from lethe.erasure.certificate import render_markdown  # the erasure package owns the rendering

    store.put(client, bucket, certificate_key(request_id, "md"), render_markdown(cert).encode(), "text/markdown")
    return True


def update_certificates(db_url: str, region: str, endpoint_url: str | None) -> tuple[int, int]:
    """Write the region's entry of every certificate whose status moved since it was last written: "applied"
    with the counts, or "pending" again (applied before, now held by a snapshot written meanwhile).
    Returns (certificates updated, certificates not found yet).

    Under the region's status lock: a snapshot completing meanwhile (which may put a person back to pending)
    waits, so the last writer of a certificate is the one that read the latest status."""
    updated = missing = 0
    with transaction(db_url) as cur:
        writer.lock_status(cur, region)
        cur.execute(
            "SELECT s.subject_pseudonym, t.request_id::text, s.status, s.snapshots, s.objects_rewritten,"
            " s.bytes_rewritten, to_char(s.applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
            " FROM backup_propagation_status s JOIN erasure_tombstones t USING (subject_pseudonym)"
            " WHERE s.region = %s AND NOT s.certificate_updated AND (s.status = 'applied' OR s.applied_at IS NOT NULL)",
            (region,),
        )
        for pseudonym, request_id, status, snapshots, objects, nbytes, applied_at in cur.fetchall():
            done = True
            if request_id is not None:
                if status == "applied":
                    entry = {
                        "status": "applied",
                        "snapshots": snapshots,
                        "objects_rewritten": objects,
                        "bytes_rewritten": nbytes,
                        "applied_at": applied_at,
                    }
                else:
                    entry = {"status": "pending", "reason": REOPENED, "applied_before_at": applied_at}
                done = set_region_entry(endpoint_url, request_id, region, entry)
                if done:
                    updated += 1
                else:
                    missing += 1
            if done:
                cur.execute(
                    "UPDATE backup_propagation_status SET certificate_updated = true"
                    " WHERE subject_pseudonym = %s AND region = %s",
                    (pseudonym, region),
                )
    return updated, missing
