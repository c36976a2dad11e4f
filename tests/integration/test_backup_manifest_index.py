"""Incremental manifests name their entries in index objects, one per snapshot whose prefix holds the objects
(lethe.backup.manifest), against S3 over HTTP: what is stored is read raw with boto3."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest
from lethe.backup import layout, manifest, store
from lethe.backup.manifest import Manifest, ObjectEntry, TableEntry
from lethe.config import BACKUP_REGIONS, BUCKETS
from lethe.storage import s3_client

pytestmark = pytest.mark.integration

BASE, NIGHT, LAST = "20261101T020000Z", "20261102T020000Z", "20261103T020000Z"
REGION = BACKUP_REGIONS[0]


def entry(sid: str, bucket: int, night: bool = False) -> ObjectEntry:
    key = layout.object_key(sid, "events", bucket, bucket + 3 if night else None)
    return ObjectEntry(key=key, bucket=bucket, rows=10, bytes=100, sha256="0" * 64, night=sid if night else None)


def chain(objects: list[ObjectEntry]) -> Manifest:
    columns = [{"name": "id", "pg_type": "int4", "arrow_type": "int32"}]
    table = TableEntry(columns=columns, subject_column="user_id", erasure_action="delete", erasure_columns={},
                       rows=sum(o.rows for o in objects), objects=objects, buckets=8)  # fmt: skip
    return Manifest(snapshot_id=LAST, region=REGION, bucket="b", created_at="2026-11-03T02:00:00+00:00",
                    policy_version="1", policy_digest="d", buckets=8, tables={"events": table},
                    incremental=True)  # fmt: skip


def raw(client: Any, bucket: str, key: str) -> Any:
    return json.loads(gzip.decompress(client.get_object(Bucket=bucket, Key=key)["Body"].read()))


@pytest.fixture
def region(s3_endpoint: str) -> tuple[Any, str]:
    return s3_client(REGION, s3_endpoint), BUCKETS.backup(REGION)


def test_each_snapshots_entries_are_stored_once_under_its_prefix_and_read_back_alike(region: tuple[Any, str]) -> None:
    client, bucket = region
    written = chain([entry(BASE, 0), entry(BASE, 4), entry(NIGHT, 0, night=True), entry(LAST, 0, night=True)])
    manifest.write(client, bucket, written)

    stored = raw(client, bucket, layout.manifest_key(LAST))
    assert "objects" not in stored["tables"]["events"]
    refs = stored["index_objects"]
    assert [layout.written_by(r["key"]) for r in refs] == [BASE, NIGHT, LAST]
    held = [[o["key"] for o in raw(client, bucket, r["key"])["tables"]["events"]] for r in refs]
    assert held == [[o.key for o in written.objects[:2]], [written.objects[2].key], [written.objects[3].key]]
    assert manifest.read(client, bucket, LAST) == written

    # a later manifest naming the same base objects stores no new index for them
    before = {v["Key"] for v in store.versions(client, bucket, layout.SNAPSHOT_PREFIX)}
    manifest.write(client, bucket, written)
    assert {v["Key"] for v in store.versions(client, bucket, layout.SNAPSHOT_PREFIX)} == before


def test_an_order_indexes_cannot_give_is_stored_inline(region: tuple[Any, str]) -> None:
    client, bucket = region
    written = chain([entry(BASE, 0), entry(NIGHT, 0, night=True), entry(BASE, 4)])  # not grouped by snapshot
    manifest.write(client, bucket, written)

    stored = raw(client, bucket, layout.manifest_key(LAST))
    assert "index_objects" not in stored
    assert [o["key"] for o in stored["tables"]["events"]["objects"]] == [o.key for o in written.objects]
    assert manifest.read(client, bucket, LAST) == written


def test_an_index_object_changed_or_deleted_outside_lethe_is_named_when_read(region: tuple[Any, str]) -> None:
    client, bucket = region
    manifest.write(client, bucket, chain([entry(BASE, 0), entry(LAST, 0, night=True)]))
    (base_index, _) = [r["key"] for r in raw(client, bucket, layout.manifest_key(LAST))["index_objects"]]
    body = json.dumps({"format": manifest.INDEX_FORMAT, "tables": {"events": []}}).encode()
    client.put_object(Bucket=bucket, Key=base_index, Body=gzip.compress(body))

    with pytest.raises(ValueError, match=f"index object s3://{bucket}/{base_index} does not match its sha256"):
        manifest.read(client, bucket, LAST)

    client.delete_object(Bucket=bucket, Key=base_index)
    with pytest.raises(store.MissingObject, match=f"s3://{bucket}/{base_index} is missing"):
        manifest.read(client, bucket, LAST)
