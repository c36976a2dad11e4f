"""The bounded aggregate: cells of day x source x dimensions, each person's contribution capped.

Engine: DuckDB over integer cell codes (lethe.sharing.generalise.generalise);
bench/sharing.py compares it with DuckDB computing the same aggregate in one
statement, with an unbounded GROUP BY and with pandas on the same rows.

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

from lethe.sharing.config import DIMENSIONS, RecipientConfig
from lethe.sharing.generalise import generalise

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


def bounded_cells(con: Any, source_name: str, config: RecipientConfig) -> tuple[dict[str, Any], dict[str, int]]:
    """The bounded cells of rows (unit, day, cell, d) in DuckDB: (columns as numpy arrays, bound statistics).

    Two passes over the rows' person-cells, the least the per-person bounds need:
    1. per_person: one row per person, day and cell (events, duration sum);
    2. the cells, skipping `dropped`: the person-cells beyond each person-day's busiest
       `max_cells_per_day`. Only person-days over that bound are ranked, a small share of them,
       so the full sort a window over every person-day would need is never paid.
    The statistics are counted from what is left, not derived from the caps.
    """
    cap, per_day = int(config.max_events_per_cell), int(config.max_cells_per_day)
    con.execute(
        "CREATE OR REPLACE TEMP TABLE per_person AS SELECT unit, day, cell, count(*) AS n, sum(d) AS s,"  # noqa: S608 - no values
        f" count(d) AS nd FROM {source_name} GROUP BY unit, day, cell"
    )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE person_day AS SELECT unit, day, count(*) AS cells FROM per_person GROUP BY ALL"
    )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE dropped AS SELECT unit, day, cell FROM (SELECT p.* FROM per_person p"
        " SEMI JOIN (SELECT unit, day FROM person_day WHERE cells > $1) USING (unit, day))"
        " QUALIFY row_number() OVER (PARTITION BY unit, day ORDER BY n DESC, cell) > $1",
        [per_day],
    )
    cells = con.execute(
        "SELECT day, cell, sum(least(n, $1))::BIGINT AS events, count(*)::BIGINT AS people, "
        "round(sum(s * least(n, $1) / n))::BIGINT AS total_duration_ms, "
        "round(median(s / nullif(nd, 0)))::BIGINT AS median_duration_ms, "
        "max(least(n, $1))::BIGINT AS max_events_per_person "
        "FROM per_person ANTI JOIN dropped USING (unit, day, cell) GROUP BY day, cell ORDER BY day, cell",
        [cap],
    ).fetchnumpy()
    stats = con.execute(
        "SELECT count(DISTINCT unit), coalesce(max(cells - coalesce(d.n, 0)), 0) FROM person_day"
        " LEFT JOIN (SELECT unit, day, count(*) AS n FROM dropped GROUP BY ALL) d USING (unit, day)"
    ).fetchone()
    con.execute("DROP TABLE dropped; DROP TABLE person_day; DROP TABLE per_person")
    assert stats is not None
    most_events = cells.pop("max_events_per_person")
    return cells, {
        "people_in": int(stats[0]),
        "max_cells_per_person_day": int(stats[1]),
        "max_events_per_person_cell": int(most_events.max()) if len(most_events) else 0,
    }


def aggregate(events: pa.Table, config: RecipientConfig, con: Any = None) -> Aggregate:
    """Generalise the extracted rows and compute the bounded, exact cells for `config`."""
    con = con or connect_duckdb()
    g = generalise(events, config.dimensions, config.max_duration_ms, con)
    con.register("generalised", g.rows)
    cells, stats = bounded_cells(con, "generalised", config)
    con.unregister("generalised")
    frame = pd.DataFrame({"day": cells["day"], **g.decode(cells["cell"]), **{m: cells[m] for m in MEASURES}})
    people_in = stats.pop("people_in")
    return Aggregate(cells=normalise(frame), rows_in=events.num_rows, people_in=people_in, contributions=stats)


def normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """The release's column types, whatever engine produced the frame."""
    out = pd.DataFrame(
        {
            "day": pd.to_datetime(frame["day"]).dt.date if len(frame) else pd.Series([], dtype="object"),
            **{k: pd.array(frame[k], dtype="string") for k in CELL_KEYS[1:]},
            **{m: pd.array(frame[m], dtype="Int64") for m in MEASURES},
        }
    )
    return out.reset_index(drop=True)
