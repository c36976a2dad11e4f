"""The store against a real S3 server: exists_many answers in the keys' order, whatever thread asked; small uploads go
in one round trip, on upload threads that fail the export's writer when one fails."""

from __future__ import annotations

import hashlib
import io
import os
import time
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
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


def test_small_uploads_do_not_wait_for_a_go_ahead(s3_endpoint: str) -> None:
    """botocore asks every upload `Expect: 100-continue` (a round trip before the body); Lethe's clients send a
    body up to SEND_AT_ONCE_BYTES at once, and the server stores it as sent."""
    from lethe.storage import SEND_AT_ONCE_BYTES

    client = s3_client("us-east-1", s3_endpoint)
    bucket = BUCKETS.backup("us-east-1")
    sent: dict[str, str | None] = {}

    def remember(request: Any, **_: Any) -> None:  # registered after Lethe's own hook: sees what goes out
        if request.method == "PUT":
            sent[request.url.rsplit("/", 1)[-1]] = request.headers.get("Expect")

    client.meta.events.register("before-send.s3", remember)
    small, large = b"s" * 3000, os.urandom(SEND_AT_ONCE_BYTES + 1)
    store.put_file(client, bucket, "snapshots/expect/small", io.BytesIO(small))
    store.put_file(client, bucket, "snapshots/expect/large", io.BytesIO(large))

    assert sent == {"small": None, "large": b"100-continue"}
    assert store.get(client, bucket, "snapshots/expect/small") == small
    assert store.get(client, bucket, "snapshots/expect/large") == large


def test_uploads_store_every_object_before_the_with_ends(s3_endpoint: str) -> None:
    """Small bodies travel on upload threads, a large one is streamed by the caller; once the `with` is left every
    object is there, as sent, and each returned sha256 is that of the stored bytes."""
    client = s3_client("us-east-1", s3_endpoint)
    bucket = BUCKETS.backup("us-east-1")
    bodies = {f"snapshots/uploads/{i:03d}": os.urandom(100 + i * 37) for i in range(60)}
    bodies["snapshots/uploads/large"] = os.urandom(store.CHUNK + 10)
    returned = {}
    with store.Uploads(client, bucket) as uploads:
        for key, body in bodies.items():
            returned[key] = uploads.put_file(key, io.BytesIO(body))

    for key, body in bodies.items():
        stored = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert stored == body, key
        assert returned[key] == hashlib.sha256(stored).hexdigest()


def test_a_failed_upload_fails_the_uploads_and_stops_the_next(s3_endpoint: str) -> None:
    """A server that refuses the uploads (here: a key it does not know) fails the `with`, and the writer's next
    object raises at once instead of being encoded for nothing."""
    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="not-a-lethe-key",
        aws_secret_access_key="wrong",
    )
    refused = pytest.raises(ClientError, match="InvalidAccessKeyId")
    with refused, store.Uploads(client, BUCKETS.backup("us-east-1")) as uploads:
        uploads.put_file("snapshots/refused/1", io.BytesIO(b"one"))
        for _ in range(200):  # the failure reaches the writer at a next object, not only at the end
            time.sleep(0.05)
            uploads.put_file("snapshots/refused/2", io.BytesIO(b"two"))
        pytest.fail("put_file went on after an upload failed")
