"""lethe.sharing without services: generalisation, contribution bounds, suppression and noise, the gate."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from lethe.policy.model import Sharing
from lethe.sharing.aggregate import aggregate, normalise
from lethe.sharing.config import RecipientConfig
from lethe.sharing.extract import COLUMNS
from lethe.sharing.gate import run_gate
from lethe.sharing.protect import protect
from pydantic import ValidationError

DAY = dt.date(2026, 11, 1)


def table(rows: list[dict]) -> pa.Table:
    full = [{c: r.get(c) for c in COLUMNS} for r in rows]
    return pa.Table.from_pylist(full, schema=pa.schema(list(COLUMNS.items())))


def event(unit: int, **kw) -> dict:
    return {"unit": unit, "day": DAY, "source": "usage", "item": "quiz", "duration_ms": 1000, **kw}


def test_generalisation_keeps_only_coarse_values() -> None:
    rows = [
        event(
            1,
            time_zone="Asia/Kolkata",
            device_type=" Mobile ",
            browser="Chrome",
            user_agent="Mozilla/5.0 (Linux; Android 15) Chrome/130.0.6723.91 Mobile Safari/537.36",
        ),
        event(
            2,
            source="page",
            item="https://reskill.example/Labs/run/7?session=abc#top",
            duration_ms=None,
            time_zone="Etc/UTC",
            device_type="smart fridge",
            browser=None,
            user_agent="Mozilla/5.0 (Windows NT 10.0) Chrome/130.0.0.0 Safari/537.36 Edg/130.0.2849.68",
        ),
        event(
            3,
            source="page",
            item="/",
            duration_ms=None,
            time_zone=None,
            device_type=None,
            browser="Safari",
            user_agent="Mozilla/5.0 (Macintosh) Version/18.1 Safari/605.1.15",
        ),
        event(4, item="  Code_Lab ", time_zone="Europe/Berlin", browser="Firefox", user_agent=None),
    ]
    cells = aggregate(table(rows), RecipientConfig(name="t")).cells
    got = {
        tuple(r)
        for r in cells[["source", "feature", "region", "device_type", "browser_family"]].itertuples(index=False)
    }
    assert got == {
        ("usage", "quiz", "Asia", "mobile", "Chrome 130"),
        ("page", "/labs", "unknown", "other", "Edge 130"),
        ("page", "/", "unknown", "unknown", "Safari 18"),
        ("usage", "code_lab", "Europe", "unknown", "Firefox"),
    }
    pages = cells[cells["source"] == "page"]
    assert pages["total_duration_ms"].isna().all() and pages["median_duration_ms"].isna().all()


def test_contributions_are_bounded_per_cell_and_per_day() -> None:
    config = RecipientConfig(name="t", max_events_per_cell=5, max_cells_per_day=2, max_duration_ms=10_000)
    rows = [event(1, duration_ms=50_000) for _ in range(40)]  # one heavy user, long events
    rows += [event(1, item=f"feature_{i}") for i in range(3)]  # and three more cells that day
    rows += [event(u, duration_ms=2000) for u in range(2, 12) for _ in range(2)]
    agg = aggregate(table(rows), config)
    quiz = agg.cells[agg.cells["feature"] == "quiz"].iloc[0]
    assert quiz["events"] == 5 + 10 * 2  # the heavy user counts 5 events
    assert quiz["people"] == 11
    assert quiz["total_duration_ms"] == 5 * 10_000 + 20 * 2000  # durations clipped to 10 s
    assert quiz["median_duration_ms"] == 2000  # one mean per person
    # User 1 keeps 2 cells: quiz (busiest) and feature_0 (first of the ties by value).
    assert set(agg.cells["feature"]) == {"quiz", "feature_0"}
    assert agg.contributions == {"max_cells_per_person_day": 2, "max_events_per_person_cell": 5}


def test_suppression_and_noise_keep_every_published_cell_at_k_or_more() -> None:
    cells = normalise(
        pd.DataFrame(
            {
                "day": [DAY] * 3,
                "source": ["usage"] * 3,
                "feature": ["a", "b", "c"],
                "region": ["all"] * 3,
                "device_type": ["all"] * 3,
                "browser_family": ["all"] * 3,
                "events": [9, 500, 40],
                "people": [9, 200, 12],
                "total_duration_ms": [1, 2, 3],
                "median_duration_ms": [1, 1, 1],
            }
        )
    )
    exact = protect(cells, RecipientConfig(name="t", k=10))
    assert list(exact.frame["feature"]) == ["b", "c"] and exact.cells_suppressed == 1
    noisy_config = RecipientConfig(
        name="t", k=10, mechanism="laplace", epsilon=1.0, epsilon_budget=5, max_events_per_cell=5, max_cells_per_day=2
    )
    for seed in range(20):
        noisy = protect(cells, noisy_config, np.random.default_rng(seed))
        frame = noisy.frame
        assert "a" not in set(frame["feature"])
        assert (frame["people"] >= 10).all()
        assert (frame["events"] >= frame["people"]).all() and (frame["events"] <= frame["people"] * 5).all()
        assert frame["total_duration_ms"].isna().all() and frame["median_duration_ms"].isna().all()
    assert run_gate(noisy.frame, noisy_config).success
    assert noisy.noise == {"mechanism": "laplace", "people_scale": 4.0, "events_scale": 20.0}


def good_frame() -> pd.DataFrame:
    return normalise(
        pd.DataFrame(
            {
                "day": [DAY, DAY],
                "source": ["usage", "page"],
                "feature": ["quiz", "/courses"],
                "region": ["Asia", "Europe"],
                "device_type": ["desktop", "mobile"],
                "browser_family": ["Chrome 130", "Safari 18"],
                "events": [20, 12],
                "people": [12, 10],
                "total_duration_ms": [30_000, None],
                "median_duration_ms": [1000, None],
            }
        )
    )


@pytest.mark.parametrize(
    ("column", "value", "check"),
    [
        ("feature", "mail jane.doe@example.org", "no_email_in_dimension_values"),
        ("region", "+91 98765 43210", "no_phone_in_dimension_values"),
        ("feature", "/from/203.0.113.9", "no_ip_address_in_dimension_values"),
        ("browser_family", "2001:db8:85a3::8a2e", "no_ip_address_in_dimension_values"),
        ("feature", "3f2504e0-4f89-11d3-9a0c-0305e82c3301", "no_uuid_in_dimension_values"),
        ("device_type", "v0a1b2c3d4e5f6a7", "no_cookie_id_in_dimension_values"),
    ],
)
def test_gate_names_the_kind_of_personal_data_it_found(column: str, value: str, check: str) -> None:
    config = RecipientConfig(name="t")
    frame = good_frame()
    frame.loc[1, column] = value
    result = run_gate(frame, config)
    assert check in result.failed
    assert value not in str(result.as_dict())


def test_gate_checks_schema_k_and_bounds() -> None:
    config = RecipientConfig(name="t", k=10, max_events_per_cell=2)
    assert run_gate(good_frame(), config).success
    assert run_gate(good_frame().assign(email="x"), config).failed == ["schema_exact"]
    small = good_frame()
    small.loc[1, "people"] = 9
    assert "every_cell_at_least_k_people" in run_gate(small, config).failed
    over = good_frame()
    over.loc[0, "events"] = 25  # 12 people x 2 events at most
    assert run_gate(over, config).failed == ["events_per_person_within_bound"]
    bounds = {"max_cells_per_person_day": 21, "max_events_per_person_cell": 2}
    assert run_gate(good_frame(), config, bounds).failed == ["cells_per_person_day_within_bound"]


def test_policy_sharing_section_is_validated() -> None:
    with pytest.raises(ValidationError, match="needs `epsilon`"):
        Sharing.model_validate({"recipients": {"x": {"description": "d", "mechanism": "laplace"}}})
    with pytest.raises(ValidationError, match="needs `delta`"):
        Sharing.model_validate(
            {"recipients": {"x": {"description": "d", "mechanism": "gaussian", "epsilon": 1, "epsilon_budget": 3}}}
        )
    with pytest.raises(ValidationError, match="S3 prefix"):
        Sharing.model_validate({"recipients": {"Bad Name": {"description": "d"}}})
    ok = Sharing.model_validate({"recipients": {"x": {"description": "d", "dimensions": ["feature"]}}})
    assert ok.recipients["x"].k == 10


def _oracle(rows: pd.DataFrame, cap: int, per_day: int) -> pd.DataFrame:
    """The bounded aggregate as docs/sharing.md defines it, written plainly in pandas: an independent reference."""
    out = []
    for (day, cell), group in _bounded_person_cells(rows, cap, per_day).groupby(["day", "cell"]):
        timed = group[group["nd"] > 0]  # a person-cell without any duration adds none (SQL's NULL)
        means = list(timed["s"] / timed["nd"])
        total = sum(s * k / n for s, k, n in zip(timed["s"], timed["kept"], timed["n"], strict=True))
        out.append(
            {
                "day": day,
                "cell": cell,
                "events": int(group["kept"].sum()),
                "people": len(group),
                "total": _half_up(total) if means else None,
                "median": _half_up(float(np.median(means))) if means else None,
            }
        )
    return pd.DataFrame(out)


def _half_up(x: float) -> int:
    return math.floor(x + 0.5)  # SQL's round(), not Python's round-half-to-even


def _bounded_person_cells(rows: pd.DataFrame, cap: int, per_day: int) -> pd.DataFrame:
    kept = []
    for _, person_day in rows.groupby(["unit", "day"]):
        cells = [
            {"day": g["day"].iloc[0], "cell": cell, "n": len(g), "s": g["d"].sum(), "nd": g["d"].notna().sum()}
            for cell, g in person_day.groupby("cell")
        ]
        cells.sort(key=lambda c: (-c["n"], c["cell"]))  # busiest first, ties by the cell's value
        kept += [{**c, "kept": min(c["n"], cap)} for c in cells[:per_day]]
    return pd.DataFrame(kept)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_bounded_cells_match_a_plain_reference_on_skewed_data(seed: int) -> None:
    from lethe.sharing.aggregate import bounded_cells, connect_duckdb

    rng = np.random.default_rng(seed)
    n = 4000
    weights = rng.lognormal(0, 1.5, 40)  # a few heavy people who hit both bounds
    rows = pd.DataFrame(
        {
            "unit": rng.choice(40, size=n, p=weights / weights.sum()).astype("int64"),
            "day": pd.to_datetime("2026-11-01") + pd.to_timedelta(rng.integers(0, 3, n), unit="D"),
            "cell": rng.integers(0, 30, n).astype("int64"),
            "d": pd.array(np.where(rng.random(n) < 0.2, None, rng.integers(0, 9000, n)), dtype="Int64"),
        }
    )
    rows.loc[rows["cell"] >= 27, "d"] = pd.NA  # cells without durations, as page views are
    config = RecipientConfig(name="t", max_events_per_cell=3, max_cells_per_day=4)
    con = connect_duckdb(2)
    con.register("coded", pa.Table.from_pandas(rows.assign(day=rows["day"].dt.date), preserve_index=False))
    cells, stats = bounded_cells(con, "coded", config)
    want = _oracle(rows, 3, 4).sort_values(["day", "cell"]).reset_index(drop=True)
    assert stats["max_cells_per_person_day"] == 4 and stats["max_events_per_person_cell"] == 3
    assert stats["people_in"] == rows["unit"].nunique()
    assert [pd.Timestamp(d) for d in cells["day"]] == list(want["day"])
    assert list(cells["cell"]) == list(want["cell"])
    assert list(cells["events"]) == list(want["events"]) and list(cells["people"]) == list(want["people"])
    for measure, column in (("total_duration_ms", "total"), ("median_duration_ms", "median")):
        got = [None if v is np.ma.masked else int(v) for v in cells[measure]]
        assert got == [None if pd.isna(v) else int(v) for v in want[column]], measure
    assert want["total"].isna().any()  # the data has cells without any duration
