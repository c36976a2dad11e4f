"""A snapshot killed with uploads in flight and rerun at once (found from outside): the server completes PUTs the
dead process had sent after the rerun's cleanup of the killed attempt, and they stayed under the complete snapshot,
unnamed by its manifest (where propagation never looks), holding a person erased between the two. Checked with
plain boto3 and pyarrow reads of every version under the snapshot's prefix, and row counts in plain SQL."""

from __future__ import annotations

import hashlib
import io
import json

import pyarrow.parquet as pq
import pytest
from lethe.backup.snapshot import take_snapshot
from lethe.config import BUCKETS
from lethe.db import transaction
from lethe.policy import load_policy
from test_backup_faults import KEY, REGION, erase, fill, kill, s3, traces

pytestmark = pytest.mark.integration
BUCKET = BUCKETS.backup(REGION)
SID = "20261102T020000Z"


@pytest.mark.parametrize("puts", ["1", "3"])
def test_a_snapshot_rerun_at_once_after_a_kill_keeps_only_what_its_manifest_names(
    db_url: str, s3_endpoint: str, puts: str
) -> None:
    fill(db_url)
    kill("snapshot", puts, s3_endpoint, SID)  # os._exit after `puts` PUTs, others still in flight
    erase(db_url, 1)
    take_snapshot(db_url, REGION, s3_endpoint, SID, load_policy(), KEY)

    client = s3(s3_endpoint)
    manifest = json.loads(client.get_object(Bucket=BUCKET, Key=f"snapshots/{SID}/manifest.json")["Body"].read())
    named = set()
    for table, entry in manifest["tables"].items():
        rows = 0
        for obj in entry["objects"]:
            body = client.get_object(Bucket=BUCKET, Key=obj["key"])["Body"].read()
            assert hashlib.sha256(body).hexdigest() == obj["sha256"], obj["key"]
            rows += pq.read_table(io.BytesIO(body)).num_rows
            named.add(obj["key"])
        with transaction(db_url) as cur:
            cur.execute("SET LOCAL statement_timeout = '20s'")
            cur.execute(f"SELECT count(*) FROM {table}")  # noqa: S608 (the policy's own table names)
            assert rows == cur.fetchone()[0], table
    listed = [
        v
        for page in client.get_paginator("list_object_versions").paginate(Bucket=BUCKET, Prefix=f"snapshots/{SID}/")
        for v in page.get("Versions", [])
        if v["Key"].endswith(".parquet")
    ]
    every = [
        (v["Key"], v["IsLatest"], pq.read_table(io.BytesIO(
            client.get_object(Bucket=BUCKET, Key=v["Key"], VersionId=v["VersionId"])["Body"].read()
        )))
        for v in listed
    ]  # fmt: skip
    assert traces(every, {1}) == [], "a version under the rerun snapshot holds the person erased before it"
    assert sorted({v["Key"] for v in listed} - named) == [], "objects of the killed attempt left beside the manifest"
    assert [v["Key"] for v in listed if not v["IsLatest"]] == [], "versions of the killed attempt left"
