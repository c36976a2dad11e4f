"""S3 Object Lock settings that would stop an erasure from reaching a backup.

A bucket in COMPLIANCE mode cannot have an object version deleted before its
retention ends, by anyone. If that retention is longer than the erasure
deadline, an erased person's rows would outlive the deadline in that bucket.
GOVERNANCE mode can be bypassed by a privileged delete, so it is not a violation.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from lethe.config import BUCKETS
from lethe.storage import s3_client


def retention_days(rule: dict[str, Any]) -> int:
    """The default retention of an Object Lock rule in days (a year counts 365)."""
    retention = rule.get("DefaultRetention", {})
    return int(retention.get("Days", 0)) + 365 * int(retention.get("Years", 0))


def bucket_violation(client: Any, bucket: str, erasure_deadline_days: int) -> str | None:
    """A sentence naming the bucket when its Object Lock blocks erasure, else None."""
    try:
        config = client.get_object_lock_configuration(Bucket=bucket).get("ObjectLockConfiguration", {})
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("ObjectLockConfigurationNotFoundError", "NoSuchBucket"):
            return None
        raise
    rule = config.get("Rule") or {}
    mode = rule.get("DefaultRetention", {}).get("Mode")
    days = retention_days(rule)
    if config.get("ObjectLockEnabled") == "Enabled" and mode == "COMPLIANCE" and days > erasure_deadline_days:
        return (
            f"bucket {bucket}: S3 Object Lock in COMPLIANCE mode keeps every object version for {days} days, "
            f"longer than the {erasure_deadline_days}-day erasure deadline; erased rows could not be removed in time "
            "(shorten the default retention to at most the deadline, or use GOVERNANCE mode)"
        )
    return None


def object_lock_violations(endpoint_url: str | None, erasure_deadline_days: int = 30) -> list[str]:
    """One message per Lethe bucket whose Object Lock would block erasure past the deadline."""
    found = []
    for bucket, region in BUCKETS.all().items():
        problem = bucket_violation(s3_client(region, endpoint_url), bucket, erasure_deadline_days)
        if problem:
            found.append(problem)
    return found
