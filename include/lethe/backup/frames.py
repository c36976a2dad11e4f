"""Rows between PostgreSQL, Arrow and Parquet, and the erasure of a person's rows in a frame.

Export is COPY ... TO STDOUT (CSV) read by Arrow's multithreaded CSV reader: no
per-row Python. Numbers, booleans and times get Arrow types; every other column
keeps PostgreSQL's own text form (inet, jsonb, arrays), so a restore with COPY
gives back exactly what was exported.
"""

from __future__ import annotations

import concurrent.futures
import io
import itertools
import os
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np
import psycopg2.extensions
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from psycopg2 import sql

from lethe import masking
from lethe.backup.layout import SUBJECT_COLUMN, bucket_of
from lethe.pseudonym import subject_digest, subject_pseudonym
from lethe.relations import regclass_literal, relation

_ARROW_TYPES: dict[str, pa.DataType] = {
    "int2": pa.int16(),
    "int4": pa.int32(),
    "int8": pa.int64(),
    "bool": pa.bool_(),
    "float4": pa.float32(),
    "float8": pa.float64(),
    "timestamptz": pa.timestamp("us", tz="UTC"),
    "timestamp": pa.timestamp("us"),
    "date": pa.date32(),
}

# A manifest's strategy for a link re-pointed to the placeholder subject row carries the row's key:
# `placeholder:<key>` (no personal data), so propagation and restore need no policy to apply it.
PLACEHOLDER_PREFIX = masking.PLACEHOLDER_PREFIX


def manifest_strategies(columns: dict[str, str], placeholder: str | None) -> dict[str, str]:
    """The erasure strategies as a manifest records them (placeholder with its key)."""
    return {c: f"{PLACEHOLDER_PREFIX}{placeholder}" if s == "placeholder" else s for c, s in columns.items()}


@dataclass(frozen=True)
class Column:
    name: str
    pg_type: str  # pg_type.typname, e.g. int8, timestamptz, _text
    expr: sql.Composable | None = None  # a computed column (the owner of a referenced row), not a stored one

    @property
    def arrow_type(self) -> pa.DataType:
        return _ARROW_TYPES.get(self.pg_type, pa.string())

    def select_expr(self) -> sql.Composable:
        # Times come out with their UTC offset (e.g. +00, +05:30), which Arrow's ISO-8601 parser reads.
        if self.expr is not None:
            return sql.SQL("{} AS {}").format(self.expr, sql.Identifier(self.name))
        return sql.Identifier(self.name)


def table_columns(cur: psycopg2.extensions.cursor, table: str) -> list[Column]:
    cur.execute(
        # The table as the connection's search_path finds it: the platform's, or Lethe's own state.
        "SELECT a.attname, t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
        " WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped"
        " ORDER BY a.attnum",
        (regclass_literal(table),),
    )
    columns = [Column(name, typ) for name, typ in cur.fetchall()]
    if not columns:
        raise LookupError(f"table {table!r} named in the policy does not exist in the database")
    return columns


def copy_query(table: str, columns: list[Column]) -> sql.Composed:
    """The COPY that exports `table`'s columns as CSV (times in the format Arrow parses: set DateStyle first)."""
    return sql.SQL("COPY (SELECT {} FROM {} t) TO STDOUT WITH (FORMAT csv)").format(
        sql.SQL(", ").join(c.select_expr() for c in columns), relation(table)
    )


def parse_csv(block: pa.Buffer, columns: list[Column]) -> pa.Table:
    """Rows of a table's COPY (whole rows) as Arrow, with the columns' types."""
    return pacsv.read_csv(
        block,
        read_options=pacsv.ReadOptions(column_names=[c.name for c in columns], block_size=8 << 20),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types={c.name: c.arrow_type for c in columns},
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,  # "" is an empty string, a bare empty field is NULL
            true_values=["t"],
            false_values=["f"],
        ),
    )


# The export receives a table's COPY in blocks of about this size and parses each on its own: no table is
# ever held whole, whatever its size.
COPY_BLOCK_BYTES = 4 << 20


