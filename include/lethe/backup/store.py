"""S3 helpers for versioned backup buckets.

On a versioned bucket a delete without VersionId only adds a delete marker and
the old bytes stay readable: erasing means deleting each version by its id.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any, BinaryIO

from botocore.exceptions import BotoCoreError, ClientError

from lethe.db import ConfigurationError
from lethe.storage import delete_versions


class RegionUnreachable(ConfigurationError):
    """A backup region's S3 endpoint did not answer; names region and endpoint."""


def region_client(region: str, endpoint_url: str | None) -> Any:
    """A client for one region, checked against its backup bucket so a dead endpoint fails fast and clearly."""
    from lethe.config import BUCKETS
    from lethe.storage import s3_client

    client = s3_client(region, endpoint_url)
    bucket = BUCKETS.backup(region)
    try:
        client.head_bucket(Bucket=bucket)
    except (BotoCoreError, ClientError) as exc:
        raise RegionUnreachable(
            f"backup region {region}: bucket {bucket!r} at endpoint {endpoint_url or 'AWS default'} is not usable "
            f"({type(exc).__name__}: {exc}); this region's work is left for the next run"
        ) from exc
    return client


def versions(client: Any, bucket: str, prefix: str) -> Iterator[dict[str, Any]]:
    """Every version and delete marker under `prefix` (with IsLatest and a `DeleteMarker` flag)."""
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        for v in page.get("Versions", []):
            yield {**v, "DeleteMarker": False}
        for m in page.get("DeleteMarkers", []):
            yield {**m, "DeleteMarker": True}


def delete_everything(client: Any, bucket: str, prefix: str) -> int:
    """Delete every version and delete marker under a prefix."""
    return delete_versions(client, bucket, list(versions(client, bucket, prefix)))


def delete_noncurrent(client: Any, bucket: str, key: str) -> int:
    """Delete every version of `key` except the current one (the rewritten object)."""
    doomed = [v for v in versions(client, bucket, key) if v["Key"] == key and not v["IsLatest"]]
    return delete_versions(client, bucket, doomed)


def put(client: Any, bucket: str, key: str, body: bytes, content_type: str = "application/octet-stream") -> str:
    """Put one object with server-side encryption; return its sha256 (hex).

    S3 keeps the object's SHA-256 (checked on arrival), so the audit verifies it without downloading it.
    """
    _put_object(client, bucket, key, body, content_type)
    return hashlib.sha256(body).hexdigest()


def _put_object(client: Any, bucket: str, key: str, body: bytes | BinaryIO, content_type: str) -> None:
    client.put_object(
        Bucket=bucket,
        Key=key,
        Body=body,
        ContentType=content_type,
        ServerSideEncryption="AES256",
        ChecksumAlgorithm="SHA256",
    )


class MissingObject(RuntimeError):
    """An object a manifest names is not in the bucket (deleted outside Lethe)."""


def _get_object(client: Any, bucket: str, key: str) -> Any:
    try:
        return client.get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            raise MissingObject(
                f"s3://{bucket}/{key} is missing: a manifest names it, but it was deleted outside Lethe (a plain "
                "delete leaves its bytes behind a delete marker). Restore it from its newest version "
                "(list_object_versions, then delete the marker), or delete the snapshot, manifest first; until then "
                "no erasure can be applied to that snapshot"
            ) from None
        raise


def get(client: Any, bucket: str, key: str) -> bytes:
    return bytes(_get_object(client, bucket, key)["Body"].read())


CHUNK = 1 << 20


def download(client: Any, bucket: str, key: str, sink: BinaryIO) -> str:
    """Stream an object into `sink` (a MiB at a time, never whole in memory) and rewind it; return its sha256."""
    digest = hashlib.sha256()
    for chunk in _get_object(client, bucket, key)["Body"].iter_chunks(CHUNK):
        digest.update(chunk)
        sink.write(chunk)
    sink.flush()
    sink.seek(0)
    return digest.hexdigest()


def put_file(client: Any, bucket: str, key: str, body: BinaryIO) -> str:
    """`put` of a file's whole content, streamed from the file (rewound first); return its sha256."""
    digest = hashlib.sha256()
    body.seek(0)
    while chunk := body.read(CHUNK):
        digest.update(chunk)
    body.seek(0)
    _put_object(client, bucket, key, body, "application/octet-stream")
    return digest.hexdigest()


# A snapshot's small objects (most of a small platform's, and every night's deltas) are PUT on threads of their
# own while the writers encode the next: a PUT is a round trip, hundreds a night, and a writer that waited for
# each spent most of a small snapshot's time waiting (bench/backup_growth.py --s3-latency-ms, BENCHMARKS.md).
UPLOAD_THREADS = 16


class Uploads:
    """`put_file` for an export's objects: a body up to CHUNK is read into memory and PUT on an upload thread (the
    caller goes on; its sha256 is known at once), a larger one streamed by the caller. At most 2 x UPLOAD_THREADS
    bodies wait. Leaving the `with` waits for every PUT and raises the first that failed; a failure also stops
    the next `put_file`, so an export does not encode on for nothing."""

    def __init__(self, client: Any, bucket: str) -> None:
        self.client, self.bucket = client, bucket
        self._pool = ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="upload")
        self._room = threading.BoundedSemaphore(2 * UPLOAD_THREADS)
        self._sent: list[Future[None]] = []
        self._failed: BaseException | None = None

    def put_file(self, key: str, body: BinaryIO) -> str:
        if self._failed is not None:
            raise self._failed
        body.seek(0, 2)
        if body.tell() > CHUNK:
            return put_file(self.client, self.bucket, key, body)
        body.seek(0)
        data = body.read()
        self._room.acquire()
        self._sent.append(self._pool.submit(self._put, key, data))
        return hashlib.sha256(data).hexdigest()

    def _put(self, key: str, data: bytes) -> None:
        try:
            put_file(self.client, self.bucket, key, io.BytesIO(data))  # every object goes by put_file
        except BaseException as exc:
            self._failed = exc
            raise
        finally:
            self._room.release()

    def __enter__(self) -> Uploads:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._pool.shutdown(wait=True, cancel_futures=kind is not None)
        if kind is None:
            for sent in self._sent:
                sent.result()


# Small requests asked at once (exists_many's HEADs, manifest.IndexReader's GETs): a night asks one a retained
# snapshot and two an index object, and one after the other they cost a round trip each (about 120 a night at 35
# nights; a cross-region round trip is ~0.2 s).
SMALL_REQUEST_THREADS = 8


def exists_many(client: Any, bucket: str, keys: Iterable[str]) -> list[bool]:
    """`exists` of each key, in order, asked on a few threads at once (boto3's clients are thread-safe)."""
    keys = list(keys)
    if len(keys) < 2:
        return [exists(client, bucket, k) for k in keys]
    with ThreadPoolExecutor(min(SMALL_REQUEST_THREADS, len(keys))) as pool:
        return list(pool.map(lambda k: exists(client, bucket, k), keys))


def exists(client: Any, bucket: str, key: str) -> bool:
    try:
        client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True
