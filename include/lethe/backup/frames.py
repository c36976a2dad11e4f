"""Rows between PostgreSQL, Arrow and Parquet, and the erasure of a person's rows in a frame.

Export is COPY ... TO STDOUT (CSV) read by Arrow's multithreaded CSV reader: no
per-row Python. Numbers, booleans and times get Arrow types; every other column
keeps PostgreSQL's own text form (inet, jsonb, arrays), so a restore with COPY
gives back exactly what was exported.
"""

from __future__ import annotations

import io
import itertools
import tempfile
from collections.abc import Iterable, Iterator
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
from lethe.pseudonym import subject_pseudonym
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


def export_table(cur: psycopg2.extensions.cursor, table: str, columns: list[Column]) -> pa.Table:
    """All rows of `table` as an Arrow table, through COPY (in the caller's transaction)."""
    query = sql.SQL("COPY (SELECT {} FROM {} t) TO STDOUT WITH (FORMAT csv)").format(
        sql.SQL(", ").join(c.select_expr() for c in columns), relation(table)
    )
    cur.execute("SET LOCAL DateStyle = 'ISO, YMD'")  # the time format Arrow parses, whatever the server default
    with tempfile.SpooledTemporaryFile(max_size=64 << 20) as spool:
        cur.copy_expert(query.as_string(cur), spool)
        spool.seek(0)
        if spool.read(1) == b"":
            return pa.table({c.name: pa.array([], c.arrow_type) for c in columns})
        spool.seek(0)
        return pacsv.read_csv(
            spool,
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


def with_subject(
    frame: pa.Table,
    subject_column: str | None,
    key: bytes,
    cache: dict[int, str] | None = None,
    cut_link: str | None = None,
) -> pa.Table:
    """Add the keyed pseudonym of each row's subject as SUBJECT_COLUMN (NULL when the row has none).

    The column is dictionary-encoded: one HMAC and one 64-character string per distinct
    subject, and per row only an index, which keeps the split and the Parquet encoding cheap.
    `cache` carries the HMACs across the tables of one snapshot. `cut_link`: the column holding the
    subject's pseudonym in rows whose link retention cut (pseudonym_link): their subject, so they
    share the person's bucket and an erasure's tombstone finds them.
    """
    if cut_link is not None:
        frame = with_subject(frame, subject_column, key, cache)
        column = frame.column_names.index(SUBJECT_COLUMN)
        both = pc.coalesce(frame.column(SUBJECT_COLUMN).cast(pa.string()), frame.column(cut_link))
        return frame.set_column(column, SUBJECT_COLUMN, pc.dictionary_encode(both.combine_chunks()))
    if subject_column is None:
        return frame.append_column(SUBJECT_COLUMN, pa.nulls(frame.num_rows, pa.string()))
    cache = {} if cache is None else cache
    encoded = pc.dictionary_encode(frame.column(subject_column).combine_chunks())
    uniques = []
    for value in encoded.dictionary.to_pylist():
        if value not in cache:
            cache[value] = subject_pseudonym(key, value)
        uniques.append(cache[value])
    pseudonyms = pa.DictionaryArray.from_arrays(encoded.indices, pa.array(uniques, pa.string()))
    return frame.append_column(SUBJECT_COLUMN, pseudonyms)


def _as_dictionary(column: pa.ChunkedArray) -> pa.DictionaryArray:
    array = column.combine_chunks()
    if pa.types.is_dictionary(array.type):
        return array
    return pc.dictionary_encode(array)


def split_by_bucket(frame: pa.Table, buckets: int) -> Iterable[tuple[int | None, pa.Table]]:
    """(bucket, rows) groups by the subject pseudonym; rows without a subject come as bucket None.

    Each group's pseudonym column is dictionary-encoded with only the pseudonyms of its own
    rows: the distinct pseudonyms are ordered by bucket once, so every bucket's dictionary is
    one contiguous slice of them and no object carries anyone else's pseudonym.
    """
    if frame.num_rows == 0:
        return
    subjects = _as_dictionary(frame.column(SUBJECT_COLUMN))
    distinct = len(subjects.dictionary)
    indices = subjects.indices.fill_null(distinct).to_numpy(zero_copy_only=False)  # NULL -> one past the end
    used = np.bincount(indices, minlength=distinct + 1)[:distinct] > 0  # erased rows leave unused entries
    unique_bucket = np.array([bucket_of(p, buckets) for p in subjects.dictionary.to_pylist()], dtype=np.int64)
    unique_bucket[~used] = buckets  # past every bucket: left out of all dictionaries
    unique_order = np.argsort(unique_bucket, kind="stable")
    position = np.empty(distinct + 1, dtype=np.int64)
    position[unique_order] = np.arange(distinct)
    dictionary = subjects.dictionary.take(pa.array(unique_order))
    dictionary_start = np.searchsorted(unique_bucket[unique_order], np.arange(buckets + 1))

    row_bucket = np.append(unique_bucket, -1)[indices]
    order = np.argsort(row_bucket, kind="stable")
    rows = frame.drop_columns([SUBJECT_COLUMN]).take(pa.array(order))
    row_position = position[indices][order]
    values, starts = np.unique(row_bucket[order], return_index=True)
    ends = [*starts[1:], frame.num_rows]
    for value, start, end in zip(values, starts, ends, strict=True):
        part = rows.slice(int(start), int(end - start))
        if value < 0:
            column = pa.DictionaryArray.from_arrays(pa.nulls(part.num_rows, pa.int32()), dictionary.slice(0, 0))
            yield None, part.append_column(SUBJECT_COLUMN, column)
            continue
        first, last = int(dictionary_start[value]), int(dictionary_start[value + 1])
        local = (row_position[start:end] - first).astype(np.int32)
        column = pa.DictionaryArray.from_arrays(pa.array(local), dictionary.slice(first, last - first))
        yield int(value), part.append_column(SUBJECT_COLUMN, column)


# Rows per row group: propagation reads and rewrites an object this many rows at a time, so its memory
# is bounded by the row group, not by the object (a bucket of a billion-row table).
ROW_GROUP_ROWS = 65_536
# No column statistics (nothing reads them); dictionary encoding only for the pseudonym, whose few
# distinct values repeat on many rows.
_PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "write_statistics": False,
    "use_dictionary": [SUBJECT_COLUMN],
}


