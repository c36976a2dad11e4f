"""One export a night: the first region's snapshot is copied server-side into the second.

Checked with our own boto3 reads of both buckets and PostgreSQL's own statistics of the
primary's tables (how many rows were read), not with anything the code under test reports.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from lethe import testing
from lethe.backup import layout, store
from lethe.backup.manifest import read as read_manifest
from lethe.backup.replicate import SourceIncomplete, replicate_snapshot
from lethe.backup.restore import restore_snapshot
from lethe.backup.snapshot import take_snapshot
from lethe.config import BACKUP_REGIONS, BUCKETS
from lethe.db import transaction
from lethe.policy import load_policy
from lethe.storage import s3_client
from test_backup import KEY, USERS, erase, fill_primary

pytestmark = pytest.mark.integration

FIRST, SECOND = BACKUP_REGIONS
SID = "20261101T020000Z"


@pytest.fixture
def primary(db_url: str) -> str:
    fill_primary(db_url)
    return db_url


def rows_read(url: str) -> int:
    return testing.primary_reads(url)[0]


def stored(region: str, s3: str) -> dict[str, tuple[bytes, dict[str, Any]]]:
    """key -> (bytes, head) of the current version of every object under the snapshot's prefix."""
    client = s3_client(region, s3)
    bucket = BUCKETS.backup(region)
    found = {}
    for v in store.versions(client, bucket, layout.snapshot_prefix(SID)):
        assert v["IsLatest"] and not v["DeleteMarker"], f"{region}: a stray version of {v['Key']}"
        head = client.head_object(Bucket=bucket, Key=v["Key"], ChecksumMode="ENABLED")
        found[v["Key"]] = (store.get(client, bucket, v["Key"]), head)
    return found


def test_the_primary_is_read_once_and_both_regions_hold_identical_objects(
    primary: str, s3_endpoint: str, services: tuple[str, str]
) -> None:
    erase(primary, 3)  # a tombstone inside the snapshot: the copy honours it too
    policy = load_policy()
    before = rows_read(primary)
    take_snapshot(primary, FIRST, s3_endpoint, SID, policy, KEY)
    after_export = rows_read(primary)
    summary = replicate_snapshot(primary, SID, FIRST, s3_endpoint, SECOND, s3_endpoint)
    after_copy = rows_read(primary)
    assert after_export - before >= USERS  # the export read the tables (accounts alone has 19 rows left)
    assert after_copy == after_export  # the copy read no row of the primary
    assert summary["status"] == "complete" and summary["objects_copied"] == summary["objects"] > 0

    first, second = stored(FIRST, s3_endpoint), stored(SECOND, s3_endpoint)
    manifest_key = layout.manifest_key(SID)
    assert sorted(first) == sorted(second)
    one = read_manifest(s3_client(FIRST, s3_endpoint), BUCKETS.backup(FIRST), SID)
    two = read_manifest(s3_client(SECOND, s3_endpoint), BUCKETS.backup(SECOND), SID)
    for key, (body, head) in first.items():
        copy, copy_head = second[key]
        if key == manifest_key:
            continue
        assert copy == body, key
        assert hashlib.sha256(copy).hexdigest() == one.objects[[o.key for o in one.objects].index(key)].sha256
        for field in ("ChecksumSHA256", "ServerSideEncryption", "ContentType", "ContentLength"):
            assert copy_head.get(field) == head.get(field), (key, field)
    assert second[manifest_key][1]["ServerSideEncryption"] == "AES256"
    assert second[manifest_key][1]["ChecksumSHA256"]
    # Its own manifest: same snapshot, objects, checksums and term indexes, its own region and bucket.
    assert (two.snapshot_id, two.region, two.bucket) == (SID, SECOND, BUCKETS.backup(SECOND))
    assert [(o.key, o.sha256, o.rows, o.bytes, o.term_index) for o in two.objects] == [
        (o.key, o.sha256, o.rows, o.bytes, o.term_index) for o in one.objects
    ]
    assert two.tombstones_at_export == one.tombstones_at_export == 1
    with transaction(primary) as cur:
        cur.execute("SELECT region, status FROM backup_snapshots WHERE snapshot_id = %s ORDER BY region", (SID,))
        assert cur.fetchall() == [(SECOND, "complete"), (FIRST, "complete")]
        cur.execute("SELECT region, count(*) FROM backup_tombstone_applications GROUP BY region ORDER BY region")
        assert cur.fetchall() == [(SECOND, 1), (FIRST, 1)]

    target = testing.fresh_database(services[0])
    try:
        report = restore_snapshot(
            SID, SECOND, target, endpoint_url=s3_endpoint, key=KEY, primary_url=primary, out=lambda _: None
        )
        assert report.verified
        with transaction(target) as cur:
            cur.execute("SELECT user_id FROM accounts ORDER BY 1")
            assert [r[0] for r in cur.fetchall()] == [u for u in range(1, USERS + 1) if u != 3]
            cur.execute("SELECT count(*) FROM comments")
            assert cur.fetchone()[0] == 3 * (USERS - 1)
    finally:
        testing.drop_database(target)


