"""One writer per backup region, and what a dead writer left behind.

backup_nightly holds the region's writer lock (a PostgreSQL session advisory lock) from
the first object it writes until its manifest is written. A killed export loses its
database session, and with it the lock: a snapshot prefix without a manifest whose region
lock can be taken is then known to be a leftover, never a snapshot being written, and is
deleted with every object version in it (it can hold rows of people erased since).
backup_erasure_propagation takes the same lock, when it is free, only to remove such leftovers: its
snapshots' tasks run beside a backup being written. Whether every snapshot of a region honours a
tombstone is decided under a second, transaction-scoped lock (lock_status) that a snapshot's
completion takes too.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from lethe.backup import layout, store
from lethe.db import session_lock, transaction

if TYPE_CHECKING:
    from lethe.backup.manifest import Manifest

log = logging.getLogger(__name__)


def _lock_name(region: str) -> str:
    return f"lethe.backup.writer.{region}"


@contextlib.contextmanager
def region_lock(db_url: str, region: str, *, wait: bool) -> Iterator[bool]:
    """Hold the region's writer lock for the block; yields whether it is held (always, when `wait`)."""
    with session_lock(db_url, _lock_name(region), wait=wait) as held:
        yield held


def chain_lock(region: str) -> str:
    """The lock of a region's incremental snapshots' shared objects and the manifests naming them
    (lethe.backup.chain): held by whoever rewrites them or reads them as a whole (propagation, replication copying
    over a shared object, expiry's roll, an incremental export reading the night before), so that no one reads a
    manifest another is rewriting, or an object whose manifests do not yet name its new version."""
    return f"lethe.backup.chain.{region}"


def remove_incomplete(
    db_url: str, region: str, client: Any, bucket: str, *, keep: str | None = None, beside_writer: bool = False
) -> tuple[list[str], int]:
    """Delete every snapshot prefix without a manifest (but `keep`), every version; only under the region lock,
    or `beside_writer`: a backup holds the lock and the snapshot it is writing is kept.

    Their catalogue rows are expired: a killed write's ('writing'), and a complete one's whose manifest was deleted.
    Returns (snapshot ids removed, versions deleted).
    """
    from lethe.backup.manifest import snapshot_ids

    removed: list[str] = []
    incomplete: list[str] = []
    deleted = 0
    listed = snapshot_ids(client, bucket, include_hidden=True)
    if beside_writer:
        # Read after the listing: a writer records its snapshot as 'writing' before its first object, so any
        # prefix listed with objects of the live writer is already its latest 'writing' row.
        keep = being_written(db_url, region)
    ours = [sid for sid in listed if sid != keep and layout.is_snapshot_id(sid)]  # foreign prefixes left alone
    complete = dict(zip(ours, store.exists_many(client, bucket, map(layout.manifest_key, ours)), strict=True))
    for sid in ours:
        if complete[sid]:
            continue
        incomplete.append(sid)
        versions = store.delete_everything(client, bucket, layout.snapshot_prefix(sid))
        if versions:  # some servers (SeaweedFS) still list a prefix whose objects are all gone
            removed.append(sid)
            deleted += versions
    if removed:
        log.info("region %s: removed %d incomplete snapshot(s) left by a killed backup", region, len(removed))
    if incomplete:
        with transaction(db_url) as cur:
            cur.execute(
                "UPDATE backup_snapshots SET status = 'expired', expired_at = now()"
                " WHERE region = %s AND snapshot_id = ANY(%s) AND status <> 'expired'",
                (region, incomplete),
            )
    return removed, deleted


def remove_strays(client: Any, bucket: str, manifest: Manifest) -> int:
    """Right after a snapshot's manifest: delete every version under its prefix that the manifest does not name as
    current. A killed attempt's PUTs that the server completed after the rerun's `remove_incomplete` (found from
    outside: a killed export rerun at once) would otherwise stay, unnamed, holding rows of people erased meanwhile,
    where propagation, which rewrites what manifests name, never looks. Returns the versions deleted."""
    from lethe.storage import delete_versions

    named = {o.key for o in manifest.objects} | set(manifest.indexes) | {layout.manifest_key(manifest.snapshot_id)}
    named |= {t.digests["key"] for t in manifest.tables.values() if t.digests}
    doomed = [
        v
        for v in store.versions(client, bucket, layout.snapshot_prefix(manifest.snapshot_id))
        if v["Key"] not in named or not v["IsLatest"]
    ]
    if doomed:
        log.warning(
            "snapshot %s: %d object versions of an earlier attempt landed under it after its cleanup; deleted",
            manifest.snapshot_id,
            len(doomed),
        )
    return delete_versions(client, bucket, doomed)


def being_written(db_url: str, region: str) -> str | None:
    """The snapshot the catalogue says was started last and is not complete: the live writer's, when one holds
    the lock (a writer removes every other incomplete snapshot when it takes the lock)."""
    with transaction(db_url) as cur:
        cur.execute(
            "SELECT snapshot_id FROM backup_snapshots WHERE region = %s AND status = 'writing'"
            " ORDER BY started_at DESC LIMIT 1",
            (region,),
        )
        row = cur.fetchone()
    return row[0] if row else None


def lock_status(cur: Any, region: str) -> None:
    """Serialise, in the caller's transaction, what decides whether a region's snapshots all honour a tombstone:
    a snapshot completing (lethe.backup.snapshot.record_complete), propagation marking tombstones applied, and
    the certificates written from those statuses (lethe.backup.certificate.update_certificates)."""
    cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"lethe.backup.status.{region}",))
