"""Incremental snapshots: a base and one delta a night, each row known by a keyed digest of its content.

With `backups.incremental`, a night stores only what changed since the night before. Every row of an
incremental snapshot carries ROW_COLUMN, a keyed 64-bit digest of its columns as exported. A night's delta
object holds, for a range of subject buckets, the rows whose digest is new that night (as they are) and one
row per digest gone (only ROW_COLUMN and BUCKET_COLUMN set, GONE_COLUMN true): an updated row is one of each.
A snapshot's manifest lists, per table, the base objects (one per bucket, as a full snapshot's) and then
the delta objects of every night since the base, in night order; they live under the prefix of the snapshot
that wrote them and are shared by every later manifest. A bucket's rows at a snapshot are its base rows, each
delta applied in order: gone digests remove one row each, new rows are added (`materialise`).

A digest stays with its row when propagation erases or pseudonymises the row in a shared object: the gone
entry a later night wrote for the row's old content still finds it. Digests are keyed (SipHash with a key
derived from the pseudonym key), so they cannot be matched to a guessed row without it.
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lethe.backup import frames, store
from lethe.db import ConfigurationError

if TYPE_CHECKING:
    from lethe.backup.manifest import ObjectEntry, TableEntry

ROW_COLUMN = "_lethe_row"  # the row's keyed digest, in every object of an incremental snapshot
GONE_COLUMN = "_lethe_gone"  # in a delta: true on a row that only says a digest is gone
BUCKET_COLUMN = "_lethe_bucket"  # in a delta: the row's subject bucket (-1: rows without a subject)
OWN_COLUMNS = (ROW_COLUMN, GONE_COLUMN, BUCKET_COLUMN)
NO_BUCKET = -1
# A delta object gathers consecutive buckets until its rows hold about this many bytes in Arrow (about a
# quarter in zstd Parquet): an object a bucket would make the footers outweigh a night's few rows, one object
# a table would make an erasure rewrite every night's whole delta (bench/backup_growth.py, BENCHMARKS.md).
DELTA_OBJECT_BYTES = 32 << 10
DIFF_AT_ONCE = 1 << 18  # digests compared at a time (`changes`)


def _siphash_key(key: bytes) -> str:
    """A 16-byte SipHash key (as pandas takes it: 16 latin-1 characters) derived from the pseudonym key."""
    return hmac.new(key, b"lethe backup row digest", hashlib.sha256).digest()[:16].decode("latin-1")


def _siphash(values: np.ndarray, hash_key: str) -> np.ndarray:
    return np.asarray(pd.util.hash_array(values, encoding="latin-1", hash_key=hash_key, categorize=False))


def _word(array: pa.Array, hash_key: str) -> np.ndarray:
    """One 64-bit word per value of a column (its NULLs are told apart by the caller's null mask)."""
    kind = array.type
    if pa.types.is_dictionary(kind):
        return _word(array.cast(kind.value_type), hash_key)
    if pa.types.is_floating(kind):
        return np.ascontiguousarray(array.cast(pa.float64()).fill_null(0.0).to_numpy()).view(np.uint64)
    if pa.types.is_date32(kind):
        array = array.cast(pa.int32())
    if pa.types.is_integer(kind) or pa.types.is_boolean(kind) or pa.types.is_temporal(kind):
        return np.ascontiguousarray(array.cast(pa.int64()).fill_null(0).to_numpy()).view(np.uint64)
    text = array.cast(pa.large_binary()) if pa.types.is_large_string(kind) else array.cast(pa.binary())
    return _siphash(text.fill_null(b"").to_numpy(zero_copy_only=False), hash_key)


def row_digests(frame: pa.Table, columns: list[str], key: bytes) -> np.ndarray:
    """The keyed digest (uint64) of each row's `columns`: a word a column and a word of NULL flags, hashed."""
    if frame.num_rows == 0:
        return np.empty(0, dtype=np.uint64)
    hash_key = _siphash_key(key)
    words = []
    # One bit a column, a word of flags per 64 columns: columns i and i + 64 sharing a bit made a row with both
    # NULL and one with both '' (or 0) the same digest, and the change went unseen (the first word is as before).
    nulls = [np.zeros(frame.num_rows, dtype=np.uint64) for _ in range(max(1, (len(columns) + 63) // 64))]
    for i, name in enumerate(columns):
        array = frame.column(name).combine_chunks()
        if array.null_count:
            flags = array.is_null().to_numpy(zero_copy_only=False).astype(np.uint64)
            nulls[i // 64] |= flags << np.uint64(i % 64)
        words.append(_word(array, hash_key))
    words.append(nulls[0] + np.uint64(len(columns)))
    words.extend(nulls[1:])
    matrix = np.ascontiguousarray(np.column_stack(words))
    width = 8 * matrix.shape[1]
    rows = pa.Array.from_buffers(pa.binary(width), frame.num_rows, [None, pa.py_buffer(matrix)])
    return _siphash(rows.to_numpy(zero_copy_only=False), hash_key)


def with_row_digests(frame: pa.Table, columns: list[str], key: bytes) -> pa.Table:
    return frame.append_column(ROW_COLUMN, pa.array(row_digests(frame, columns, key), pa.uint64()))


def _ranks(groups: np.ndarray) -> np.ndarray:
    """Each value's occurrence number among the equal values before it (0 for the first)."""
    order = np.argsort(groups, kind="stable")
    ordered = groups[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if len(ordered) else np.empty(0, np.int64)
    first = np.repeat(starts, np.diff(np.r_[starts, len(ordered)]))
    ranks = np.empty(len(groups), dtype=np.int64)
    ranks[order] = np.arange(len(groups)) - first
    return ranks


def _counts_in(values: np.ndarray, of: np.ndarray) -> np.ndarray:
    """How many times each of `values` occurs in `of` (a multiset of digests)."""
    if not len(of):
        return np.zeros(len(values), dtype=np.int64)
    distinct, counts = np.unique(of, return_counts=True)
    at = np.minimum(np.searchsorted(distinct, values), len(distinct) - 1)
    return np.where(distinct[at] == values, counts[at], 0)


def changes(before: np.ndarray, now: np.ndarray, at_once: int = DIFF_AT_ONCE) -> tuple[np.ndarray, np.ndarray]:
    """(positions in `now` of its new rows, digests gone) between two multisets of row digests: a digest held k
    times before and m times now is m - k new rows or k - m gone entries (the occurrences past the k-th, in
    `now`'s order, are new). Both sorted once, then compared `at_once` values at a time: a bucket's working
    arrays were 8 of its size, the peak of an incremental night at 1M users (1.5M rows without a subject)."""
    order = np.argsort(now, kind="stable")
    now_sorted = now[order]
    before_sorted = np.sort(before)
    new = _past_count(now_sorted, before_sorted, at_once)
    gone = _past_count(before_sorted, now_sorted, at_once)
    return np.sort(order[new]), before_sorted[gone]


def _past_count(ordered: np.ndarray, other: np.ndarray, at_once: int) -> np.ndarray:
    """Whether each of sorted `ordered` is an occurrence of its value past as many as sorted `other` holds."""
    past = np.empty(len(ordered), dtype=bool)
    for start in range(0, len(ordered), at_once):
        values = ordered[start : start + at_once]
        rank = np.arange(start, start + len(values)) - np.searchsorted(ordered, values, "left")
        held = np.searchsorted(other, values, "right") - np.searchsorted(other, values, "left")
        past[start : start + len(values)] = rank >= held
    return past


def remove_digests(frame: pa.Table, gone: np.ndarray) -> pa.Table:
    """`frame` without one row per gone digest (a digest not there removes nothing)."""
    if not len(gone) or frame.num_rows == 0:
        return frame
    digests = frame.column(ROW_COLUMN).to_numpy()
    return frame.filter(pa.array(_ranks(digests) >= _counts_in(digests, gone)))


def gone_rows(schema: pa.Schema, digests: np.ndarray, bucket: int) -> pa.Table:
    """Rows saying `digests` are gone: every column of `schema` NULL but the digest, the bucket and the flag."""
    n = len(digests)
    columns = {}
    for f in schema:
        if f.name == ROW_COLUMN:
            columns[f.name] = pa.array(digests, pa.uint64())
        elif f.name == GONE_COLUMN:
            columns[f.name] = pa.array(np.ones(n, dtype=bool))
        elif f.name == BUCKET_COLUMN:
            columns[f.name] = pa.array(np.full(n, bucket, dtype=np.int32))
        else:
            columns[f.name] = pa.nulls(n, f.type)
    return pa.table(columns, schema=schema)


def as_delta(rows: pa.Table, bucket: int, schema: pa.Schema) -> pa.Table:
    """New rows of a bucket in a delta object's columns."""
    n = rows.num_rows
    rows = rows.append_column(GONE_COLUMN, pa.array(np.zeros(n, dtype=bool)))
    rows = rows.append_column(BUCKET_COLUMN, pa.array(np.full(n, bucket, dtype=np.int32)))
    return rows.select(schema.names).cast(schema)


def delta_schema(rows: pa.Schema) -> pa.Schema:
    return rows.append(pa.field(GONE_COLUMN, pa.bool_())).append(pa.field(BUCKET_COLUMN, pa.int32()))


def bucket_number(bucket: int | None) -> int:
    return NO_BUCKET if bucket is None else bucket


def covers(obj: ObjectEntry, bucket: int | None) -> bool:
    """Whether an object holds rows of `bucket` (a delta covers bucket..last_bucket)."""
    if obj.bucket is None or bucket is None:
        return obj.bucket is None and bucket is None
    return obj.bucket <= bucket <= (obj.last_bucket if obj.last_bucket is not None else obj.bucket)


def buckets_named(entry: TableEntry) -> list[int | None]:
    """Every bucket some object of the table may hold rows of, in order (None, rows without a subject, first)."""
    found: set[int | None] = set()
    for obj in entry.objects:
        if obj.bucket is None:
            found.add(None)
        else:
            found.update(range(obj.bucket, (obj.last_bucket if obj.last_bucket is not None else obj.bucket) + 1))
    return sorted(found, key=lambda b: -1 if b is None else b)


@dataclass
class Reader:
    """Reads a region's objects for one table, each checked against its manifest entry, and keeps the delta
    objects it read (small, and each covers a run of buckets read in order) until a bucket past them is asked."""

    client: Any
    bucket: str
    columns: list[str] | None = None  # read only these (and the delta's own columns); None: all
    _deltas: dict[str, tuple[int, pa.Table]] = field(default_factory=dict)  # key -> (last bucket, rows)

    def read(self, obj: ObjectEntry) -> pa.Table:
        data = store.get(self.client, self.bucket, obj.key)
        obj = self.checked(obj, data)
        wanted = None if self.columns is None else [*self.columns, *(OWN_COLUMNS if obj.night else (ROW_COLUMN,))]
        # ParquetFile, not read_table: read_table's dataset machinery cost ten times the read of a small object
        rows = frames.plain_subject(pq.ParquetFile(pa.BufferReader(data)).read(columns=wanted))
        if rows.num_rows != obj.rows:
            raise ConfigurationError(
                f"s3://{self.bucket}/{obj.key}: {rows.num_rows} rows, the manifest says {obj.rows}"
            )
        return rows

    def checked(self, obj: ObjectEntry, data: bytes) -> ObjectEntry:
        """The entry `data` is read against: `obj`, when its checksum matches (expiry's reader may vouch for
        another)."""
        if hashlib.sha256(data).hexdigest() != obj.sha256:
            raise ConfigurationError(f"s3://{self.bucket}/{obj.key}: checksum does not match the manifest")
        return obj

    def rows(self, entry: TableEntry, bucket: int | None) -> pa.Table | None:
        """The bucket's rows at this manifest (with ROW_COLUMN and SUBJECT_COLUMN); None when no object has any."""
        number = bucket_number(bucket)
        current: pa.Table | None = None
        for obj in entry.objects:
            if not covers(obj, bucket):
                continue
            if obj.night is None:
                base = self.read(obj)
                current = base if current is None else pa.concat_tables([current, base.cast(current.schema)])
                continue
            delta = self._delta(obj, bucket)
            mine = delta.filter(pc.equal(delta.column(BUCKET_COLUMN), number))
            flags = mine.column(GONE_COLUMN).combine_chunks()
            gone = mine.filter(flags).column(ROW_COLUMN).to_numpy()
            new = mine.filter(pc.invert(flags)).drop_columns([GONE_COLUMN, BUCKET_COLUMN])
            if current is None:
                current = new
            else:
                current = pa.concat_tables([remove_digests(current, gone), new.cast(current.schema)])
        return current

    def _delta(self, obj: ObjectEntry, bucket: int | None) -> pa.Table:
        number = bucket_number(bucket)
        for key in [k for k, (last, _) in self._deltas.items() if last < number]:  # buckets come in order
            del self._deltas[key]
        if obj.key not in self._deltas:
            last = obj.last_bucket if obj.last_bucket is not None else bucket_number(obj.bucket)
            self._deltas[obj.key] = (last, self.read(obj))
        return self._deltas[obj.key][1]


def table_rows(client: Any, bucket: str, entry: TableEntry) -> Iterator[pa.Table]:
    """A table's rows at a snapshot, a bucket at a time, without the chain's own columns."""
    reader = Reader(client, bucket)
    for number in buckets_named(entry):
        rows = reader.rows(entry, number)
        if rows is not None and rows.num_rows:
            yield rows.drop_columns([c for c in OWN_COLUMNS if c in rows.column_names])


def span(obj: ObjectEntry) -> tuple[int, int]:
    """The bucket numbers an object covers, first and last (as `covers`: None is NO_BUCKET)."""
    first = bucket_number(obj.bucket)
    return first, first if obj.last_bucket is None else obj.last_bucket


Steps = dict[int, tuple[np.ndarray, np.ndarray]]
"""One object's digests by bucket number: (gone, new); a base's are all new, of its one bucket."""


def _steps(reader: Reader, obj: ObjectEntry) -> Steps:
    rows = reader.read(obj)
    digests = rows.column(ROW_COLUMN).to_numpy()
    if obj.night is None:
        return {bucket_number(obj.bucket): (digests[:0], digests)}
    numbers = rows.column(BUCKET_COLUMN).to_numpy()
    gone = rows.column(GONE_COLUMN).to_numpy()
    order = np.argsort(numbers, kind="stable")
    numbers, gone, digests = numbers[order], gone[order], digests[order]
    found: Steps = {}
    for number in np.unique(numbers):
        start, end = np.searchsorted(numbers, [number, number + 1])
        flags = gone[start:end]
        found[int(number)] = (digests[start:end][flags], digests[start:end][~flags])
    return found


def held(steps: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """The digests left once each (gone, new) step is applied in order to nothing, as `Reader.rows` applies a
    bucket's objects: a gone digest removes one row holding it, if one is left; each new digest adds a row."""
    if not any(len(gone) for gone, _ in steps):
        return np.concatenate([new for _, new in steps]) if steps else np.empty(0, np.uint64)
    digests = np.concatenate([d for gone, new in steps for d in (gone, new)])
    signs = np.concatenate([np.repeat(np.int64(s), len(d)) for gone, new in steps for d, s in ((gone, -1), (new, 1))])
    order = np.argsort(digests, kind="stable")  # by digest, each digest's steps still in order
    digests, signs = digests[order], signs[order]
    starts = np.flatnonzero(np.r_[True, digests[1:] != digests[:-1]])
    ends = np.r_[starts[1:], len(digests)] - 1
    # A count floored at zero after each step is the running sum less its lowest point so far (at most 0).
    running = np.cumsum(signs)
    running -= np.repeat(running[starts] - signs[starts], np.diff(np.r_[starts, len(digests)]))
    lowest = np.minimum(np.minimum.reduceat(running, starts), 0)
    return np.repeat(digests[starts], running[ends] - lowest)


def digests_at(
    reader: Reader, entry: TableEntry, buckets: list[int | None], fetch: Executor, ahead: int
) -> Iterator[np.ndarray]:
    """The digests (uint64) of each of `buckets`' rows at this manifest, in their order (ascending, None first),
    as `Reader.rows` would hold them (whose `columns=[]` decodes only the chain's own columns), without a table
    a bucket and a delta. Objects are read on `fetch` in the order the buckets need them, up to `ahead` beyond
    those in use, and let go once the buckets pass them."""
    numbers = [bucket_number(b) for b in buckets]
    first_needed = {}
    for position, obj in enumerate(entry.objects):
        first, last = span(obj)
        at = bisect.bisect_left(numbers, first)
        if at < len(numbers) and numbers[at] <= last:
            first_needed[position] = numbers[at]
    order = sorted(first_needed, key=lambda p: (first_needed[p], p))
    queued: deque[tuple[int, Future[Steps]]] = deque()
    active: dict[int, Future[Steps]] = {}  # position in the entry -> its steps, read or being read
    waiting = iter(order)

    def top_up() -> None:
        while len(queued) < ahead and (position := next(waiting, None)) is not None:
            queued.append((position, fetch.submit(_steps, reader, entry.objects[position])))

    try:
        for number in numbers:
            top_up()
            while queued and first_needed[queued[0][0]] <= number:
                position, future = queued.popleft()
                active[position] = future
                top_up()
            for position in [p for p in active if span(entry.objects[p])[1] < number]:
                del active[position]
            steps = [active[p].result().get(number) for p in sorted(active)]
            yield held([s for s in steps if s is not None])
    finally:
        for _, future in queued:
            future.cancel()
