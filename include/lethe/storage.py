"""S3 clients for each region, and the buckets Lethe writes to."""

from __future__ import annotations

import os
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from lethe.config import BUCKETS, local_s3_credentials
from lethe.db import ConfigurationError

# An export's uploads, writers and chain reads at once (lethe.backup.store, snapshot), with room: a request beyond
# the pool opens a connection of its own, a round trip more, and drops it after.
MAX_CONNECTIONS = 32


def s3_client(region: str, endpoint_url: str | None = None) -> Any:
    """A boto3 S3 client for `region`; LETHE_S3_ENDPOINT_URL points it at MinIO or the local server."""
    endpoint_url = endpoint_url or os.environ.get("LETHE_S3_ENDPOINT_URL") or None
    extra: dict[str, Any] = {}
    if endpoint_url:
        key_id, secret = local_s3_credentials()
        extra = {"aws_access_key_id": key_id, "aws_secret_access_key": secret}
    client = boto3.client(
        "s3",
        region_name=region,
        endpoint_url=endpoint_url,
        config=Config(
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
            max_pool_connections=MAX_CONNECTIONS,
        ),
        **extra,
    )
    client.meta.events.register("before-send.s3", _send_small_bodies_at_once)
    return client


# botocore sends every upload `Expect: 100-continue` and waits a round trip for the server's go-ahead before the
# body. For a body up to this size the wait costs more than sending it to a server that would refuse it: a PUT of
# a small object took two round trips instead of one (a night writes hundreds; BENCHMARKS.md, bench/backup_growth.py
# --s3-latency-ms). Larger bodies keep the header. `Expect` is not signed, so removing it leaves the signature valid.
SEND_AT_ONCE_BYTES = 8 << 20


def _send_small_bodies_at_once(request: Any, **_: Any) -> None:
    size = request.headers.get("Content-Length")
    if request.headers.get("Expect") and size is not None and int(size) <= SEND_AT_ONCE_BYTES:
        del request.headers["Expect"]


def ensure_buckets(endpoint_url: str | None = None) -> dict[str, str]:
    """Create Lethe's buckets (versioned, encrypted at rest, in their regions) where they are missing.

    The evidence bucket is created with Object Lock enabled (no default retention: only what asks is locked).
    """
    for bucket, region in BUCKETS.all().items():
        client = s3_client(region, endpoint_url)
        try:
            client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
                raise
            kwargs: dict[str, Any] = {"Bucket": bucket}
            if region != "us-east-1":  # us-east-1 is S3's default and refuses a LocationConstraint
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
            if bucket == BUCKETS.evidence:  # ledger anchors are written under Object Lock (lethe.ledger_anchor)
                kwargs["ObjectLockEnabledForBucket"] = True
            client.create_bucket(**kwargs)
        client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        client.put_bucket_encryption(
            Bucket=bucket,
            ServerSideEncryptionConfiguration={
                "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
            },
        )
    return BUCKETS.all()


def delete_versions(client: Any, bucket: str, versions: list[dict[str, Any]]) -> int:
    """Delete the given object versions for good (1000 per request); return how many.

    DeleteObjects answers 200 even when it refused some keys (Object Lock, AccessDenied): those are
    in its `Errors`, and any is raised here, so nothing is counted as removed that is still there.
    """
    deleted = 0
    for start in range(0, len(versions), 1000):
        batch = [{"Key": v["Key"], "VersionId": v["VersionId"]} for v in versions[start : start + 1000]]
        result = client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        errors = result.get("Errors") or []
        if errors:
            first = errors[0]
            raise RuntimeError(
                f"bucket {bucket}: S3 refused to delete {len(errors)} of {len(batch)} object versions, "
                f"first {first.get('Key')} ({first.get('Code')}: {first.get('Message')})"
            )
        deleted += len(batch)
    return deleted


def require_bucket(client: Any, bucket: str) -> None:
    """Fail with a plain message naming the bucket when it does not exist or cannot be reached."""
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "?")
        raise ConfigurationError(
            f"bucket {bucket!r} at {client.meta.endpoint_url} is not usable (S3 said {code}); "
            "create it with `lethe db migrate` or check the lethe_aws connection"
        ) from exc