def test_a_copy_killed_half_way_is_resumed_skipping_what_it_copied_and_no_manifest_before(
    primary: str, s3_endpoint: str
) -> None:
    take_snapshot(primary, FIRST, s3_endpoint, SID, load_policy(), KEY)
    with pytest.raises(RuntimeError, match="interrupted after 3 copies"):
        replicate_snapshot(primary, SID, FIRST, s3_endpoint, SECOND, s3_endpoint, fail_after_copies=3)
    client, bucket = s3_client(SECOND, s3_endpoint), BUCKETS.backup(SECOND)
    assert not store.exists(client, bucket, layout.manifest_key(SID))  # no snapshot yet in the second region
    half = [v["Key"] for v in store.versions(client, bucket, layout.snapshot_prefix(SID))]
    assert len(half) == 3
    # A copied object overwritten with other bytes, and a key the manifest does not name: neither survives.
    client.put_object(Bucket=bucket, Key=half[0], Body=b"not the exported bytes")
    stray = layout.object_key(SID, "comments", 4095)
    client.put_object(Bucket=bucket, Key=stray, Body=b"stray")
    with transaction(primary) as cur:
        cur.execute("SELECT status FROM backup_snapshots WHERE snapshot_id = %s AND region = %s", (SID, SECOND))
        assert cur.fetchall() == [("writing",)]

    summary = replicate_snapshot(primary, SID, FIRST, s3_endpoint, SECOND, s3_endpoint)
    assert summary["status"] == "complete" and summary["snapshot_id"] == SID
    assert summary["objects_already_copied"] == 2  # the two good copies were not copied again
    assert summary["objects_copied"] == summary["objects"] - 2
    first, second = stored(FIRST, s3_endpoint), stored(SECOND, s3_endpoint)  # no stray or old version left
    assert stray not in second
    assert {k: b for k, (b, _) in first.items() if not k.endswith("manifest.json")} == {
        k: b for k, (b, _) in second.items() if not k.endswith("manifest.json")
    }
    again = replicate_snapshot(primary, SID, FIRST, s3_endpoint, SECOND, s3_endpoint)
    assert again["status"] == "already complete"


def test_no_copy_without_a_complete_export(primary: str, s3_endpoint: str) -> None:
    source = s3_client(FIRST, s3_endpoint)
    # A killed export: objects but no manifest in the first region.
    store.put(source, BUCKETS.backup(FIRST), layout.object_key(SID, "accounts", 0), b"half an export")
    with pytest.raises(SourceIncomplete, match=f"snapshot {SID} is not complete in {FIRST}"):
        replicate_snapshot(primary, SID, FIRST, s3_endpoint, SECOND, s3_endpoint)
    left = list(store.versions(s3_client(SECOND, s3_endpoint), BUCKETS.backup(SECOND), layout.snapshot_prefix(SID)))
    assert left == []
