"""The in-memory parts of backups: subject buckets and the erasure of rows in an Arrow frame."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st
from lethe.backup import frames, layout
from lethe.pseudonym import subject_pseudonym

KEY = b"unit-key"


def _frame() -> pa.Table:
    table = pa.table(
        {
            "invoice_id": pa.array([1, 2, 3, 4], pa.int64()),
            "user_id": pa.array([10, 11, 10, None], pa.int64()),
            "subject_pseudonym": pa.array([None, None, None, "old"], pa.string()),
            "card_last4": pa.array(["1111", "2222", "3333", "4444"]),
        }
    )
    return frames.with_subject(table, "user_id", KEY)


def test_bucket_is_computed_from_the_pseudonym_alone() -> None:
    p = subject_pseudonym(KEY, 10)
    assert layout.bucket_of(p, 64) == int(p[:8], 16) % 64
    spill = frames.BucketSpill(64)
    spill.add(_frame())
    groups = {b: pa.concat_tables(spill.parts(b)) for b in spill.buckets_held()}
    spill.close()
    assert groups[None].column("invoice_id").to_pylist() == [4]
    assert groups[layout.bucket_of(p, 64)].column("user_id").to_pylist().count(10) == 2
    assert sum(t.num_rows for t in groups.values()) == 4


def test_delete_removes_only_the_tombstoned_subjects_rows() -> None:
    out, erased = frames.erase_subjects(_frame(), {subject_pseudonym(KEY, 10)}, "delete", {})
    assert out.column("invoice_id").to_pylist() == [2, 4]
    assert erased.deleted == 2 and erased.per_subject == {subject_pseudonym(KEY, 10): 2}


def test_pseudonymise_unlinks_masks_and_keeps_the_row() -> None:
    p = subject_pseudonym(KEY, 10)
    out, erased = frames.erase_subjects(
        _frame(), {p}, "pseudonymise", {"user_id": "pseudonym_link", "card_last4": "null"}, "subject_pseudonym"
    )
    assert erased.pseudonymised == 2 and out.num_rows == 4
    assert out.column("user_id").to_pylist() == [None, 11, None, None]
    assert out.column("card_last4").to_pylist() == [None, "2222", None, "4444"]
    assert out.column("subject_pseudonym").to_pylist() == [p, None, p, "old"]
    assert p not in out.column(layout.SUBJECT_COLUMN).to_pylist()


def test_retain_and_unknown_subjects_leave_the_frame_alone() -> None:
    frame = _frame()
    assert frames.erase_subjects(frame, {subject_pseudonym(KEY, 10)}, "retain", {})[0] is frame
    assert frames.erase_subjects(frame, {"f" * 64}, "delete", {})[1].changed == 0


def test_snapshot_ids_are_checked() -> None:
    assert layout.check_snapshot_id("20261130T020000Z")
    with pytest.raises(ValueError, match="YYYYMMDDTHHMMSSZ"):
        layout.check_snapshot_id("../../etc")


def test_each_object_carries_only_its_own_rows_pseudonyms() -> None:
    """Rows spilled by bucket a block at a time come back in their order, each bucket's apart, and the object
    written from a bucket names no one else: every row group's dictionary holds only its own rows' subjects."""
    import io

    import pyarrow.parquet as pq

    people = list(range(200))
    table = pa.table({"user_id": pa.array([p for p in people for _ in range(3)] + [None], pa.int64())})
    erased = subject_pseudonym(KEY, 7)
    frame, _ = frames.erase_subjects(frames.with_subject(table, "user_id", KEY), {erased}, "delete", {})
    spill = frames.BucketSpill(8)
    for block in (frame.slice(0, 250), frame.slice(250)):  # two blocks: every bucket gets a part of each
        spill.add(block)
    seen: set[str] = set()
    assert spill.rows == frame.num_rows
    for bucket in spill.buckets_held():
        parts = list(spill.parts(bucket))
        ids = [u for part in parts for u in part.column("user_id").to_pylist()]
        expected = frame.filter(pa.array([_bucket8(p) == bucket for p in _subjects(frame)]))
        assert ids == expected.column("user_id").to_pylist()  # the bucket's rows, in the order they came
        body = io.BytesIO()
        out = frames.ParquetStream(body, spill.schema)
        for part in parts:
            out.write(part)
        out.close()
        raw = pq.read_table(io.BytesIO(body.getvalue()), read_dictionary=[layout.SUBJECT_COLUMN])
        for chunk in raw.column(layout.SUBJECT_COLUMN).chunks:  # one per row group
            in_rows = {p for p in chunk.to_pylist() if p is not None}
            assert set(chunk.dictionary.to_pylist()) == in_rows  # nothing but this object's own subjects
            assert all(layout.bucket_of(p, 8) == bucket for p in in_rows)
            seen |= in_rows
        assert frames.from_parquet(body.getvalue()).column(layout.SUBJECT_COLUMN).type == pa.string()
    spill.close()
    assert erased not in seen
    assert seen == {subject_pseudonym(KEY, p) for p in people if p != 7}


def _subjects(frame: pa.Table) -> list[str | None]:
    return frame.column(layout.SUBJECT_COLUMN).cast(pa.string()).to_pylist()


def _bucket8(pseudonym: str | None) -> int | None:
    return None if pseudonym is None else layout.bucket_of(pseudonym, 8)


@given(
    sizes=st.dictionaries(st.sampled_from([f"t{i}" for i in range(20)]), st.integers(0, 10**11), min_size=1),
    share=st.integers(1, 512),
)
def test_bucket_counts_keep_any_one_persons_rewrite_within_the_share(sizes: dict[str, int], share: int) -> None:
    """A person in every rewritable table rewrites one bucket of each: at most 1/share of all bytes."""
    rewritable = set(sorted(sizes)[::2])
    counts = layout.bucket_counts(sizes, rewritable, share)
    assert set(counts) == set(sizes)
    assert all(counts[t] == 1 for t in set(sizes) - rewritable)
    assert all(1 <= b <= layout.MAX_BUCKETS for b in counts.values())
    # every object also carries its own overhead, in the total and in what a person's erasure rewrites
    worst = sum(sizes[t] / counts[t] + layout.OBJECT_OVERHEAD for t in rewritable if sizes[t])
    total = sum(sizes.values()) + layout.OBJECT_OVERHEAD * sum(counts.values())
    if all(counts[t] < layout.MAX_BUCKETS for t in rewritable):
        assert worst <= total / share * 1.000001


def test_bucket_counts_give_big_tables_more_buckets_and_fewer_objects_than_a_flat_split() -> None:
    sizes = {"events": 32_000_000, "accounts": 5_000_000, "disputes": 65_000, "holds": 65_000}
    counts = layout.bucket_counts(sizes, {"events", "accounts", "disputes"}, 64)
    assert counts["events"] > counts["accounts"] > counts["disputes"] and counts["holds"] == 1
    assert sum(counts.values()) < 64 * len(sizes)


def test_manifest_finds_a_persons_objects_by_each_tables_bucket_count() -> None:
    from lethe.backup.manifest import Manifest, ObjectEntry, TableEntry

    def table(buckets: int | None, count: int, action: str = "delete") -> TableEntry:
        objects = [
            ObjectEntry(key=f"{action}/{buckets}/b{b}", bucket=b, rows=1, bytes=1, sha256="") for b in range(count)
        ]
        return TableEntry(columns=[], subject_column="user_id", erasure_action=action, erasure_columns={},
                          objects=objects, buckets=buckets)  # fmt: skip

    tables = {"events": table(150, 150), "holds": table(1, 1, "retain"), "older": table(None, 64)}
    manifest = Manifest(snapshot_id="20261101T020000Z", region="r", bucket="b", created_at="", policy_version="1",
                        policy_digest="", buckets=64, tables=tables)  # fmt: skip
    p = subject_pseudonym(KEY, 42)
    found = {(t, o.bucket) for t, _, o, who in manifest.holding({p}) if who == {p}}
    # per-table counts; a manifest written before them falls back to the snapshot's; retained tables are never read
    assert found == {("events", layout.bucket_of(p, 150)), ("older", layout.bucket_of(p, 64))}
    raw = json.loads(manifest.to_json())
    del raw["tables"]["older"]["buckets"]  # as manifests written before per-table counts are
    back = Manifest.from_json(json.dumps(raw).encode(), "test")
    assert back.tables["events"].buckets == 150 and back.tables["older"].buckets is None
    assert {(t, o.bucket) for t, _, o, _ in back.holding({p})} == found


@pytest.mark.parametrize(("first", "after"), [(1024, 3), (2, 100)], ids=["every-3", "doubling"])
def test_cached_pseudonyms_equal_the_keyed_pseudonym(monkeypatch: pytest.MonkeyPatch, first: int, after: int) -> None:
    """The compact cache gives each subject exactly its keyed pseudonym, whether it was met before a merge,
    after it, or in the same block, for integer keys of any width and sign and for text keys, and a digest
    ending in a zero byte keeps it."""
    monkeypatch.setattr(frames.Pseudonyms, "MERGE_FIRST", first)
    monkeypatch.setattr(frames.Pseudonyms, "MERGE_AFTER", after)
    cache = frames.Pseudonyms(KEY)
    trailing_zero = next(i for i in range(100_000) if subject_pseudonym(KEY, i).endswith("00"))
    blocks = [[5, 1, 9], [9, 2, 5, 70_000_000_000], [1, 3, trailing_zero, 2], [-8, trailing_zero, 5]]
    blocks += [list(range(60_000, 60_100)), [100_000, 60_050, 1], list(range(59_990, 60_010))]
    for block in blocks:
        for width in (pa.int32(), pa.int64()):
            if width == pa.int32() and max(block) > 2**31:
                continue
            got = cache.of(pa.array(block, width)).to_pylist()
            assert got == [subject_pseudonym(KEY, v) for v in block]
    words = ["a@example.test", "B", "a@example.test"]
    assert cache.of(pa.array(words)).to_pylist() == [subject_pseudonym(KEY, w) for w in words]


def test_buckets_read_from_the_strings_equal_bucket_of() -> None:
    pseudonyms = [subject_pseudonym(KEY, i) for i in range(500)] + ["ABCDEF01" + "0" * 56]
    array = pa.array(pseudonyms).slice(3)  # an offset into the buffers, as a sliced dictionary has
    for buckets in (1, 7, 64, 4096):
        assert frames.buckets_of(array, buckets).tolist() == [layout.bucket_of(p, buckets) for p in pseudonyms[3:]]
    with pytest.raises(ValueError):
        frames.buckets_of(pa.array(["not-hex-at-all"]), 8)


@given(st.lists(st.integers(min_value=1, max_value=3000), min_size=1, max_size=200))
def test_copy_blocks_end_on_rows_and_lose_nothing(sizes: list[int]) -> None:
    """Whatever the rows' sizes against the block size (smaller, equal, several times larger), each block
    handed over is whole rows, in order, and together they are every byte written."""
    from concurrent.futures import ThreadPoolExecutor

    rows = [b"r" * (n - 1) + b"\n" for n in sizes]
    blocks: list[bytes] = []
    with pytest.MonkeyPatch.context() as patch, ThreadPoolExecutor(1) as worker:
        patch.setattr(frames, "COPY_BLOCK_BYTES", 1024)
        copy = frames.CopyBlocks(worker, lambda block: blocks.append(block.to_pybytes()))
        for row in rows:
            assert copy.write(row) == len(row)
        copy.finish()
    assert b"".join(blocks) == b"".join(rows)
    ends, offset = set(), 0
    for row in rows:
        offset += len(row)
        ends.add(offset)
    offset = 0
    for block in blocks:
        offset += len(block)
        assert offset in ends
        assert len(block) <= 1024 or block.count(b"\n") == 1  # a block is at most the size, or one larger row


def test_an_object_gives_back_every_exported_type_without_an_arrow_schema() -> None:
    """Objects are written without the serialised Arrow schema: each type a column is exported as (every
    PostgreSQL type Lethe maps, and text) must come back from the Parquet types alone, values and nulls equal."""
    import datetime as dt
    import io

    import pyarrow.parquet as pq

    samples = {
        "int2": [1, None],
        "int4": [-2, 2**31 - 1],
        "int8": [2**62, None],
        "bool": [True, None],
        "float4": [1.5, None],
        "float8": [-0.25, 1e300],
        "timestamptz": [dt.datetime(2026, 12, 6, 1, 2, 3, 456789, tzinfo=dt.UTC), None],
        "timestamp": [dt.datetime(1999, 12, 31, 23, 59, 59), None],
        "date": [dt.date(2026, 2, 28), None],
        "text": ["Ünïcode ✓", None],
        "_int4": ["{1,2}", None],  # arrays and every unmapped type travel as their text
    }
    columns = [frames.Column(f"c_{t}", t) for t in samples]
    assert {c.pg_type for c in columns} >= set(frames._ARROW_TYPES)  # a type mapped later must be added here
    sent = pa.table({c.name: pa.array(samples[c.pg_type], c.arrow_type) for c in columns})
    sent = sent.append_column(layout.SUBJECT_COLUMN, pa.array(["p1", None]).dictionary_encode())
    body = io.BytesIO()
    out = frames.ParquetStream(body, sent.schema)
    out.write(sent)
    out.close()
    assert b"ARROW:schema" not in (pq.ParquetFile(io.BytesIO(body.getvalue())).metadata.metadata or {})
    back = frames.from_parquet(body.getvalue())
    assert back.equals(frames.plain_subject(sent), check_metadata=True)
    assert frames.parquet_schema(io.BytesIO(body.getvalue())) == back.schema
