"""Protection of the exact cells: k-anonymity for exact recipients, OpenDP for noisy ones.

- mechanism none: cells with fewer than k distinct people are suppressed; the
  others are published exact (k-anonymity, no differential privacy).
- laplace / gaussian (lethe.sharing.measurements): no exact count is compared
  with anything. Private partition selection decides which cells appear, with
  their noisy people counts (at least the threshold, itself at least k);
  events get noise on those cells only. The noisy values are then made
  consistent (people <= events <= people x L), which is post-processing and
  costs no privacy. Durations are not released under noise (their
  sensitivity, L x max_duration_ms per cell, would drown them).
A noisy release says nothing exact about the cells it leaves out: not how
many there were, nor how many were suppressed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from lethe.sharing import measurements
from lethe.sharing.config import RecipientConfig


@dataclass
class Protected:
    frame: pd.DataFrame
    cells_total: int  # exact: for the database's record only, never in a noisy release
    cells_suppressed: int
    noise: dict[str, Any] = field(default_factory=dict)
    suppressed: pd.DataFrame | None = None  # the exact recipient's suppressed cells (keys only)


def protect(cells: pd.DataFrame, config: RecipientConfig) -> Protected:
    total = len(cells)
    if not config.noisy:
        kept = cells["people"] >= config.k
        frame = cells[kept].reset_index(drop=True)
        suppressed = cells.loc[~kept].reset_index(drop=True)
        return Protected(frame, total, total - len(frame), {"mechanism": "none"}, suppressed)
    plan = measurements.plan(config)
    keys = [str(i) for i in range(total)]
    people, events = measurements.release(
        config,
        dict(zip(keys, cells["people"].astype("int64").tolist(), strict=True)),
        dict(zip(keys, cells["events"].astype("int64").tolist(), strict=True)),
    )
    rows = sorted(int(k) for k in people)  # the cells' order (day, then values), not the noise's
    frame = cells.iloc[rows].copy()
    noisy_people = np.array([people[str(i)] for i in rows], dtype="int64")
    noisy_events = np.array([events[str(i)] for i in rows], dtype="int64")
    noisy_events = np.clip(noisy_events, noisy_people, noisy_people * config.max_events_per_cell)
    frame["people"] = pd.array(noisy_people, dtype="Int64")
    frame["events"] = pd.array(noisy_events, dtype="Int64")
    frame["total_duration_ms"] = pd.array([pd.NA] * len(rows), dtype="Int64")
    frame["median_duration_ms"] = pd.array([pd.NA] * len(rows), dtype="Int64")
    frame = frame.reset_index(drop=True)
    return Protected(frame, total, total - len(frame), plan.as_dict())
