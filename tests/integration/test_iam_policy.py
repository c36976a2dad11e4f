"""The IAM policy of docs/deployment.md grants what Lethe calls on S3, recorded from real calls.

tests/conftest.py checks every call of the whole run at its end; this test drives the backup,
sharing and evidence paths itself, so the check also holds for a run of this file alone.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from lethe import testing
from lethe.backup.expiry import expire_region
from lethe.backup.locks import object_lock_violations
from lethe.backup.propagate import propagate_region
from lethe.backup.replicate import replicate_snapshot
from lethe.backup.restore import restore_snapshot
from lethe.backup.snapshot import new_snapshot_id, take_snapshot
from lethe.config import BACKUP_REGIONS, BUCKETS, PRIMARY_REGION
from lethe.ledger_anchor import anchor_now
from lethe.policy import load_policy
from lethe.seed import seed
from lethe.sharing import release
from lethe.storage import s3_client
from s3_calls import RECORDER, Grant, documented_policy

pytestmark = pytest.mark.integration

KEY = b"iam-policy-test-key"


def test_every_s3_action_lethe_takes_is_granted_by_the_documented_policy(
    db_url: str, s3_endpoint: str, services: tuple[str, str]
) -> None:
    seed(db_url, 20)
    sid = new_snapshot_id()
    take_snapshot(db_url, BACKUP_REGIONS[0], s3_endpoint, sid, load_policy(), KEY)
    replicate_snapshot(db_url, sid, BACKUP_REGIONS[0], s3_endpoint, BACKUP_REGIONS[1], s3_endpoint)
    target = testing.fresh_database(services[0])
    try:
        restore_snapshot(sid, BACKUP_REGIONS[0], target, endpoint_url=s3_endpoint, key=KEY, out=lambda _: None)
    finally:
        testing.drop_database(target)
    for region in BACKUP_REGIONS:
        propagate_region(db_url, region, s3_endpoint, key=KEY, certificates_endpoint=s3_endpoint)
        expire_region(db_url, region, s3_endpoint, timedelta(days=1), now=datetime.now(UTC) + timedelta(days=30))
    anchor_now(db_url, s3_endpoint)
    object_lock_violations(s3_endpoint)  # `lethe policy check`: every bucket
    sharing = s3_client(PRIMARY_REGION, s3_endpoint)
    sharing.put_object(Bucket=BUCKETS.sharing, Key="releases/r/1/cells.csv", Body=b"cell,count\n")
    assert release.delete(sharing, BUCKETS.sharing, "releases/r/1/") == 1

    needed = set(RECORDER.grants)
    # The recorder saw the calls the issue found missing from the policy (so it is not blind).
    assert Grant("s3:GetBucketObjectLockConfiguration", "lethe-backup-us-east-1", False) in needed
    assert Grant("s3:DeleteObjectVersion", "lethe-sharing", True) in needed
    assert Grant("s3:ListBucketVersions", "lethe-sharing", False) in needed
    assert Grant("s3:DeleteObjectVersion", "lethe-backup-ap-southeast-1", True) in needed
    # The second region's snapshot is a server-side copy: read on the first region's bucket, write on its own.
    assert ("CopyObject", "lethe-backup-ap-southeast-1", "lethe.backup.replicate.copy_object") in RECORDER.calls
    assert Grant("s3:GetObject", "lethe-backup-us-east-1", True) in needed
    assert RECORDER.ungranted(documented_policy()) == []


def test_a_version_s3_refuses_to_delete_fails_the_delete_instead_of_counting_as_removed(s3_endpoint: str) -> None:
    import uuid

    client = s3_client(PRIMARY_REGION, s3_endpoint)
    bucket = f"lethe-test-locked-{uuid.uuid4().hex[:8]}"
    client.create_bucket(
        Bucket=bucket,
        CreateBucketConfiguration={"LocationConstraint": PRIMARY_REGION},
        ObjectLockEnabledForBucket=True,
    )
    client.put_object(Bucket=bucket, Key="releases/r/2/cells.csv", Body=b"a\n")
    client.put_object(
        Bucket=bucket,
        Key="releases/r/2/manifest.json",
        Body=b"{}",
        ObjectLockMode="GOVERNANCE",
        ObjectLockRetainUntilDate=datetime.now(UTC) + timedelta(days=1),
    )
    with pytest.raises(RuntimeError, match=f"bucket {bucket}: S3 refused to delete 1 of 2 .*manifest.json"):
        release.delete(client, bucket, "releases/r/2/")
    left = client.list_object_versions(Bucket=bucket, Prefix="releases/r/2/").get("Versions", [])
    assert [v["Key"] for v in left] == ["releases/r/2/manifest.json"]