class CopyBlocks:
    """The file a COPY writes into. libpq hands over one whole row per write; a buffered writer of
    COPY_BLOCK_BYTES (C code: no Python call per row, which cost a 20k-user export a third of its main thread)
    gathers them and passes on only whole writes, so a block always ends on a row. Each block (and the last)
    goes to `consume` on `worker`, in order, while the COPY receives the next. At most two blocks wait, so
    memory stays bounded whatever the table's size."""

    def __init__(self, worker: ThreadPoolExecutor, consume: Callable[[pa.Buffer], None]) -> None:
        self.worker, self.consume = worker, consume
        self.pending: deque[Future[None]] = deque()
        self.cancelled = False
        self._rows = io.BufferedWriter(_Blocks(self._hand_over), buffer_size=COPY_BLOCK_BYTES)
        self.write: Callable[[bytes], int] = self._rows.write

    def _hand_over(self, data: memoryview) -> None:
        if self.cancelled:
            return
        if len(self.pending) > 1:
            self.pending.popleft().result()
        block = pa.py_buffer(bytes(data))  # a copy: the writer reuses its buffer
        self.pending.append(self.worker.submit(self.consume, block))

    def finish(self) -> None:
        """Hand over the rest and wait for every block (raises what consuming one raised)."""
        self._rows.flush()
        while self.pending:
            self.pending.popleft().result()

    def cancel(self) -> None:
        self.cancelled = True  # what the writer still holds is dropped, even when it is flushed on close
        for future in self.pending:
            future.cancel()

    def wait(self) -> None:
        """Wait for the block being consumed, if any, whatever it raises (after `cancel`, on the way out)."""
        concurrent.futures.wait(self.pending)


class _Blocks(io.RawIOBase):
    """The raw end of CopyBlocks' buffered writer: each write it gets is one block of whole rows."""

    def __init__(self, hand_over: Callable[[memoryview], None]) -> None:
        self.hand_over = hand_over

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.hand_over(memoryview(data))
        return len(data)


class BucketSpill:
    """A table's rows split by subject bucket into one unnamed temporary file (gone with the process, even a
    killed one), in the order they came: each block's part of a bucket is one Arrow record batch at a recorded
    offset, so a bucket is read back part by part (`parts`) from any thread, and never whole."""

    def __init__(self, buckets: int) -> None:
        self.buckets = buckets
        self.rows = 0
        self.schema: pa.Schema | None = None
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 (open until close(): parts are read after add)
        self._chunks: dict[int | None, list[tuple[int, int]]] = {}

    def add(self, frame: pa.Table) -> None:
        """Spill a block's rows (with SUBJECT_COLUMN), ordered by bucket, the pseudonyms as plain strings: each
        bucket's rows one serialised Arrow record batch, whose place in the file is recorded."""
        self.rows += frame.num_rows
        if frame.num_rows == 0:
            return
        subjects = _as_dictionary(frame.column(SUBJECT_COLUMN))
        distinct = len(subjects.dictionary)
        indices = subjects.indices.fill_null(distinct).to_numpy(zero_copy_only=False)  # NULL -> one past the end
        row_bucket = np.append(buckets_of(subjects.dictionary, self.buckets), -1)[indices]
        order = np.argsort(row_bucket, kind="stable")
        column = frame.column_names.index(SUBJECT_COLUMN)
        rows = frame.set_column(column, SUBJECT_COLUMN, subjects.cast(pa.string())).take(pa.array(order))
        if self.schema is None:
            self.schema = rows.schema
        (batch,) = rows.cast(self.schema).combine_chunks().to_batches()  # one chunk: at least one row
        values, starts = np.unique(row_bucket[order], return_index=True)
        ends = [*starts[1:].tolist(), batch.num_rows]
        parts = [batch.slice(start, end - start).serialize() for start, end in zip(starts.tolist(), ends, strict=True)]
        offset = self._file.seek(0, io.SEEK_END)
        for value, part in zip(values.tolist(), parts, strict=True):
            self._file.write(part)
            self._chunks.setdefault(None if value < 0 else value, []).append((offset, part.size))
            offset += part.size
        self._file.flush()

    def buckets_held(self) -> list[int | None]:
        return sorted(self._chunks, key=lambda b: -1 if b is None else b)

    def spilled_bytes(self, bucket_no: int | None) -> int:
        return sum(size for _, size in self._chunks.get(bucket_no, []))

    def parts(self, bucket_no: int | None) -> Iterator[pa.Table]:
        """A bucket's rows, block by block (positioned reads: threads may read buckets at once)."""
        for offset, size in self._chunks.get(bucket_no, []):
            batch = pa.ipc.read_record_batch(pa.py_buffer(os.pread(self._file.fileno(), size, offset)), self.schema)
            yield pa.Table.from_batches([batch])

    def close(self) -> None:
        self._file.close()


