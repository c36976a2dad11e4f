"""An outsider's attacks on the server-side copy into the second region: racing erasures, retries, strays.

Checked with our own boto3 reads and our own SQL, not with the code under test's reports.
"""

from __future__ import annotations

import hashlib
import io

import pyarrow.parquet as pq
import pytest
from lethe import testing
from lethe.backup.propagate import propagate_region
from lethe.backup.replicate import replicate_snapshot
from lethe.backup.restore import restore_snapshot
from lethe.backup.snapshot import take_snapshot
from lethe.config import BACKUP_REGIONS, BUCKETS
from lethe.db import transaction
from lethe.policy import load_policy
from lethe.storage import s3_client
from test_backup import KEY, USERS, erase, fill_primary

pytestmark = pytest.mark.integration

FIRST, SECOND = BACKUP_REGIONS
SID = "20261102T020000Z"
ERASED = 7


def _objects(region: str, s3: str) -> dict[str, list[dict[str, object]]]:
    """key -> every version (our own listing) under the snapshot's folder."""
    client = s3_client(region, s3)
    found: dict[str, list[dict[str, object]]] = {}
    for page in client.get_paginator("list_object_versions").paginate(
        Bucket=BUCKETS.backup(region), Prefix=f"snapshots/{SID}/"
    ):
        for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
            found.setdefault(v["Key"], []).append(v)
    return found


def _bytes(region: str, s3: str, key: str) -> bytes:
    body = s3_client(region, s3).get_object(Bucket=BUCKETS.backup(region), Key=key)["Body"].read()
    return bytes(body)


def _user_ids_in(region: str, s3: str) -> set[int]:
    """user_id values in every parquet object of the snapshot (current versions), read by us."""
    ids: set[int] = set()
    for key in _objects(region, s3):
        if not key.endswith(".parquet"):
            continue
        table = pq.read_table(io.BytesIO(_bytes(region, s3, key)))
        if "user_id" in table.column_names:
            ids |= {v for v in table.column("user_id").to_pylist() if v is not None}
    return ids


def _restored_accounts(primary: str, region: str, s3: str, server: str) -> list[int]:
    target = testing.fresh_database(server)
    try:
        restore_snapshot(SID, region, target, endpoint_url=s3, key=KEY, primary_url=primary, out=lambda _: None)
        with transaction(target) as cur:
            cur.execute("SELECT user_id FROM accounts ORDER BY 1")
            return [r[0] for r in cur.fetchall()]
    finally:
        testing.drop_database(target)


def _same_in_both(s3: str) -> None:
    one, two = _objects(FIRST, s3), _objects(SECOND, s3)
    assert sorted(one) == sorted(two)
    for key, versions in two.items():
        assert len(versions) == 1 and "Size" in versions[0], f"{key}: stray version(s) in {SECOND}"
        if key.endswith("manifest.json"):
            continue
        assert hashlib.sha256(_bytes(SECOND, s3, key)).digest() == hashlib.sha256(_bytes(FIRST, s3, key)).digest()


def test_erased_and_propagated_in_the_first_region_between_a_killed_copy_and_its_retry(
    db_url: str, s3_endpoint: str, services: tuple[str, str]
) -> None:
    fill_primary(db_url)
    take_snapshot(db_url, FIRST, s3_endpoint, SID, load_policy(), KEY)
    with pytest.raises(RuntimeError, match="interrupted"):
        replicate_snapshot(db_url, SID, FIRST, s3_endpoint, SECOND, s3_endpoint, fail_after_copies=3)
    erase(db_url, ERASED)
    propagate_region(db_url, FIRST, s3_endpoint, key=KEY)
    assert ERASED not in _user_ids_in(FIRST, s3_endpoint)
    replicate_snapshot(db_url, SID, FIRST, s3_endpoint, SECOND, s3_endpoint)
    _same_in_both(s3_endpoint)
    assert ERASED not in _user_ids_in(SECOND, s3_endpoint)
    restored = _restored_accounts(db_url, SECOND, s3_endpoint, services[0])
    assert restored == [u for u in range(1, USERS + 1) if u != ERASED]


def test_erased_between_the_export_and_the_copy_not_yet_propagated(
    db_url: str, s3_endpoint: str, services: tuple[str, str]
) -> None:
    fill_primary(db_url)
    take_snapshot(db_url, FIRST, s3_endpoint, SID, load_policy(), KEY)
    erase(db_url, ERASED)
    replicate_snapshot(db_url, SID, FIRST, s3_endpoint, SECOND, s3_endpoint)
    with transaction(db_url) as cur:  # the copy does not claim an erasure its objects do not honour
        cur.execute("SELECT count(*) FROM backup_tombstone_applications WHERE region = %s", (SECOND,))
        assert cur.fetchone()[0] == 0
    restored = _restored_accounts(db_url, SECOND, s3_endpoint, services[0])
    assert ERASED not in restored  # restore applies the tombstone
    propagate_region(db_url, SECOND, s3_endpoint, key=KEY)
    assert ERASED not in _user_ids_in(SECOND, s3_endpoint)
    assert _user_ids_in(SECOND, s3_endpoint) == set(range(1, USERS + 1)) - {ERASED}


def test_strays_and_a_tampered_object_in_the_second_region_before_a_retried_copy(db_url: str, s3_endpoint: str) -> None:
    fill_primary(db_url)
    take_snapshot(db_url, FIRST, s3_endpoint, SID, load_policy(), KEY)
    with pytest.raises(RuntimeError, match="interrupted"):
        replicate_snapshot(db_url, SID, FIRST, s3_endpoint, SECOND, s3_endpoint, fail_after_copies=2)
    two = s3_client(SECOND, s3_endpoint)
    bucket = BUCKETS.backup(SECOND)
    parquet = sorted(k for k in _objects(SECOND, s3_endpoint) if k.endswith(".parquet"))
    # A tampered copy (with its own valid checksum), an older version under it, and a stray key.
    two.put_object(Bucket=bucket, Key=parquet[0], Body=b"tampered", ChecksumAlgorithm="SHA256")
    two.put_object(Bucket=bucket, Key=f"snapshots/{SID}/extra/stray.parquet", Body=b"x")
    replicate_snapshot(db_url, SID, FIRST, s3_endpoint, SECOND, s3_endpoint)
    _same_in_both(s3_endpoint)
