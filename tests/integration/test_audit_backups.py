"""The backups checks against real snapshots in both regions (S3 over HTTP): each fault named by region."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from lethe.audit.backups import check_backups
from lethe.config import BACKUP_REGIONS, BUCKETS
from lethe.db import transaction
from lethe.policy import load_policy
from lethe.pseudonym import pseudonym, subject_pseudonym
from lethe.storage import s3_client

pytestmark = pytest.mark.integration

KEY = b"audit-backup-key"


def seed_people(url: str) -> None:
    now = datetime.now(UTC)
    with transaction(url) as cur:
        for uid in (1, 2, 3):
            cur.execute(
                "INSERT INTO accounts (user_id, name, username, email, password_hash, created_at)"
                " VALUES (%s, 'P', %s, %s, 'x', %s)",
                (uid, f"u{uid}", f"u{uid}@example.com", now - timedelta(days=100)),
            )
            cur.execute(
                "INSERT INTO sessions (session_id, user_id, cookie_id, kind, created_at, expires_at)"
                " VALUES (%s, %s, 'c', 'persistent', %s, %s)",
                (uid, uid, now, now + timedelta(days=5)),
            )
        cur.execute("INSERT INTO comments VALUES (1, 1, 'ask u2@example.com', %s)", (now,))  # 1 names 2


def failed(db_url: str, s3: str, now: datetime | None = None) -> list[str]:
    return check_backups(db_url, s3, KEY, now or datetime.now(UTC)).failed


def test_backup_checks_find_each_fault_in_its_region(db_url: str, s3_endpoint: str) -> None:
    from lethe.backup.propagate import propagate_region
    from lethe.backup.snapshot import new_snapshot_id, take_snapshot

    assert set(failed(db_url, s3_endpoint)) == {f"snapshot_within_rpo.{r}" for r in BACKUP_REGIONS}

    seed_people(db_url)
    sid = new_snapshot_id()
    for region in BACKUP_REGIONS:
        take_snapshot(db_url, region, s3_endpoint, sid, load_policy(), KEY)
    assert failed(db_url, s3_endpoint) == []
    assert set(failed(db_url, s3_endpoint, datetime.now(UTC) + timedelta(hours=30))) == {
        f"snapshot_within_rpo.{r}" for r in BACKUP_REGIONS
    }

    # Person 2 erased on the primary (and person 1's mention of them redacted); the erasure reaches us-east-1 only.
    with transaction(db_url) as cur:
        cur.execute("DELETE FROM sessions WHERE user_id = 2")
        cur.execute("DELETE FROM accounts WHERE user_id = 2")
        cur.execute("UPDATE comments SET body = 'ask [erased]' WHERE comment_id = 1")
        cur.execute(
            "INSERT INTO erasure_tombstones (subject_pseudonym, identifier_pseudonyms) VALUES (%s, %s)",
            (subject_pseudonym(KEY, 2), [pseudonym(KEY, "email", "u2@example.com"), pseudonym(KEY, "username", "u2")]),
        )
    assert set(failed(db_url, s3_endpoint)) == {
        f"{check}.{r}" for r in BACKUP_REGIONS for check in ("tombstones_not_applied", "erased_mentions_left")
    }
    propagate_region(db_url, "us-east-1", s3_endpoint, key=KEY)
    assert failed(db_url, s3_endpoint) == [
        "tombstones_not_applied.ap-southeast-1",
        "erased_mentions_left.ap-southeast-1",
    ]
    propagate_region(db_url, "ap-southeast-1", s3_endpoint, key=KEY)
    assert failed(db_url, s3_endpoint) == []

    # An object changed behind the manifest's back.
    client = s3_client("us-east-1", s3_endpoint)
    bucket = BUCKETS.backup("us-east-1")
    key = next(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"] if o["Key"].endswith(".parquet"))
    client.put_object(Bucket=bucket, Key=key, Body=b"tampered")
    assert failed(db_url, s3_endpoint) == ["manifest_mismatches.us-east-1"]


def region_details(result, region: str) -> dict:
    return next(c["details"] for c in result.checks if c["name"] == f"manifest_mismatches.{region}")


def test_after_a_passed_audit_only_what_changed_is_read(db_url: str, s3_endpoint: str) -> None:
    from lethe.audit import results
    from lethe.backup.snapshot import new_snapshot_id, take_snapshot

    seed_people(db_url)
    sid = new_snapshot_id()
    policy = load_policy()  # with term indexes: a new erasure's mentions are searched only where they can be
    policy = policy.model_copy(update={"backups": policy.backups.model_copy(update={"term_index": True})})
    for region in BACKUP_REGIONS:
        take_snapshot(db_url, region, s3_endpoint, sid, policy, KEY)
    time.sleep(1.1)  # S3's clock has one-second steps: the audit's listing comes after the snapshot's writes
    first = check_backups(db_url, s3_endpoint, KEY, datetime.now(UTC), sample=1)
    assert first.success
    details = region_details(first, "us-east-1")
    assert details["objects"] > 2 and details["objects_read"] == details["objects"]  # no earlier audit: all read
    with transaction(db_url) as cur:
        results.record(cur, results.outcome("run-1", [first.as_dict()]))

    # Nothing changed: every object's size from the bucket listing (no request per object), contents for
    # the sample only.
    requests: Counter[str] = Counter()

    def count(params, model, **_) -> None:
        if str(params.get("Key", "")).endswith(".parquet"):  # a snapshot's object (manifests are .json)
            requests[model.name] += 1

    boto3.DEFAULT_SESSION.events.register("before-parameter-build.s3", count)
    try:
        second = check_backups(db_url, s3_endpoint, KEY, datetime.now(UTC), sample=1)
    finally:
        boto3.DEFAULT_SESSION.events.unregister("before-parameter-build.s3", count)
    assert second.success
    # No request per object: one GET of the sampled object per region, nothing else on a snapshot object.
    assert requests == {"GetObject": len(BACKUP_REGIONS)}, requests
    details = region_details(second, "us-east-1")
    assert details["objects_read"] == 1 and details["read_because"]["sample"] == 1
    assert details["bytes_read"] < details["bytes"]

    # An object rewritten with other bytes of the same size: written since the last passed audit, so it is
    # read and its sha256 recomputed.
    client = s3_client("us-east-1", s3_endpoint)
    bucket = BUCKETS.backup("us-east-1")
    key = next(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"] if o["Key"].endswith(".parquet"))
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    client.put_object(Bucket=bucket, Key=key, Body=body[:-1] + bytes([body[-1] ^ 1]), ChecksumAlgorithm="SHA256")
    assert check_backups(db_url, s3_endpoint, KEY, datetime.now(UTC), sample=0).failed == [
        "manifest_mismatches.us-east-1"
    ]
    tampered = client.list_object_versions(Bucket=bucket, Prefix=key)["Versions"]
    client.put_object(Bucket=bucket, Key=key, Body=body, ChecksumAlgorithm="SHA256")
    # The right bytes are back, but the tampered version is still in the bucket, unreadable: it may hold anyone.
    assert check_backups(db_url, s3_endpoint, KEY, datetime.now(UTC), sample=0).failed == [
        "manifest_mismatches.us-east-1"
    ]
    latest = next(v["VersionId"] for v in tampered if v["IsLatest"])
    client.delete_object(Bucket=bucket, Key=key, VersionId=latest)

    # A person erased since the last passed audit, not yet carried into the backups: the old objects that
    # can hold them (and the free-text objects whose term index may hold their email, for mentions) are read
    # although unchanged.
    with transaction(db_url) as cur:
        cur.execute(
            "INSERT INTO erasure_tombstones (subject_pseudonym, identifier_pseudonyms) VALUES (%s, %s)",
            (subject_pseudonym(KEY, 2), [pseudonym(KEY, "email", "u2@example.com")]),
        )
    third = check_backups(db_url, s3_endpoint, KEY, datetime.now(UTC), sample=0)
    assert set(third.failed) == {
        f"{check}.{r}" for r in BACKUP_REGIONS for check in ("tombstones_not_applied", "erased_mentions_left")
    }
    reasons = region_details(third, "ap-southeast-1")["read_because"]
    assert reasons["new_tombstones"] > 0 and reasons["new_mentions"] > 0 and reasons["sample"] == 0
    # person 1's comment naming them, and nothing else beyond person 2's own objects
    assert reasons["new_mentions"] == 1, reasons


def test_a_backup_bucket_outside_its_region_fails(db_url: str, s3_endpoint: str) -> None:
    """On an S3 server that keeps each bucket's region (moto's, over HTTP); the embedded SeaweedFS reports none."""
    from lethe.storage import ensure_buckets
    from moto.server import ThreadedMotoServer

    def region_checks(endpoint: str) -> dict[str, tuple[bool, str]]:
        result = check_backups(db_url, endpoint, KEY, datetime.now(UTC))
        return {
            c["name"]: (c["success"], c["details"]["bucket_region"])
            for c in result.checks
            if c["name"].startswith("bucket_in_region")
        }

    assert region_checks(s3_endpoint)["bucket_in_region.ap-southeast-1"] == (True, "not reported by this S3 server")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        ensure_buckets(endpoint)  # each bucket created with its region's LocationConstraint
        assert region_checks(endpoint) == {
            "bucket_in_region.us-east-1": (True, "us-east-1"),
            "bucket_in_region.ap-southeast-1": (True, "ap-southeast-1"),
        }
        bucket = BUCKETS.backup("ap-southeast-1")
        s3_client("ap-southeast-1", endpoint).delete_bucket(Bucket=bucket)
        s3_client("eu-west-1", endpoint).create_bucket(
            Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
        )
        assert region_checks(endpoint) == {
            "bucket_in_region.us-east-1": (True, "us-east-1"),
            "bucket_in_region.ap-southeast-1": (False, "eu-west-1"),
        }
    finally:
        server.stop()