class Pseudonyms:
    """Each subject's keyed pseudonym, computed once per snapshot (one HMAC per person, not per row or table).

    Integer subjects, the usual key, are kept in sorted arrays of id and 32-byte digest: about 40 bytes a
    person, where a dict of id to hex string took about 200 (194 MiB for 1M people). The ids met since the
    last merge wait in a dict, looked up one by one, so they are merged in once there are as many of them as
    are merged already (at least MERGE_FIRST, at most MERGE_AFTER): a small snapshot's people are in the
    arrays after a few blocks, where waiting for MERGE_AFTER kept every lookup of a 20,000-person snapshot
    in Python (a sixth of its export in py-spy). Other kinds of subject are kept in a dict.
    """

    MERGE_FIRST = 1 << 10
    MERGE_AFTER = 1 << 16

    def __init__(self, key: bytes) -> None:
        self.key = key
        self._ids = np.empty(0, dtype=np.int64)
        self._digests = np.empty((0, 32), dtype=np.uint8)  # not numpy bytes ("S32"): they drop trailing zeros
        self._recent: dict[int, bytes] = {}
        self._other: dict[Any, str] = {}

    def of(self, values: pa.Array) -> pa.Array:
        """The pseudonyms (hex strings) of distinct non-null subject values, in their order."""
        if not pa.types.is_integer(values.type):
            for value in values.to_pylist():
                if value not in self._other:
                    self._other[value] = subject_pseudonym(self.key, value)
            return pa.array([self._other[v] for v in values.to_pylist()], pa.string())
        ids = values.cast(pa.int64()).to_numpy()
        position = np.searchsorted(self._ids, ids)
        known = position < len(self._ids)
        known[known] = self._ids[position[known]] == ids[known]
        found = np.empty((len(ids), 32), dtype=np.uint8)
        found[known] = self._digests[position[known]]
        for i in np.flatnonzero(~known).tolist():
            value = int(ids[i])
            digest = self._recent.get(value)
            if digest is None:
                digest = self._recent[value] = subject_digest(self.key, value)
            found[i] = np.frombuffer(digest, dtype=np.uint8)
        if len(self._recent) >= min(self.MERGE_AFTER, max(self.MERGE_FIRST, len(self._ids))):
            self._merge()
        return _hex_strings(found)

    def _merge(self) -> None:
        recent = np.frombuffer(b"".join(self._recent.values()), dtype=np.uint8).reshape(-1, 32)
        ids = np.concatenate([self._ids, np.fromiter(self._recent, dtype=np.int64, count=len(self._recent))])
        digests = np.concatenate([self._digests, recent])
        order = np.argsort(ids, kind="stable")
        self._ids, self._digests, self._recent = ids[order], digests[order], {}


_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def _hex_strings(digests: np.ndarray) -> pa.Array:
    """Rows of 32 bytes as 64-character hex strings, built as one Arrow buffer (no Python string per row)."""
    text = np.empty((len(digests), 64), dtype=np.uint8)
    text[:, 0::2] = _HEX_DIGITS[digests >> 4]
    text[:, 1::2] = _HEX_DIGITS[digests & 15]
    offsets = np.arange(0, 64 * (len(digests) + 1), 64, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), len(digests), [None, pa.py_buffer(offsets), pa.py_buffer(text)])


_NIBBLE = np.full(256, 255, dtype=np.uint8)
_NIBBLE[np.frombuffer(b"0123456789abcdef", dtype=np.uint8)] = np.arange(16)
_NIBBLE[np.frombuffer(b"ABCDEF", dtype=np.uint8)] = np.arange(10, 16)


