"""The DAG tasks' bodies: resolve connections inside the task, call the module that does the work.

Return values go to XCom: counts, region and snapshot ids only.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def _services() -> tuple[str, str | None]:
    from lethe.connections import primary_url, s3_endpoint_url

    return primary_url(), s3_endpoint_url()


def snapshot_task(region: str, snapshot_id: str, erasure_deadline_days: int = 30) -> dict[str, Any]:
    from lethe.backup.layout import region_endpoint
    from lethe.backup.snapshot import take_snapshot
    from lethe.connections import pseudonym_key
    from lethe.policy import load_policy

    db_url, endpoint = _services()
    summary = take_snapshot(
        db_url,
        region,
        region_endpoint(region, endpoint),
        snapshot_id,
        load_policy(),
        pseudonym_key(),
        erasure_deadline_days=erasure_deadline_days,
        certificates_endpoint=endpoint,
    )
    log.info("backup snapshot %s", summary)
    return summary


def replicate_task(region: str, snapshot_id: str, erasure_deadline_days: int = 30) -> dict[str, Any]:
    from lethe.backup.layout import region_endpoint
    from lethe.backup.replicate import replicate_snapshot
    from lethe.config import BACKUP_REGIONS

    db_url, endpoint = _services()
    source = BACKUP_REGIONS[0]
    summary = replicate_snapshot(
        db_url,
        snapshot_id,
        source,
        region_endpoint(source, endpoint),
        region,
        region_endpoint(region, endpoint),
        erasure_deadline_days=erasure_deadline_days,
        certificates_endpoint=endpoint,
    )
    log.info("backup copy %s", summary)
    return summary


def expire_task(region: str) -> dict[str, Any]:
    from lethe.backup.expiry import expire_region
    from lethe.backup.layout import region_endpoint
    from lethe.connections import pseudonym_key
    from lethe.policy import load_policy

    db_url, endpoint = _services()
    summary = expire_region(
        db_url,
        region,
        region_endpoint(region, endpoint),
        load_policy().backups.retention.to_timedelta(),
        key=pseudonym_key(),  # a rolled base's term index (lethe.backup.roll)
    )
    log.info("backup expiry %s", summary)
    return summary


def hand_over_task(regions: list[str]) -> int:
    """How many erasures are not yet applied in every region after the night's snapshots; skips when none, so
    that the asset event which starts backup_erasure_propagation is emitted only when it has work."""
    from airflow.sdk.exceptions import AirflowSkipException

    from lethe.backup.propagate import unapplied_erasures

    db_url, _ = _services()
    count = unapplied_erasures(db_url, regions)
    if not count:
        raise AirflowSkipException("every erasure is applied in every region's snapshots")
    log.info("%d erasure(s) not yet applied in every region: handing over to backup_erasure_propagation", count)
    return count


def plan_propagation_task(region: str) -> tuple[list[str], int]:
    """The region's complete snapshots (ids only), after removing what a killed backup left, and how many went."""
    from lethe.backup.layout import region_endpoint
    from lethe.backup.propagate import plan_region

    db_url, endpoint = _services()
    snapshots, removed = plan_region(db_url, region, region_endpoint(region, endpoint))
    log.info("region %s: %d complete snapshot(s); %d incomplete removed", region, len(snapshots), removed)
    return snapshots, removed


def propagate_snapshot_task(region: str, snapshot_id: str) -> dict[str, Any]:
    from lethe.backup.layout import region_endpoint
    from lethe.backup.propagate import propagate_snapshot
    from lethe.connections import pseudonym_key

    db_url, endpoint = _services()
    summary = propagate_snapshot(
        db_url, region, region_endpoint(region, endpoint), snapshot_id, key=pseudonym_key()
    ).as_dict()
    log.info("backup propagation %s %s", snapshot_id, summary)
    return summary


def finish_propagation_task(
    region: str, snapshot_results: list[dict[str, Any]], incomplete_removed: int
) -> dict[str, Any]:
    from lethe.backup.layout import region_endpoint
    from lethe.backup.propagate import RegionResult, finish_region

    db_url, endpoint = _services()
    total = RegionResult(region=region, incomplete_snapshots_removed=incomplete_removed)
    for part in snapshot_results:
        total.add(part)
    summary = finish_region(db_url, region, region_endpoint(region, endpoint), total, endpoint).as_dict()
    log.info("backup propagation %s", summary)
    return summary
