"""Checks over the cross-region backups, read from S3 as they are (not from the backup catalogue).

Per backup region:
- snapshot_within_rpo: the newest complete snapshot (one with a manifest) is younger than the
  recovery-point objective;
- manifest_mismatches: every object a retained manifest names exists with the size and sha256
  the manifest gives;
- tombstones_not_applied: no retained snapshot still holds a row of an erased person (rows are
  matched by the keyed pseudonym each object carries, only in the subject buckets tombstones fall in);
- erased_mentions_left: no retained snapshot still names an erased person in other people's free
  text (spellings matched by the keyed pseudonyms of the tombstones' identifiers).
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any

from lethe.backup.mentions import MentionFinder
from lethe.config import BACKUP_REGIONS, BUCKETS
from lethe.db import transaction
from lethe.quality import CheckResult, expect_counts

# Nightly snapshots plus a couple of hours' slack for a slow night.
DEFAULT_RPO = timedelta(hours=26)


def tombstones(db_url: str) -> tuple[set[str], set[str]]:
    """The erased subjects' pseudonyms, and the pseudonyms of their identifiers."""
    with transaction(db_url) as cur:
        cur.execute("SELECT subject_pseudonym, identifier_pseudonyms FROM erasure_tombstones")
        rows = cur.fetchall()
    return {p for p, _ in rows}, {i for _, ids in rows for i in ids or []}


def audit_region(
    region: str, endpoint_url: str | None, erased: set[str], now: datetime, rpo: timedelta, finder: MentionFinder
) -> tuple[dict[str, int], dict[str, Any]]:
    """Counts (zero when the region is fine) and details for one region."""
    from lethe.backup import frames, layout, manifest, store

    try:
        client = store.region_client(region, layout.region_endpoint(region, endpoint_url))
        bucket = BUCKETS.backup(region)
        manifests = manifest.complete_manifests(client, bucket)
    except Exception as exc:  # an unreachable region fails its checks; the other region is still audited
        counts = {
            "snapshot_within_rpo": 1,
            "manifest_mismatches": 1,
            "tombstones_not_applied": 1,
            "erased_mentions_left": 1,
        }
        return counts, {"unreachable": type(exc).__name__}
    newest = max((datetime.fromisoformat(m.created_at) for m in manifests), default=None)
    age_hours = round((now - newest).total_seconds() / 3600, 2) if newest else None
    mismatched = 0
    left: set[str] = set()
    mentions = 0
    for m in manifests:
        suspects = {obj.key: found for _, _, obj, found in m.holding(erased)}
        for entry in m.tables.values():
            for obj in entry.objects:
                try:
                    data = store.get(client, bucket, obj.key)
                except Exception:  # missing object: the manifest no longer verifies
                    mismatched += 1
                    continue
                if len(data) != obj.bytes or hashlib.sha256(data).hexdigest() != obj.sha256:
                    mismatched += 1
                search_mentions = bool(entry.free_text and finder.identifier_pseudonyms)
                if obj.key not in suspects and not search_mentions:
                    continue
                rows = frames.from_parquet(data)
                if obj.key in suspects:
                    left.update(frames.erase_subjects(rows, suspects[obj.key], "delete", {})[1].per_subject)
                if search_mentions:
                    mentions += finder.redact_columns(rows, entry.free_text)[1]
    counts = {
        "snapshot_within_rpo": 0 if newest is not None and now - newest <= rpo else 1,
        "manifest_mismatches": mismatched,
        "tombstones_not_applied": len(left),
        "erased_mentions_left": mentions,
    }
    details = {
        "snapshots": len(manifests),
        "newest_age_hours": age_hours,
        "rpo_hours": rpo.total_seconds() / 3600,
        "objects": sum(len(m.objects) for m in manifests),
        "tombstones": len(erased),
    }
    return counts, details


def check_backups(
    db_url: str, endpoint_url: str | None, key: bytes, now: datetime, rpo: timedelta = DEFAULT_RPO
) -> CheckResult:
    erased, identifiers = tombstones(db_url)
    finder = MentionFinder(key, frozenset(identifiers))
    counts: dict[str, int] = {}
    details: dict[str, Any] = {}
    for region in BACKUP_REGIONS:
        region_counts, region_details = audit_region(region, endpoint_url, erased, now, rpo, finder)
        for name, n in region_counts.items():
            counts[f"{name}.{region}"] = n
            details[f"{name}.{region}"] = region_details
    return expect_counts("backups", counts, details=details)