def buckets_of(pseudonyms: pa.Array, buckets: int) -> np.ndarray:
    """`layout.bucket_of` of each pseudonym (hex), read from the strings' bytes at once; per value in Python
    only when one is not hex (which bucket_of refuses as it always did)."""
    strings = pseudonyms.cast(pa.large_string())
    if len(strings) and strings.null_count == 0 and pc.min(pc.utf8_length(strings)).as_py() >= 8:
        first = pc.utf8_slice_codeunits(strings, 0, 8)
        data = np.frombuffer(first.buffers()[2], dtype=np.uint8)
        offsets = np.frombuffer(first.buffers()[1], dtype=np.int64)[first.offset : first.offset + len(first) + 1]
        if np.all(np.diff(offsets) == 8):
            nibbles = _NIBBLE[data[offsets[0] : offsets[-1]]].reshape(-1, 8)
            if not (nibbles == 255).any():
                value = (nibbles.astype(np.uint64) << np.arange(28, -1, -4, dtype=np.uint64)).sum(axis=1)
                return (value % np.uint64(buckets)).astype(np.int64)
    return np.array([bucket_of(p, buckets) for p in pseudonyms.to_pylist()], dtype=np.int64)


def with_subject(
    frame: pa.Table,
    subject_column: str | None,
    key: bytes,
    cache: Pseudonyms | None = None,
    cut_link: str | None = None,
) -> pa.Table:
    """Add the keyed pseudonym of each row's subject as SUBJECT_COLUMN (NULL when the row has none).

    The column is dictionary-encoded: one HMAC and one 64-character string per distinct
    subject, and per row only an index, which keeps the split and the Parquet encoding cheap.
    `cache` carries the HMACs across the blocks and tables of one snapshot. `cut_link`: the column holding
    the subject's pseudonym in rows whose link retention cut (pseudonym_link): their subject, so they
    share the person's bucket and an erasure's tombstone finds them.
    """
    if cut_link is not None:
        frame = with_subject(frame, subject_column, key, cache)
        column = frame.column_names.index(SUBJECT_COLUMN)
        both = pc.coalesce(frame.column(SUBJECT_COLUMN).cast(pa.string()), frame.column(cut_link))
        return frame.set_column(column, SUBJECT_COLUMN, pc.dictionary_encode(both.combine_chunks()))
    if subject_column is None:
        return frame.append_column(SUBJECT_COLUMN, pa.nulls(frame.num_rows, pa.string()))
    cache = Pseudonyms(key) if cache is None else cache
    encoded = pc.dictionary_encode(frame.column(subject_column).combine_chunks())
    pseudonyms = pa.DictionaryArray.from_arrays(encoded.indices, cache.of(encoded.dictionary))
    return frame.append_column(SUBJECT_COLUMN, pseudonyms)


def _as_dictionary(column: pa.ChunkedArray) -> pa.DictionaryArray:
    array = column.combine_chunks()
    if pa.types.is_dictionary(array.type):
        return array
    return pc.dictionary_encode(array)


# Rows per row group written. Fewer would cost bytes: each row group repeats its pseudonym dictionary
# (row groups of 16,384 rows made the 1M-user snapshot 37% larger).
ROW_GROUP_ROWS = 65_536
# Rows per batch read: propagation reads, erases and redacts an object this many rows at a time, so its
# memory is bounded by the batch, not by the row group or the object (a bucket of a billion-row table).
READ_ROWS = 16_384
# No column statistics (nothing reads them); dictionary encoding only for the pseudonym, whose few
# distinct values repeat on many rows. No Arrow schema in the footer either: the Parquet types give back
# every type a column is exported as (_ARROW_TYPES, strings), and the serialised schema was about 1 KB of
# every object (a third of a small delta object, a sixth of a 2,000-user snapshot).
_PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "write_statistics": False,
    "use_dictionary": [SUBJECT_COLUMN],
    "store_schema": False,
}


def from_parquet(data: bytes) -> pa.Table:
    """An object's rows, with the pseudonym column as plain strings whatever encoding it was written in."""
    return plain_subject(pq.read_table(io.BytesIO(data)))


