"""lethe.sharing without services: generalisation, contribution bounds, suppression and noise, the gate."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from lethe.db import ConfigurationError
from lethe.policy import load_policy
from lethe.policy.model import Sharing
from lethe.sharing import measurements
from lethe.sharing.aggregate import CELL_KEYS, MEASURES, aggregate, normalise
from lethe.sharing.config import RecipientConfig
from lethe.sharing.extract import COLUMNS
from lethe.sharing.gate import run_gate
from lethe.sharing.protect import protect
from pydantic import ValidationError

DAY = dt.date(2026, 11, 1)
ALLOWED = {k: tuple(v) for k, v in load_policy().sharing.allowed_values.model_dump().items()}


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
        name="t",
        k=10,
        mechanism="laplace",
        epsilon=1.0,
        delta=1e-6,
        max_events_per_cell=5,
        max_cells_per_day=2,
        allowed={**ALLOWED, "feature": ("a", "b", "c")},
    )
    plan = measurements.plan(noisy_config)
    assert plan.threshold >= 10
    for _ in range(5):
        noisy = protect(cells, noisy_config)
        frame = noisy.frame
        assert "a" not in set(frame["feature"])
        assert (frame["people"] >= plan.threshold).all()
        assert (frame["events"] >= frame["people"]).all() and (frame["events"] <= frame["people"] * 5).all()
        assert frame["total_duration_ms"].isna().all() and frame["median_duration_ms"].isna().all()
    assert run_gate(noisy.frame, noisy_config).success
    assert noisy.noise == plan.as_dict()
    assert noisy.noise["people_scale"] == pytest.approx(4.0) and noisy.noise["events_scale"] == pytest.approx(20.0)


PUBLIC = RecipientConfig(
    name="public", k=10, mechanism="laplace", epsilon=1.0, delta=1e-6, max_events_per_cell=5, max_cells_per_day=3
)


def _published_share(config: RecipientConfig, people: int, trials: int) -> float:
    """The share of `trials` independent cells of `people` people that private partition selection publishes."""
    counts = {f"c{i}": people for i in range(trials)}
    kept, _ = measurements.release(config, counts, {k: people for k in counts})
    return len(kept) / trials


@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
def test_exact_threshold_distinguisher_is_bounded_by_epsilon_and_delta(mechanism: str) -> None:
    """The attack: publish a cell of k-1 and one of k people many times and compare how often each appears.

    Thresholding the exact count published the k-cell about half the time and the (k-1)-cell never, an
    unbounded ratio. Under private partition selection both shares, and the shares of any two counts a
    person-day apart, stay within e^epsilon of each other (plus delta).
    """
    config = dataclasses.replace(PUBLIC, mechanism=mechanism)
    plan = measurements.plan(config)
    trials = 20_000
    bound = math.exp(plan.epsilon)
    below, at = _published_share(config, config.k - 1, trials), _published_share(config, config.k, trials)
    assert at <= bound * below + plan.delta + 5 / trials and at < 0.01  # the k-cell is no longer a coin toss
    # Where publication is likeliest to tell: counts at the threshold, published about half the time.
    slack = 5 * math.sqrt(0.25 / trials)  # five standard errors of a share near one half
    below, at = _published_share(config, plan.threshold - 1, trials), _published_share(config, plan.threshold, trials)
    assert 0.2 < at < 0.8
    assert at <= bound * below + plan.delta + slack and below <= bound * at + plan.delta + slack
    if mechanism == "laplace":  # one cell moved by one person: the tighter bound e^(1/scale) holds too
        assert at <= math.exp(1 / plan.people_scale) * below + slack


def test_noise_parameters_outside_what_opendp_can_honour_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="recipient 'public': epsilon must be in"):
        measurements.plan(dataclasses.replace(PUBLIC, epsilon=8.0))
    with pytest.raises(ConfigurationError, match="delta must be in"):
        measurements.plan(dataclasses.replace(PUBLIC, mechanism="gaussian", delta=None))
    with pytest.raises(ConfigurationError, match="delta must be in"):
        protect(
            normalise(pd.DataFrame(columns=list(CELL_KEYS) + list(MEASURES))), dataclasses.replace(PUBLIC, delta=0.1)
        )
    gaussian = measurements.plan(dataclasses.replace(PUBLIC, mechanism="gaussian", epsilon=3.0))  # eps/2 >= 1 is fine
    assert gaussian.epsilon <= 3.0 and gaussian.delta <= 1e-6 and gaussian.threshold >= 10


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
    config = RecipientConfig(name="t", allowed=ALLOWED)
    frame = good_frame()
    frame.loc[1, column] = value
    result = run_gate(frame, config)
    assert check in result.failed
    assert value not in str(result.as_dict())


def test_gate_checks_schema_k_and_bounds() -> None:
    config = RecipientConfig(name="t", k=10, max_events_per_cell=2, allowed=ALLOWED)
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
    audiences = {"public": {"description": "anyone", "epsilon_per_day": 1.0, "delta_per_day": 1e-6}}
    with pytest.raises(ValidationError, match="needs `epsilon`"):
        Sharing.model_validate(
            {
                "audiences": audiences,
                "recipients": {"x": {"description": "d", "audience": "public", "mechanism": "laplace"}},
            }
        )
    with pytest.raises(ValidationError, match="needs `delta`"):
        Sharing.model_validate(
            {
                "audiences": audiences,
                "recipients": {"x": {"description": "d", "audience": "public", "mechanism": "laplace", "epsilon": 1}},
            }
        )
    with pytest.raises(ValidationError, match="exceed audience public's budget"):
        Sharing.model_validate(
            {
                "audiences": audiences,
                "recipients": {
                    "x": {
                        "description": "d",
                        "audience": "public",
                        "mechanism": "gaussian",
                        "epsilon": 2,
                        "delta": 1e-7,
                    }
                },
            }
        )
    with pytest.raises(ValidationError, match="less than or equal to 5"):  # epsilon per person-day is capped
        Sharing.model_validate({"audiences": {"p": {"description": "d", "epsilon_per_day": 50, "delta_per_day": 1e-6}}})
    with pytest.raises(ValidationError, match="audience 'nobody' is not under `audiences`"):
        Sharing.model_validate({"recipients": {"x": {"description": "d", "audience": "nobody"}}})
    with pytest.raises(ValidationError, match="S3 prefix"):
        Sharing.model_validate(
            {"audiences": audiences, "recipients": {"Bad Name": {"description": "d", "audience": "public"}}}
        )
    with pytest.raises(ValidationError, match="one lower-case path segment"):
        Sharing.model_validate({"allowed_values": {"site_section": ["/courses/intro"]}})
    ok = Sharing.model_validate(
        {
            "audiences": audiences,
            "recipients": {"x": {"description": "d", "audience": "public", "dimensions": ["feature"]}},
        }
    )
    assert ok.recipients["x"].k == 10 and ok.anonymous_visitors == "exclude"


def test_a_username_in_a_path_or_feature_is_never_a_released_value() -> None:
    """The attack: a profile path `/<username>` became a feature value in every release."""
    config = RecipientConfig(name="t", k=2, dimensions=("feature",), allowed=ALLOWED)
    rows = [event(u, source="page", item="/jane_doe?tab=posts", duration_ms=None) for u in range(1, 4)]
    rows += [event(u, source="page", item="https://reskill.example/Courses/12") for u in range(1, 4)]
    rows += [event(u, item="Jane_Doe") for u in range(1, 4)]
    cells = aggregate(table(rows), config).cells
    assert sorted(cells["feature"]) == ["/courses", "/other", "other"]
    assert run_gate(protect(cells, config).frame, config).success
    leaked = good_frame()
    leaked.loc[1, "feature"] = "/jane_doe"  # what a free-form path would have published
    assert run_gate(leaked, config).failed == ["feature_values_allow_listed"]
    assert "feature_values_allow_listed" in run_gate(good_frame(), RecipientConfig(name="t")).failed  # no allow-list


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
