"""The bounded aggregate: cells of day x source x dimensions, each person's contribution capped.

Engine: DuckDB over the Arrow table from lethe.sharing.extract (bench/sharing.md
compares it with a plain DuckDB aggregate and with pandas on the same rows).

Contribution bounds (docs/sharing.md):
- a person counts at most `max_events_per_cell` events in a cell: beyond that
  their events and total duration are scaled down to the cap (their mean kept);
- a person appears in at most `max_cells_per_day` cells a day: their busiest
  cells are kept (ties broken by the cell's values, so the result is repeatable);
- each event's duration is clipped to [0, max_duration_ms].
`median_duration_ms` is the median, over the people in the cell, of each
person's mean event duration there: one value per person, so no one person
moves it far.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa

from lethe.sharing.config import ALL, DIMENSIONS, RecipientConfig
from lethe.sharing.generalise import select_sql

CELL_KEYS = ("day", "source", *DIMENSIONS)
MEASURES = ("events", "people", "total_duration_ms", "median_duration_ms")


@dataclass
class Aggregate:
    cells: pd.DataFrame  # exact, before suppression: CELL_KEYS + MEASURES
    rows_in: int
    people_in: int
    contributions: dict[str, int] = field(default_factory=dict)  # the largest contribution left after bounding


def connect_duckdb(threads: int | None = None) -> Any:
    import duckdb

    con = duckdb.connect(":memory:")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    return con


def bounded_sql(source_name: str, config: RecipientConfig) -> tuple[str, str]:
    """(SQL of the kept per-person cells, SQL of the published cells) over a generalised relation."""
    dims = [d if d in config.dimensions else f"'{ALL}' AS {d}" for d in DIMENSIONS]
    keys = ", ".join(CELL_KEYS)
    per_person = (
        f"SELECT unit, day, source, {', '.join(dims)}, count(*) AS n, sum(d) AS s, count(d) AS nd "  # noqa: S608 - no values
        f"FROM {source_name} GROUP BY ALL"
    )
    kept = (
        f"SELECT * FROM ({per_person}) QUALIFY row_number() OVER "  # noqa: S608 - no values
        f"(PARTITION BY unit, day ORDER BY n DESC, {', '.join(CELL_KEYS[1:])}) <= {int(config.max_cells_per_day)}"
    )
    cap = int(config.max_events_per_cell)
    cells = (
        f"SELECT {keys}, sum(least(n, {cap}))::BIGINT AS events, count(*)::BIGINT AS people, "  # noqa: S608 - no values
        f"round(sum(s * least(n, {cap}) / n))::BIGINT AS total_duration_ms, "
        f"round(median(s / nullif(nd, 0)))::BIGINT AS median_duration_ms "
        f"FROM kept GROUP BY ALL ORDER BY {keys}"
    )
    return kept, cells


def aggregate(events: pa.Table, config: RecipientConfig, con: Any = None) -> Aggregate:
    """Generalise the extracted rows and compute the bounded, exact cells for `config`."""
    con = con or connect_duckdb()
    con.register("raw_events", events)
    con.execute(f"CREATE OR REPLACE TEMP TABLE generalised AS {select_sql('raw_events', config.max_duration_ms)}")
    con.unregister("raw_events")
    kept, cells_sql = bounded_sql("generalised", config)
    con.execute(f"CREATE OR REPLACE TEMP TABLE kept AS {kept}")
    frame = con.execute(cells_sql).df()
    stats = con.execute(
        "SELECT (SELECT count(*) FROM generalised), (SELECT count(DISTINCT unit) FROM generalised), "
        "(SELECT coalesce(max(c), 0) FROM (SELECT count(*) AS c FROM kept GROUP BY unit, day)), "
        "(SELECT coalesce(max(least(n, ?)), 0) FROM kept)",
        [int(config.max_events_per_cell)],
    ).fetchone()
    con.execute("DROP TABLE generalised")
    con.execute("DROP TABLE kept")
    assert stats is not None
    return Aggregate(
        cells=normalise(frame),
        rows_in=int(stats[0]),
        people_in=int(stats[1]),
        contributions={"max_cells_per_person_day": int(stats[2]), "max_events_per_person_cell": int(stats[3])},
    )


def normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """The release's column types, whatever engine produced the frame."""
    out = pd.DataFrame(
        {
            "day": pd.to_datetime(frame["day"]).dt.date if len(frame) else pd.Series([], dtype="object"),
            **{k: frame[k].astype("string") for k in CELL_KEYS[1:]},
            **{m: pd.array(frame[m], dtype="Int64") for m in MEASURES},
        }
    )
    return out.reset_index(drop=True)
