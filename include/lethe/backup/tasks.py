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
    )
    log.info("backup copy %s", summary)
    return summary


def expire_task(region: str) -> dict[str, Any]:
    from lethe.backup.expiry import expire_region
    from lethe.backup.layout import region_endpoint
    from lethe.policy import load_policy

    db_url, endpoint = _services()
    summary = expire_region(
        db_url, region, region_endpoint(region, endpoint), load_policy().backups.retention.to_timedelta()
    )
    log.info("backup expiry %s", summary)
    return summary


def propagate_task(region: str) -> dict[str, Any]:
    from lethe.backup.layout import region_endpoint
    from lethe.backup.propagate import propagate_region
    from lethe.connections import pseudonym_key

    db_url, endpoint = _services()
    result = propagate_region(
        db_url, region, region_endpoint(region, endpoint), key=pseudonym_key(), certificates_endpoint=endpoint
    )
    summary = result.as_dict()
    log.info("backup propagation %s", summary)
    return summary
