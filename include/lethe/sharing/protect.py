"""Protection of the exact cells: minimum group size k, then optional calibrated noise.

1. Cells with fewer than k distinct people are suppressed.
2. With a noise mechanism, `events` and `people` get Laplace or Gaussian noise,
   epsilon (and delta) split evenly between them, calibrated to the
   contribution bounds: a person-day changes `people` in at most C cells by 1
   and `events` in at most C cells by at most L (C = max_cells_per_day,
   L = max_events_per_cell). Durations are not released under noise (their
   sensitivity, L x max_duration_ms per cell, would drown them).
3. The noisy values are rounded and made consistent (people >= 0, people <=
   events <= people x L), and cells whose noisy `people` falls below k are
   suppressed as well, so every published cell shows at least k people.
Post-processing of noisy values costs no privacy; the first threshold on the
exact count is the k-anonymity rule and is documented as such.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from lethe.sharing.config import RecipientConfig


@dataclass
class Protected:
    frame: pd.DataFrame
    cells_total: int
    cells_suppressed: int
    noise: dict[str, Any] = field(default_factory=dict)


def noise_scales(config: RecipientConfig) -> dict[str, float]:
    """Per measure: the Laplace scale b or the Gaussian sigma for one day of data."""
    if not config.noisy:
        return {}
    assert config.epsilon is not None
    c, cap = config.max_cells_per_day, config.max_events_per_cell
    eps = config.epsilon / 2
    if config.mechanism == "laplace":
        return {"people": c / eps, "events": c * cap / eps}
    assert config.delta is not None
    factor = math.sqrt(2 * math.log(1.25 / (config.delta / 2))) / eps
    return {"people": math.sqrt(c) * factor, "events": math.sqrt(c) * cap * factor}


def protect(cells: pd.DataFrame, config: RecipientConfig, rng: np.random.Generator | None = None) -> Protected:
    total = len(cells)
    frame = cells[cells["people"] >= config.k].copy()
    scales = noise_scales(config)
    if scales:
        # Fresh OS entropy per release: noise that can be replayed protects nothing.
        rng = rng or np.random.default_rng()
        draw = rng.laplace if config.mechanism == "laplace" else rng.normal
        n = len(frame)
        people = np.rint(frame["people"].to_numpy(dtype="float64") + draw(0.0, scales["people"], n))
        events = np.rint(frame["events"].to_numpy(dtype="float64") + draw(0.0, scales["events"], n))
        people = np.maximum(people, 0)
        events = np.clip(events, people, people * config.max_events_per_cell)
        frame["people"] = pd.array(people.astype("int64"), dtype="Int64")
        frame["events"] = pd.array(events.astype("int64"), dtype="Int64")
        frame["total_duration_ms"] = pd.array([pd.NA] * n, dtype="Int64")
        frame["median_duration_ms"] = pd.array([pd.NA] * n, dtype="Int64")
        frame = frame[frame["people"] >= config.k]
    frame = frame.reset_index(drop=True)
    return Protected(
        frame=frame,
        cells_total=total,
        cells_suppressed=total - len(frame),
        noise={"mechanism": config.mechanism, **{f"{k}_scale": round(v, 6) for k, v in scales.items()}},
    )
