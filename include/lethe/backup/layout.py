"""Where a snapshot's objects live, and which object holds a given person's rows.

A row's subject bucket is computed from the keyed pseudonym of its subject, the
same value an erasure tombstone stores, so propagation finds the objects to
rewrite from the tombstone alone, without the raw id.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime

SNAPSHOT_PREFIX = "snapshots/"
SUBJECT_COLUMN = "_lethe_subject"  # the row's subject pseudonym, stored beside the row
_SNAPSHOT_ID = re.compile(r"^\d{8}T\d{6}Z$")


def snapshot_id(at: datetime) -> str:
    """A sortable id from the snapshot's time, e.g. 20261130T020000Z."""
    return at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def snapshot_time(sid: str) -> datetime:
    check_snapshot_id(sid)
    return datetime.strptime(sid, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def check_snapshot_id(sid: str) -> str:
    if not _SNAPSHOT_ID.match(sid):
        raise ValueError(f"snapshot id {sid!r} is not of the form YYYYMMDDTHHMMSSZ (for example 20261130T020000Z)")
    return sid


def snapshot_prefix(sid: str) -> str:
    return f"{SNAPSHOT_PREFIX}{sid}/"


def manifest_key(sid: str) -> str:
    return f"{snapshot_prefix(sid)}manifest.json"


def bucket_of(pseudonym: str, buckets: int) -> int:
    """The subject bucket of a pseudonym (hex HMAC): its first 32 bits modulo the bucket count."""
    return int(pseudonym[:8], 16) % buckets


def object_key(sid: str, table: str, bucket: int | None) -> str:
    """Data object of one table and bucket; rows without a subject go to `unbucketed`."""
    name = "unbucketed" if bucket is None else f"b{bucket:04d}"
    return f"{snapshot_prefix(sid)}data/{table}/{name}.parquet"


def region_endpoint(region: str, default: str | None) -> str | None:
    """The S3 endpoint for one backup region.

    LETHE_BACKUP_ENDPOINT_<REGION> (e.g. LETHE_BACKUP_ENDPOINT_US_EAST_1) overrides the
    lethe_aws endpoint for that region only: regions can live behind different endpoints.
    """
    return os.environ.get("LETHE_BACKUP_ENDPOINT_" + region.upper().replace("-", "_")) or default


def purged_table_uris() -> list[str]:
    """Asset URIs retention_nightly emits for the tables backups hold (read from the policy file)."""
    from lethe.assets import purged_table_uri
    from lethe.policy import load_policy

    return [purged_table_uri(name) for name, rule in load_policy().tables.items() if rule.backup]
