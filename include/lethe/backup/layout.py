"""Where a snapshot's objects live, and which object holds a given person's rows.

A row's subject bucket is computed from the keyed pseudonym of its subject, the
same value an erasure tombstone stores, so propagation finds the objects to
rewrite from the tombstone alone, without the raw id.
"""

from __future__ import annotations

import math
import os
import re
from datetime import UTC, datetime
from urllib.parse import quote

SNAPSHOT_PREFIX = "snapshots/"
SUBJECT_COLUMN = "_lethe_subject"  # the row's subject pseudonym, stored beside the row
_SNAPSHOT_ID = re.compile(r"^\d{8}T\d{6}Z$")


def snapshot_id(at: datetime) -> str:
    """A sortable id from the snapshot's time, e.g. 20261130T020000Z."""
    return at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def snapshot_time(sid: str) -> datetime:
    check_snapshot_id(sid)
    return datetime.strptime(sid, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def is_snapshot_id(sid: str) -> bool:
    return bool(_SNAPSHOT_ID.match(sid))


def check_snapshot_id(sid: str) -> str:
    if not is_snapshot_id(sid):
        raise ValueError(f"snapshot id {sid!r} is not of the form YYYYMMDDTHHMMSSZ (for example 20261130T020000Z)")
    return sid


def snapshot_prefix(sid: str) -> str:
    return f"{SNAPSHOT_PREFIX}{sid}/"


def written_by(key: str) -> str:
    """The snapshot whose prefix holds object `key` (an incremental snapshot names objects of earlier ones)."""
    return key[len(SNAPSHOT_PREFIX) :].split("/", 1)[0]


def key_part(name: str) -> str:
    """A table's name (the policy's `schema.table`) as one segment of an object key.

    PostgreSQL takes any name: put in a key as it is, `a/b` made table `a/b`'s objects look like a folder of table
    `a`'s, `a/` landed on `a`'s own (a filer-backed S3 such as SeaweedFS reads `a//b` as `a/b`), and `..` climbed
    out of the snapshot's prefix (or was refused). So every byte but [A-Za-z0-9_.~-] is percent-encoded (UTF-8,
    `%` itself too: `a%2Fb` and `a/b` stay apart), and a name of dots alone has them encoded: a plain name is
    unchanged, and with it the keys of every backup written before. Keys are read from manifests, never parsed
    back into names."""
    part = quote(name, safe="")
    return part.replace(".", "%2E") if not part.strip(".") else part


def manifest_key(sid: str) -> str:
    return f"{snapshot_prefix(sid)}manifest.json"


def bucket_of(pseudonym: str, buckets: int) -> int:
    """The subject bucket of a pseudonym (hex HMAC): its first 32 bits modulo the bucket count."""
    return int(pseudonym[:8], 16) % buckets


# Aim this far below the bound: bucket sizes vary with the hash, and table sizes are estimates.
BUCKET_HEADROOM = 1.25
MAX_BUCKETS = 4096
# What every object costs beyond its rows (Parquet footer and schema, about 2 KB), in the
# on-disk table bytes the sizes are given in (which Parquet compresses about fourfold).
OBJECT_OVERHEAD = 8192


def bucket_counts(sizes: dict[str, int], rewritable: set[str], share: int) -> dict[str, int]:
    """Subject buckets per table, so that erasing any one person rewrites at most 1/share of a snapshot.

    Erasing a person rewrites one object per table holding their rows, S_t / b_t bytes for a
    table of S_t bytes in b_t buckets. The fewest objects that keep the sum over every
    rewritable table at or under C = S / share (S: all tables) are b_t = sqrt(S_t) * sum_j
    sqrt(S_j) / C: minimise sum b_t subject to sum S_t / b_t <= C. Big tables get more
    buckets, small ones few; tables erasure never rewrites (retained, no subject) get one.
    In a small snapshot the objects' own overhead weighs too, so the counts grow in the same
    proportions until the bound holds with it.
    """
    total = sum(sizes.values())
    roots = {t: math.sqrt(sizes[t]) for t in rewritable if sizes.get(t)}
    budget = total / (share * BUCKET_HEADROOM)
    spread = sum(roots.values()) / budget if budget else 0.0

    def counts(factor: float) -> dict[str, int]:
        return {t: min(MAX_BUCKETS, max(1, math.ceil(roots.get(t, 0.0) * factor))) for t in sizes}

    def within(b: dict[str, int]) -> bool:
        worst = sum(sizes[t] / b[t] + OBJECT_OVERHEAD for t in roots)
        return worst * share * BUCKET_HEADROOM <= total + OBJECT_OVERHEAD * sum(b.values())

    chosen = counts(spread)
    while roots and not within(chosen) and any(chosen[t] < MAX_BUCKETS for t in roots):
        spread *= 1.1
        chosen = counts(spread)
    return chosen


def object_key(sid: str, table: str, bucket: int | None, last: int | None = None) -> str:
    """Data object of one table and bucket; rows without a subject go to `unbucketed`. With `last`, a delta
    object of an incremental snapshot (lethe.backup.chain), buckets `bucket`..`last` (or without a subject)."""
    if last is None:
        name = "unbucketed" if bucket is None else f"b{bucket:04d}"
    else:
        name = "unbucketed-delta" if bucket is None else f"d{bucket:04d}-{last:04d}"
    return f"{snapshot_prefix(sid)}data/{key_part(table)}/{name}.parquet"


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
