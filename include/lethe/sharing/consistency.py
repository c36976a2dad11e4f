"""Consistency across recipients: no suppressed cell may be derivable from another recipient's published cells.

Two k-anonymous releases of the same day can be subtracted. Group each
release's cells by the day, the source and the dimensions both recipients
receive: where one recipient published every cell of a group (its total is
known) and the other suppressed some cell of that group, the suppressed
cells' counts are that total minus the other's published cells. The check is
deliberately strict: any such group refuses the release, even when two or
more suppressed cells would only be learnt together.

Only exact (k-anonymous) releases are compared: a noisy release protects each
person-day by its epsilon whatever else is published, and its left-out cells
are not exact counts anyone could subtract. Their cells are recorded in
sharing_release_cells (allow-listed values, no counts), so a release is
compared with every earlier release of any recipient for the same days.
Cells are named by their dimension values only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd
import psycopg2.extensions
import psycopg2.extras

from lethe.sharing.config import ALL, DIMENSIONS

KEYS = ["day", "source", *DIMENSIONS]


@dataclass
class CellSet:
    """One recipient's cells of some days: published and suppressed (KEYS columns only)."""

    recipient: str
    published: pd.DataFrame
    suppressed: pd.DataFrame

    @property
    def dimensions(self) -> set[str]:
        both = pd.concat([self.published, self.suppressed])
        return {d for d in DIMENSIONS if len(both) and (both[d] != ALL).any()}


def _keys(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame[KEYS].astype({k: "string" for k in KEYS[1:]}).copy()
    out["day"] = pd.to_datetime(out["day"]).dt.date
    return out


def earlier(cur: psycopg2.extensions.cursor, recipient: str, start: datetime, end: datetime) -> list[CellSet]:
    """The recorded cells of other recipients' k-anonymous releases of days in [start, end)."""
    cur.execute(
        "SELECT r.recipient, c.day, c.source, c.feature, c.region, c.device_type, c.browser_family, c.published"
        " FROM sharing_release_cells c JOIN sharing_releases r USING (release_id)"
        " WHERE r.recipient <> %s AND c.day >= %s AND c.day < %s",
        (recipient, start.date(), end.date()),
    )
    rows = pd.DataFrame(cur.fetchall(), columns=["recipient", *KEYS, "published"])
    return [
        CellSet(name, _keys(group[group["published"]]), _keys(group[~group["published"]]))
        for name, group in rows.groupby("recipient")
    ]


def record(cur: psycopg2.extensions.cursor, release_id: str, cells: CellSet) -> None:
    rows = [(release_id, *r, True) for r in _keys(cells.published).itertuples(index=False)]
    rows += [(release_id, *r, False) for r in _keys(cells.suppressed).itertuples(index=False)]
    if rows:
        psycopg2.extras.execute_values(
            cur,
            "INSERT INTO sharing_release_cells (release_id, day, source, feature, region, device_type,"
            " browser_family, published) VALUES %s",
            rows,
        )


def _derivable(known: CellSet, hidden: CellSet, shared: list[str]) -> pd.DataFrame:
    """`hidden`'s suppressed cells inside a group `known` published whole."""
    group = ["day", "source", *shared]
    complete = known.published[group].drop_duplicates()
    partial = known.suppressed[group].drop_duplicates()
    complete = complete.merge(partial, how="left", on=group, indicator=True)
    complete = complete.loc[complete["_merge"] == "left_only", group]
    found = hidden.suppressed.merge(complete, on=group)
    return found.assign(recipient=hidden.recipient, derived_from=known.recipient)


def derivable(mine: CellSet, others: list[CellSet]) -> pd.DataFrame:
    """Every suppressed cell (of this release or an earlier one) that the pair could give away."""
    found = [pd.DataFrame(columns=[*KEYS, "recipient", "derived_from"])]
    for other in others:
        shared = [d for d in DIMENSIONS if d in mine.dimensions and d in other.dimensions]
        found += [_derivable(mine, other, shared), _derivable(other, mine, shared)]
    return pd.concat([f for f in found if len(f) or f is found[0]], ignore_index=True)


def describe(cells: pd.DataFrame, limit: int = 5) -> str:
    """The first cells by dimension values: `recipient 'b' day 2026-11-01 usage feature=quiz region=Europe`."""
    parts: list[str] = []
    for row in cells.head(limit).itertuples(index=False):
        values: dict[str, Any] = row._asdict()
        dims = " ".join(f"{d}={values[d]}" for d in DIMENSIONS if values[d] != ALL)
        parts.append(
            f"recipient {values['recipient']!r} day {values['day']} {values['source']} {dims} "
            f"(from {values['derived_from']!r}'s published cells)"
        )
    more = f"; and {len(cells) - limit} more" if len(cells) > limit else ""
    return "; ".join(parts) + more