def plain_subject(frame: pa.Table) -> pa.Table:
    if SUBJECT_COLUMN in frame.column_names and pa.types.is_dictionary(frame.schema.field(SUBJECT_COLUMN).type):
        index = frame.column_names.index(SUBJECT_COLUMN)
        frame = frame.set_column(index, SUBJECT_COLUMN, frame.column(index).cast(pa.string()))
    return frame


def parquet_schema(source: BinaryIO) -> pa.Schema:
    """The schema `parquet_batches` yields (the pseudonym column as plain strings)."""
    return plain_subject(pq.ParquetFile(source).schema_arrow.empty_table()).schema


def parquet_batches(source: BinaryIO, limit: int | None = None) -> Iterator[pa.Table]:
    """An object's rows READ_ROWS at a time (the first `limit` batches only, when given), as
    `from_parquet` gives them whole. Readers of one file may interleave: each reads at its own offsets."""
    batches = pq.ParquetFile(source).iter_batches(batch_size=READ_ROWS)
    for batch in itertools.islice(batches, limit):
        yield plain_subject(pa.Table.from_batches([batch]))


class ParquetStream:
    """An object written a batch at a time: batches are gathered into row groups of ROW_GROUP_ROWS, each cast
    to `schema` (a masked column keeps its type). The pseudonym column is dictionary-encoded per row group, so
    an object's dictionaries name only its own rows' subjects."""

    def __init__(self, sink: BinaryIO, schema: pa.Schema) -> None:
        self.schema = schema
        self._writer = pq.ParquetWriter(sink, schema, **_PARQUET_OPTIONS)
        self._gathered: list[pa.Table] = []
        self._rows = 0

    def write(self, frame: pa.Table) -> None:
        frame = frame.select(self.schema.names)
        self._gathered.append(frame if frame.schema == self.schema else frame.cast(self.schema))
        self._rows += frame.num_rows
        if self._rows >= ROW_GROUP_ROWS:
            self._flush(whole_groups_only=True)

    def _flush(self, whole_groups_only: bool = False) -> None:
        """Write what was gathered as row groups of ROW_GROUP_ROWS; keep a last, partial one for later when
        `whole_groups_only` (an object read in batches is written back in row groups as full as before)."""
        if not self._gathered:
            return
        rows = pa.concat_tables(self._gathered)
        keep = rows.num_rows % ROW_GROUP_ROWS if whole_groups_only else 0
        self._writer.write_table(rows.slice(0, rows.num_rows - keep), row_group_size=ROW_GROUP_ROWS)
        self._gathered, self._rows = ([rows.slice(rows.num_rows - keep)], keep) if keep else ([], 0)

    def close(self) -> None:
        self._flush()
        self._writer.close()


@dataclass
class Erased:
    """What erasing a set of subjects did to one frame."""

    deleted: int = 0
    pseudonymised: int = 0
    per_subject: dict[str, int] = field(default_factory=dict)  # pseudonym -> rows changed or removed

    @property
    def changed(self) -> int:
        return self.deleted + self.pseudonymised


def _apply_strategy(column: pa.ChunkedArray, mask: pa.Array, strategy: str, subjects: pa.Array) -> pa.Array:
    return masking.arrow_value(strategy, column.combine_chunks(), mask)  # the primary's strategies (lethe.masking)


