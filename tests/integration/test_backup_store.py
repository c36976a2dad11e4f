"""store.exists_many against a real S3 server: the answers come back in the keys' order, whatever thread asked."""

from __future__ import annotations

from lethe.backup import store
from lethe.config import BUCKETS
from lethe.storage import s3_client


def test_exists_many_answers_each_key_in_order(s3_endpoint: str) -> None:
    client = s3_client("us-east-1", s3_endpoint)
    bucket = BUCKETS.backup("us-east-1")
    keys = [f"snapshots/exists-many/{i:02d}" for i in range(21)]
    for key in keys[::3]:
        client.put_object(Bucket=bucket, Key=key, Body=b"x")

    assert store.exists_many(client, bucket, keys) == [i % 3 == 0 for i in range(21)]
    assert store.exists_many(client, bucket, iter(keys[1:2])) == [False]
    assert store.exists_many(client, bucket, []) == []
