"""The delta arithmetic of incremental snapshots, against a reference written with plain Counters."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st
from lethe.backup import chain

KEY = b"unit-test-key"
digests = st.lists(st.integers(min_value=0, max_value=6), max_size=30)  # few values: many repeats


@settings(max_examples=300, deadline=None)
@given(before=digests, now=digests, at_once=st.integers(min_value=1, max_value=8))
def test_a_delta_applied_to_the_night_before_gives_the_night_after(
    before: list[int], now: list[int], at_once: int
) -> None:
    # compared a few at a time too: a value's occurrences split over two slices
    new, gone = chain.changes(np.array(before, np.uint64), np.array(now, np.uint64), at_once)
    # the reference: a multiset difference each way
    assert Counter(now[i] for i in new.tolist()) == Counter(now) - Counter(before)
    assert Counter(gone.tolist()) == Counter(before) - Counter(now)
    rows = pa.table({chain.ROW_COLUMN: pa.array(before, pa.uint64())})
    kept = chain.remove_digests(rows, gone).column(chain.ROW_COLUMN).to_pylist()
    assert Counter(kept + [now[i] for i in new.tolist()]) == Counter(now)


def test_row_digests_tell_rows_apart_by_every_column_and_by_null() -> None:
    at = datetime(2026, 12, 1, tzinfo=UTC)
    frame = pa.table(
        {
            "id": pa.array([1, 1, 1, 1, 1, 1], pa.int64()),
            "name": pa.array(["a", "a", "b", None, "", "a"]),
            "at": pa.array([at, at, at, at, at, None], pa.timestamp("us", tz="UTC")),
        }
    )
    found = chain.row_digests(frame, ["id", "name", "at"], KEY).tolist()
    assert found[0] == found[1]  # the same row twice
    assert len(set(found[1:])) == 5  # another name, NULL, empty text, a NULL time: each its own digest
    assert chain.row_digests(frame, ["id", "name", "at"], b"another key").tolist()[0] != found[0]


def test_nulls_of_columns_64_apart_are_not_the_empty_values_of_both() -> None:
    """A table of more than 64 columns: columns 0 and 64 both NULL, and both '', are different rows."""
    import pyarrow as pa
    from lethe.backup import chain

    names = [f"c{i}" for i in range(66)]
    frame = pa.table({n: pa.array([None, ""] if n in ("c0", "c64") else [None, None], pa.string()) for n in names})
    first, second = chain.row_digests(frame, names, b"k")
    assert first != second


@settings(max_examples=500, deadline=None)
@given(steps=st.lists(st.tuples(digests, digests), max_size=6))
def test_held_digests_are_the_bucket_replayed_step_by_step(steps: list[tuple[list[int], list[int]]]) -> None:
    """chain.held (numpy, the export's digests before tonight) against the restore's rule replayed with a Counter:
    each step's gone digests remove one row each while one is left, then its new ones add a row each."""
    rows: Counter[int] = Counter()
    for gone, new in steps:
        for d in gone:
            if rows[d]:
                rows[d] -= 1
        rows.update(new)
    as_arrays = [(np.array(g, np.uint64), np.array(n, np.uint64)) for g, n in steps]
    assert Counter(chain.held(as_arrays).tolist()) == +rows
