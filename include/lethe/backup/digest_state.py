"""A table's row digests at an incremental night, kept in one object beside the night's own.

An incremental night diffs tonight's rows against the digests of the night before (lethe.backup.chain). Worked out
from the chain, they cost a GET of every object of it: 3,612 objects a night at 20,000 users, half the night's
export (BENCHMARKS.md). Each delta night therefore stores the digests it ends with, (bucket, digest) rows in bucket
order, at `<its prefix>digests/<table>.parquet`, with the key and sha256 of every object of the chain they sum up
in its metadata; the manifest's table entry names it with its sha256. The next night reads that one object, and
the chain's objects only for the buckets whose objects were rewritten since (a propagation erased somebody there)
or when it is gone or does not match its checksum.

Only the newest night's are kept: the next night deletes the previous night's once its manifest is written, and
expiry deletes every night's but the newest retained one's (a night killed between its manifest and that deletion,
or a full night between incremental ones, leaves the night before's). They are keyed digests, as every object of
the chain carries.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lethe.backup import chain, layout, store

if TYPE_CHECKING:
    from lethe.backup.manifest import Manifest, ObjectEntry, TableEntry

log = logging.getLogger(__name__)

SCHEMA = pa.schema([pa.field("bucket", pa.int32()), pa.field("digest", pa.uint64())])
CHAIN_METADATA = b"lethe.chain"  # [[key, sha256], ...] of the objects the digests sum up
# One table's digests encoded at a time: the export's delta writers run four at once near the worker's memory
# bound (bench/memory.py), and each encoding holds its row group's buffers
_ENCODING = threading.Lock()
ROWS_AT_ONCE = 1 << 18  # digests written and decoded at a time (3 MiB with their buckets), a table's few at once


def key(sid: str, table: str) -> str:
    """Where snapshot `sid` keeps the digests of `table` (its name encoded as in every key: `layout.key_part`)."""
    return f"{layout.snapshot_prefix(sid)}digests/{layout.key_part(table)}.parquet"


class Writer:
    """Tonight's digests of a table, a bucket at a time in bucket order, into a temporary file."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 (open until store() or discard())
        # Neither a dictionary nor compression for the digests (random, nearly all distinct): trying a dictionary
        # cost 67 MiB a writer at 20M rows and made the object 15% larger; a bucket's run takes a dictionary's RLE
        self._out = pq.ParquetWriter(
            self._file, SCHEMA, compression="none", write_statistics=False, use_dictionary=["bucket"]
        )
        self._gathered: list[pa.Table] = []
        self._rows = 0

    def add(self, bucket_no: int | None, digests: np.ndarray) -> None:
        """A bucket's digests, taken a slice at a time: the rows without a subject of a large table are one bucket
        (1.5M at 1M users), and a copy of it whole added to the export's peak at its largest bucket."""
        number = chain.bucket_number(bucket_no)
        for start in range(0, len(digests), ROWS_AT_ONCE):
            part = digests[start : start + ROWS_AT_ONCE]
            numbers = pa.array(np.full(len(part), number, dtype=np.int32))
            self._gathered.append(pa.table([numbers, pa.array(part, pa.uint64())], schema=SCHEMA))
            self._rows += len(part)
            if self._rows >= ROWS_AT_ONCE:
                self._flush()

    def _flush(self) -> None:
        if self._gathered:
            with _ENCODING:
                self._out.write_table(pa.concat_tables(self._gathered), row_group_size=ROWS_AT_ONCE)
        self._gathered, self._rows = [], 0

    def store(self, client: Any, bucket: str, object_key: str, objects: list[ObjectEntry]) -> dict[str, str]:
        """Store the digests of the chain `objects` make up; their reference for the manifest."""
        try:
            self._flush()
            self._out.add_key_value_metadata({CHAIN_METADATA: json.dumps([[o.key, o.sha256] for o in objects])})
            self._out.close()
            return {"key": object_key, "sha256": store.put_file(client, bucket, object_key, self._file)}
        finally:
            self._file.close()

    def discard(self) -> None:
        try:
            self._out.close()  # closed before its file: collected unclosed, it would write to a closed file
        finally:
            self._file.close()


Digests = Iterator[np.ndarray]
"""The digests of each of a list of buckets' rows, in the list's order (as chain.digests_at yields them)."""


def digests_at(
    client: Any,
    bucket: str,
    entry: TableEntry,
    buckets: list[int | None],
    from_chain: Callable[[list[int | None]], Digests],
) -> Digests:
    """The digests of each of `buckets`' rows at `entry`'s snapshot: from the digests it names, and from the
    chain (`from_chain`) for the buckets any object rewritten since covers, or for all when it names none."""
    opened = _open(client, bucket, entry)
    if opened is None:
        return from_chain(buckets)
    held, recorded = opened
    spans = [chain.span(o) for o in entry.objects if recorded.get(o.key) != o.sha256]
    stale = [b for b in buckets if any(first <= chain.bucket_number(b) <= last for first, last in spans)]
    where = f"s3://{bucket}/{entry.digests['key'] if entry.digests else ''}"
    if len(stale) == len(buckets) or set(recorded) - {o.key for o in entry.objects}:
        held.close()  # every bucket rewritten, or the chain rebuilt (expiry's roll): its objects it is
        log.info("%s: the chain was rewritten since; its digests read from its objects", where)
        return from_chain(buckets)
    if stale:
        log.info(
            "%s: %d of %d buckets rewritten since; their digests read from the chain", where, len(stale), len(buckets)
        )
    return _merged(_by_bucket(held, [chain.bucket_number(b) for b in buckets], where), buckets, stale, from_chain)


