"""lethe.sharing without services: suppression and noise, the gate, the policy's sharing section.

Generalisation and contribution bounds run in PostgreSQL: tests/integration/test_sharing.py.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
import yaml
from lethe.config import DEFAULT_POLICY_FILE
from lethe.policy.model import Policy, Sharing
from lethe.sharing.aggregate import normalise
from lethe.sharing.config import RecipientConfig
from lethe.sharing.gate import run_gate
from lethe.sharing.protect import protect
from pydantic import ValidationError

DAY = dt.date(2026, 11, 1)


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


def test_policy_sharing_source_names_listed_tables_and_columns() -> None:
    data = yaml.safe_load(DEFAULT_POLICY_FILE.read_text())
    assert Policy.model_validate(data).sharing.source is not None
    without = {**data, "sharing": {k: v for k, v in data["sharing"].items() if k != "source"}}
    with pytest.raises(ValidationError, match="recipients need `source`"):
        Policy.model_validate(without)
    wrong = yaml.safe_load(DEFAULT_POLICY_FILE.read_text())
    wrong["sharing"]["source"]["pages"]["path"] = "url"
    wrong["sharing"]["source"]["usage"]["table"] = "events"
    wrong["sharing"]["source"]["consent"]["purpose"] = "research"
    with pytest.raises(ValidationError) as failure:
        Policy.model_validate(wrong)
    message = str(failure.value)
    assert "sharing.source.pages: visitor_logs has no column url" in message
    assert "sharing.source.usage: no table 'events'" in message
    assert "unknown consent purpose 'research'" in message
