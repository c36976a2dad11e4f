"""Snapshots past the backup retention leave for good: every object version, manifest first.

The manifest goes first, so an interrupted expiry leaves an incomplete (hence
absent) snapshot rather than a complete-looking one with holes; the next run
removes the rest. Snapshot prefixes without a manifest older than a day are
leftovers of a killed backup and are removed the same way.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from lethe.backup import layout, store
from lethe.config import BUCKETS
from lethe.db import transaction

INCOMPLETE_GRACE = timedelta(days=1)


def expire_region(
    db_url: str, region: str, endpoint_url: str | None, retention: timedelta, now: datetime | None = None
) -> dict[str, Any]:
    from lethe.backup.manifest import snapshot_ids
    from lethe.ledger import append

    now = now or datetime.now(UTC)
    client = store.region_client(region, endpoint_url)
    bucket = BUCKETS.backup(region)
    expired: list[str] = []
    incomplete: list[str] = []
    versions_deleted = 0
    for sid in snapshot_ids(client, bucket, include_hidden=True):
        try:
            taken = layout.snapshot_time(sid)
        except ValueError:
            continue  # not ours: leave foreign prefixes alone
        complete = store.exists(client, bucket, layout.manifest_key(sid))
        if complete and taken < now - retention:
            expired.append(sid)
        elif not complete and taken < now - INCOMPLETE_GRACE:
            incomplete.append(sid)
        else:
            continue
        versions_deleted += store.delete_everything(client, bucket, layout.manifest_key(sid))
        versions_deleted += store.delete_everything(client, bucket, layout.snapshot_prefix(sid))
    summary = {
        "region": region,
        "retention_days": retention.days,
        "expired_snapshots": len(expired),
        "incomplete_removed": len(incomplete),
        "versions_deleted": versions_deleted,
    }
    with transaction(db_url) as cur:
        gone = expired + incomplete
        if gone:
            cur.execute(
                "UPDATE backup_snapshots SET status = 'expired', expired_at = now()"
                " WHERE region = %s AND snapshot_id = ANY(%s)",
                (region, gone),
            )
            cur.execute(
                "DELETE FROM backup_tombstone_applications WHERE region = %s AND snapshot_id = ANY(%s)", (region, gone)
            )
        append(cur, "backup_expiry", {**summary, "snapshot_ids": gone})
    return summary
