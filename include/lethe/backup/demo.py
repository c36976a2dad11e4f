"""What `lethe demo` prints after backup_nightly and backup_erasure_propagation (counts only)."""

from __future__ import annotations

from lethe.config import BACKUP_REGIONS, BUCKETS


def summary(db_url: str, s3_endpoint: str) -> list[str]:
    from lethe.backup import store
    from lethe.backup.manifest import complete_manifests
    from lethe.db import transaction

    lines = []
    for region in BACKUP_REGIONS:
        try:
            client = store.region_client(region, s3_endpoint)
        except Exception as exc:
            lines.append(f"{region}: unreachable ({type(exc).__name__})")
            continue
        manifests = complete_manifests(client, BUCKETS.backup(region))
        if not manifests:
            lines.append(f"{region}: no complete snapshot")
            continue
        latest = manifests[-1]
        rewritten = sum(r["bytes_rewritten"] for m in manifests for r in m.rewrites)
        objects = sum(r["objects_rewritten"] for m in manifests for r in m.rewrites)
        lines.append(
            f"{region}: snapshot {latest.snapshot_id}: {len(latest.objects)} objects, {latest.total_bytes:,} bytes, "
            f"{latest.total_rows:,} rows; propagation rewrote {objects} objects, {rewritten:,} bytes "
            f"({rewritten / max(1, latest.total_bytes):.2%} of the snapshot)"
        )
    with transaction(db_url) as cur:
        cur.execute("SELECT region, status, count(*) FROM backup_propagation_status GROUP BY 1, 2 ORDER BY 1, 2")
        for region, status, n in cur.fetchall():
            lines.append(f"{region}: {n} tombstone(s) {status}")
    return lines
