"""The erasure certificate's `backup_propagation` section, one entry per region.

subject_erasure writes certificates/{request_id}.json (and .md) to the evidence
bucket with each region "pending"; propagation marks a region "applied" with its
counts and re-renders the Markdown. A missing certificate is skipped and retried
on the next run (the erasure may not have written it yet).
"""

from __future__ import annotations

import json
from typing import Any

from lethe.backup import store
from lethe.config import BUCKETS, PRIMARY_REGION
from lethe.storage import s3_client


def certificate_key(request_id: str, suffix: str = "json") -> str:
    return f"certificates/{request_id}.{suffix}"


def mark_region_applied(endpoint_url: str | None, request_id: str, region: str, entry: dict[str, Any]) -> bool:
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
