"""The store against a real S3 server: exists_many answers in the keys' order, whatever thread asked; small uploads go
in one round trip."""

from __future__ import annotations

import io
import os
from typing import Any

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