def _open(client: Any, bucket: str, entry: TableEntry) -> tuple[BinaryIO, dict[str, str]] | None:
    """The entry's digests object, downloaded and checked, and the objects it sums up; None if it has none."""
    if entry.digests is None:
        return None
    where = f"s3://{bucket}/{entry.digests['key']}"
    held = tempfile.TemporaryFile()  # noqa: SIM115 (handed to the caller's reader, which closes it)
    try:
        sha = store.download(client, bucket, entry.digests["key"], held)
    except store.MissingObject:
        held.close()
        log.warning("%s is missing; the chain's digests read from its objects", where)
        return None
    if sha != entry.digests["sha256"]:
        held.close()
        log.warning("%s does not match its checksum; the chain's digests read from its objects", where)
        return None
    try:
        footer = pq.ParquetFile(held, pre_buffer=False).metadata
        recorded = (footer.metadata or {}).get(CHAIN_METADATA)
        objects = None if recorded is None else {str(k): str(sha) for k, sha in json.loads(recorded)}
    except (pa.ArrowException, ValueError, TypeError) as exc:  # its checksum vouched for by an edited manifest
        held.close()
        log.warning("%s is not digests Lethe wrote (%s); the chain's digests read from its objects", where, exc)
        return None
    if objects is None:
        held.close()
        log.warning("%s does not say which objects it sums up; the chain's digests read from its objects", where)
        return None
    if footer.num_rows != entry.rows and all(objects.get(o.key) == o.sha256 for o in entry.objects):
        held.close()  # nothing rewritten since, yet not a digest a row: not what that night left
        log.warning(
            "%s holds %d digests for %d rows; the chain's digests read from its objects",
            where,
            footer.num_rows,
            entry.rows,
        )
        return None
    held.seek(0)
    return held, objects


def _merged(
    state: Digests,
    buckets: list[int | None],
    stale: list[int | None],
    from_chain: Callable[[list[int | None]], Digests],
) -> Digests:
    fresh = from_chain(stale)
    rewritten = set(stale)
    for bucket_no, digests in zip(buckets, state, strict=True):
        yield next(fresh) if bucket_no in rewritten else digests


def _by_bucket(held: BinaryIO, numbers: list[int], where: str) -> Digests:
    with held:
        # not pre-buffered, one thread: pyarrow's defaults read ahead the whole file (+200 MiB at 20M digests)
        reader = pq.ParquetFile(held, pre_buffer=False)
        batches = reader.iter_batches(batch_size=ROWS_AT_ONCE, use_threads=False)
        at = np.empty(0, np.int32)  # the decoded batch's buckets and digests not handed out yet
        digests = np.empty(0, np.uint64)
        last = -2
        for number in numbers:
            found = []
            while True:
                if not len(at):
                    batch = next(batches, None)
                    if batch is None:
                        break
                    at, digests = batch.column(0).to_numpy(), batch.column(1).to_numpy()
                    if len(at) and (at[0] < last or np.any(np.diff(at) < 0)):
                        raise ValueError(f"{where}: digests not in bucket order")
                    last = int(at[-1]) if len(at) else last
                start, end = np.searchsorted(at, [number, number + 1])
                if start:
                    raise ValueError(f"{where}: digests of bucket {int(at[0])}, which no object of the chain covers")
                found.append(digests[:end])
                at, digests = at[end:], digests[end:]
                if len(at):  # the rest is later buckets'
                    break
            joined = np.concatenate(found) if found else np.empty(0, np.uint64)
            found.clear()  # not held beside the copy while the caller diffs the bucket
            yield joined
        if len(at) or next(batches, None) is not None:
            raise ValueError(f"{where}: digests of a bucket no object of the chain covers")


def delete_previous(client: Any, bucket: str, previous: Manifest) -> int:
    """Delete every version of the previous night's digests (tonight's supersede them), in one listing of its
    prefix; the versions deleted. Its manifest goes on naming them: a night that finds them gone reads the chain.

    Tonight's snapshot is complete by then: S3 refusing (Object Lock keeping every version a while, within the
    erasure deadline) leaves them to the expiry, which deletes superseded digests once it may."""
    where = f"{layout.snapshot_prefix(previous.snapshot_id)}digests/"
    try:
        return store.delete_everything(client, bucket, where)
    except RuntimeError as exc:  # lethe.storage.delete_versions: S3 refused some (what it could delete is gone)
        log.warning("s3://%s/%s: left for the expiry (%s)", bucket, where, exc)
        return 0
