"""The bounded aggregate's result: cells of day x source x dimensions, each person's contribution capped.

The cells are computed in PostgreSQL, where the data is (lethe.sharing.query); this module holds
what the rest of the pipeline shares about them: their keys, measures and column types.

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

import pandas as pd

from lethe.sharing.config import DIMENSIONS

CELL_KEYS = ("day", "source", *DIMENSIONS)
MEASURES = ("events", "people", "total_duration_ms", "median_duration_ms")


@dataclass
class Aggregate:
    cells: pd.DataFrame  # exact, before suppression: CELL_KEYS + MEASURES
    rows_in: int  # consented source rows the cells were computed from (never left PostgreSQL)
    people_in: int
    contributions: dict[str, int] = field(default_factory=dict)  # the largest contribution left after bounding
    bytes_in: int = 0  # what crossed from PostgreSQL to the worker: the cells, as CSV


def normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """The release's column types, whatever produced the frame."""
    out = pd.DataFrame(
        {
            "day": pd.to_datetime(frame["day"]).dt.date if len(frame) else pd.Series([], dtype="object"),
            **{k: pd.array(frame[k], dtype="string") for k in CELL_KEYS[1:]},
            **{m: pd.array(frame[m], dtype="Int64") for m in MEASURES},
        }
    )
    return out.reset_index(drop=True)