def to_parquet(frame: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(frame, buf, row_group_size=ROW_GROUP_ROWS, **_PARQUET_OPTIONS)
    return buf.getvalue()


def from_parquet(data: bytes) -> pa.Table:
    """An object's rows, with the pseudonym column as plain strings whatever encoding it was written in."""
    return _plain_subject(pq.read_table(io.BytesIO(data)))


def _plain_subject(frame: pa.Table) -> pa.Table:
    if SUBJECT_COLUMN in frame.column_names and pa.types.is_dictionary(frame.schema.field(SUBJECT_COLUMN).type):
        index = frame.column_names.index(SUBJECT_COLUMN)
        frame = frame.set_column(index, SUBJECT_COLUMN, frame.column(index).cast(pa.string()))
    return frame


def parquet_schema(source: BinaryIO) -> pa.Schema:
    """The schema `parquet_batches` yields (the pseudonym column as plain strings)."""
    return _plain_subject(pq.ParquetFile(source).schema_arrow.empty_table()).schema


def parquet_batches(source: BinaryIO, limit: int | None = None) -> Iterator[pa.Table]:
    """An object's rows ROW_GROUP_ROWS at a time (the first `limit` batches only, when given), as
    `from_parquet` gives them whole. Readers of one file may interleave: each reads at its own offsets."""
    batches = pq.ParquetFile(source).iter_batches(batch_size=ROW_GROUP_ROWS)
    for batch in itertools.islice(batches, limit):
        yield _plain_subject(pa.Table.from_batches([batch]))


class ParquetStream:
    """An object written a batch at a time, as `to_parquet` writes it whole; every batch is cast to `schema`
    (a masked column keeps its type)."""

    def __init__(self, sink: BinaryIO, schema: pa.Schema) -> None:
        self.schema = schema
        self._writer = pq.ParquetWriter(sink, schema, **_PARQUET_OPTIONS)

    def write(self, frame: pa.Table) -> None:
        self._writer.write_table(frame.select(self.schema.names).cast(self.schema), row_group_size=ROW_GROUP_ROWS)

    def close(self) -> None:
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
