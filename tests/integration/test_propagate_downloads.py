"""Propagation's objects downloaded ahead of their rewrites (propagate._rewrite_each), against a real S3 server:
each rewrite gets its own object and its sha256, however far ahead the downloads run, and a failure stops the
downloads instead of reading the rest of the snapshot for nothing."""

from __future__ import annotations

import hashlib
import os
import threading
from typing import BinaryIO

import pytest
from lethe.backup import propagate
from lethe.backup.store import MissingObject
from lethe.config import BUCKETS
from lethe.storage import s3_client

BUCKET = BUCKETS.backup("us-east-1")


def _objects(s3_endpoint: str, prefix: str, n: int) -> tuple[object, dict[str, bytes]]:
    client = s3_client("us-east-1", s3_endpoint)
    bodies = {f"snapshots/{prefix}/{i:03d}": os.urandom(50 + 17 * i) for i in range(n)}
    for key, body in bodies.items():
        client.put_object(Bucket=BUCKET, Key=key, Body=body)
    return client, bodies


@pytest.mark.parametrize("ahead", [1, 3, 16])
def test_each_rewrite_gets_its_own_object(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, ahead: int) -> None:
    monkeypatch.setattr(propagate, "DOWNLOAD_AHEAD", ahead)
    client, bodies = _objects(s3_endpoint, f"ahead-{ahead}", 40)
    seen: dict[str, tuple[bytes, str]] = {}
    lock = threading.Lock()

    def rewrite(key: str, original: BinaryIO, digest: str) -> None:
        with lock:
            seen[key] = (original.read(), digest)

    propagate._rewrite_each(client, BUCKET, list(bodies), lambda key: key, rewrite)

    assert seen == {key: (body, hashlib.sha256(body).hexdigest()) for key, body in bodies.items()}


def test_a_missing_object_is_raised_and_stops_the_downloads(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(propagate, "DOWNLOAD_AHEAD", 4)
    client, bodies = _objects(s3_endpoint, "missing", 80)
    keys = list(bodies)
    client.delete_object(Bucket=BUCKET, Key=keys[10])  # deleted outside Lethe
    rewritten: list[str] = []

    def rewrite(key: str, original: BinaryIO, digest: str) -> None:
        rewritten.append(key)

    with pytest.raises(MissingObject, match=keys[10]):
        propagate._rewrite_each(client, BUCKET, keys, lambda key: key, rewrite)

    assert keys[10] not in rewritten
    assert set(keys[:10]) <= set(rewritten)  # the objects before it were rewritten
    # and the downloads stopped: at most the few already under way when it failed, not the other 69
    assert len(rewritten) <= 10 + 4 + propagate.REWRITE_THREADS