def erase_subjects(
    frame: pa.Table,
    pseudonyms: set[str],
    action: str | None,
    columns: dict[str, str],
    pseudonym_column: str | None = None,
) -> tuple[pa.Table, Erased]:
    """Apply a table's erasure action to the rows of the given subjects.

    delete: the rows go. pseudonymise: the named columns are masked, a
    `pseudonym_link` column is nulled and the pseudonym goes to `subject_pseudonym`,
    and the pseudonym is written to `pseudonym_column` (as the primary's erasure does);
    the row loses its subject link. retain / no subject: unchanged.
    """
    result = Erased()
    if action not in ("delete", "pseudonymise") or not pseudonyms or frame.num_rows == 0:
        return frame, result
    subjects = frame.column(SUBJECT_COLUMN).combine_chunks()
    value_set = pa.array(sorted(pseudonyms), pa.string())
    if pa.types.is_dictionary(subjects.type):  # test each distinct pseudonym once, then spread to the rows
        mask = pc.fill_null(pc.is_in(subjects.dictionary, value_set=value_set).take(subjects.indices), False)
        subjects = subjects.cast(pa.string())
    else:
        mask = pc.fill_null(pc.is_in(subjects, value_set=value_set), False)
    hits = int(pc.sum(mask).as_py() or 0)
    if hits == 0:
        return frame, result
    for row in pc.value_counts(subjects.filter(mask)).to_pylist():
        result.per_subject[row["values"]] = int(row["counts"])
    if action == "delete":
        result.deleted = hits
        return frame.filter(pc.invert(mask)), result
    result.pseudonymised = hits
    for name, strategy in columns.items():
        if name in frame.column_names:
            index = frame.column_names.index(name)
            frame = frame.set_column(index, name, _apply_strategy(frame.column(name), mask, strategy, subjects))
    if pseudonym_column and pseudonym_column in frame.column_names:
        index = frame.column_names.index(pseudonym_column)
        current = frame.column(pseudonym_column).combine_chunks()
        frame = frame.set_column(index, pseudonym_column, pc.if_else(mask, subjects, current))
    index = frame.column_names.index(SUBJECT_COLUMN)
    frame = frame.set_column(index, SUBJECT_COLUMN, pc.if_else(mask, pa.nulls(len(subjects), pa.string()), subjects))
    return frame, result


def copy_into(cur: psycopg2.extensions.cursor, table: str, frame: pa.Table) -> int:
    """Load an Arrow frame (without SUBJECT_COLUMN) into `table` with COPY FROM STDIN."""
    if SUBJECT_COLUMN in frame.column_names:
        frame = frame.drop_columns([SUBJECT_COLUMN])
    if frame.num_rows == 0:
        return 0
    frame = frame.combine_chunks()  # pyarrow's CSV writer emits garbage bytes for an empty chunk (an emptied object)
    buf = io.BytesIO()
    pacsv.write_csv(frame, buf, write_options=pacsv.WriteOptions(include_header=False))
    buf.seek(0)
    query = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv)").format(
        relation(table), sql.SQL(", ").join(sql.Identifier(c) for c in frame.column_names)
    )
    cur.copy_expert(query.as_string(cur), buf)
    return int(frame.num_rows)


def key_pseudonym_pairs(frame: pa.Table, column: str) -> set[tuple[str, str]]:
    """The distinct (key as text, stored pseudonym) pairs of `frame`'s rows that have both: which pseudonym the
    snapshot stored beside each spelling of a key (a citext key re-cased since: lethe.backup.propagate and
    restore's _folded_aliases)."""
    frame = plain_subject(frame.select([column, SUBJECT_COLUMN]))
    keys, stored = frame.column(column).cast(pa.string()), frame.column(SUBJECT_COLUMN).cast(pa.string())
    pairs = pa.table({"k": keys, "s": stored}).filter(pc.and_(pc.is_valid(keys), pc.is_valid(stored)))
    grouped = pairs.group_by(["k", "s"]).aggregate([])
    return set(zip(grouped.column("k").to_pylist(), grouped.column("s").to_pylist(), strict=True))


def attribute_aliases(frame: pa.Table, aliases: dict[str, str]) -> pa.Table:
    """Rows whose SUBJECT_COLUMN is an alias (a pseudonym stored for a re-cased citext key) take the pseudonym of
    her tombstone instead, so her erasure's action applies to them and a pseudonymised row keeps the pseudonym the
    primary's erasure kept."""
    index = frame.column_names.index(SUBJECT_COLUMN)
    subjects = frame.column(index).cast(pa.string()).combine_chunks()
    found = pc.index_in(subjects, value_set=pa.array(list(aliases), pa.string()))
    theirs = pc.take(pa.array(list(aliases.values()), pa.string()), found)
    return frame.set_column(index, SUBJECT_COLUMN, pc.if_else(pc.is_valid(found), theirs, subjects))
