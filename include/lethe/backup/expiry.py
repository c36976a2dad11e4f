"""Snapshots past the backup retention leave for good: every object version, manifest first.

The manifest goes first, so an interrupted expiry leaves an incomplete (hence
absent) snapshot rather than a complete-looking one with holes; the next run
removes the rest. Snapshot prefixes without a manifest older than a day are
leftovers of a killed backup and are removed the same way.

Incremental snapshots share objects (lethe.backup.chain): before an expired
snapshot's objects go, the retained snapshots naming them are rolled onto a base
of their own (lethe.backup.roll), and what no retained manifest names any more
goes too. All of it under the region's writer lock: an export or a copy writing
a manifest that names the objects being rolled would otherwise be lost.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from lethe.backup import layout, roll, store, writer
from lethe.config import BUCKETS
from lethe.db import session_lock, transaction

INCOMPLETE_GRACE = timedelta(days=1)


def expire_region(
    db_url: str,
    region: str,
    endpoint_url: str | None,
    retention: timedelta,
    now: datetime | None = None,
    *,
    key: bytes | None = None,
) -> dict[str, Any]:
    """Expire the region's snapshots past `retention`; return counts (no personal data).

    `key` (the pseudonym key) gives a rolled base its term index when the objects it replaces had one; without
    it the base has none (it is then always searched for mentions)."""
    from lethe.backup.manifest import snapshot_ids
    from lethe.ledger import append

    now = now or datetime.now(UTC)
    client = store.region_client(region, endpoint_url)
    bucket = BUCKETS.backup(region)
    expired: list[str] = []
    incomplete: list[str] = []
    retained: list[str] = []
    versions_deleted = 0
    rolled = roll.Rolled()
    # The writer lock, then the chain lock (always in that order): no export, copy or propagation meanwhile.
    with writer.region_lock(db_url, region, wait=True), session_lock(db_url, writer.chain_lock(region)):
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
            elif complete:
                retained.append(sid)
        doomed = expired + incomplete
        stored = roll.read_retained(client, bucket, retained)
        roll.roll_retained(client, bucket, stored, doomed, key, rolled)
        stored = roll.read_retained(client, bucket, retained)  # as now written: what the deletions must spare
        roll.check_unreferenced(stored, doomed)
        for sid in doomed:
            versions_deleted += store.delete_everything(client, bucket, layout.manifest_key(sid))
            versions_deleted += store.delete_everything(client, bucket, layout.snapshot_prefix(sid))
        unreferenced = roll.delete_unreferenced(client, bucket, stored)
    summary = {
        "region": region,
        "retention_days": retention.days,
        "expired_snapshots": len(expired),
        "incomplete_removed": len(incomplete),
        "versions_deleted": versions_deleted,
        "snapshots_rolled": rolled.snapshots_rolled,
        "objects_rolled_into_bases": rolled.objects_rolled,
        "bases_written": rolled.bases_written,
        "manifests_rewritten": rolled.manifests_rewritten,
        "unreferenced_versions_deleted": unreferenced,
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
        if rolled.manifests_rewritten:
            # A rewritten manifest names other objects: the catalogue counts what it now names
            for s in stored:
                m = s.manifest
                cur.execute(
                    "UPDATE backup_snapshots SET objects = %s, rows = %s, bytes = %s"
                    " WHERE region = %s AND snapshot_id = %s",
                    (len(m.objects), m.total_rows, m.total_bytes, region, m.snapshot_id),
                )
        append(cur, "backup_expiry", {**summary, "snapshot_ids": gone})
    return summary
