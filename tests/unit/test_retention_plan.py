"""The retention plan as data: it survives JSON (XCom) and prints as a dry run."""

from __future__ import annotations

import json

import pytest
from lethe.retention.plan import PartitionPlan, Plan, RulePlan
from lethe.retention.predicates import anonymised_value


def sample() -> Plan:
    part = PartitionPlan(
        "usage_events_2026_01", "FOR VALUES FROM ('2026-01-01') TO ('2026-02-01')", "2026-02-01", 40, 2
    )
    rules = [
        RulePlan(
            "raw_usage_events",
            "usage_events",
            "drop_partitions",
            "occurred_at",
            "P90D",
            0,
            "2026-08-31T00:00:00+00:00",
            "2026-08-01T00:00:00+00:00",
            "2026-08-01T00:00:00+00:00",
            {},
            "event_id",
            True,
            5,
            90,
            57,
            3,
            0,
            [part],
        ),
        RulePlan(
            "closed_accounts",
            "accounts",
            "delete",
            "account_closed",
            "P30D",
            2,
            "2026-10-30T00:00:00+00:00",
            "2026-10-30T00:00:00+00:00",
            None,
            {},
            "user_id",
            True,
            None,
            None,
            0,
            1,
            31,
        ),
    ]
    return Plan("abc123", "2026-11-29T00:00:00+00:00", "2026.11.1", "d1g3st", "/p.yaml", True, rules)


def test_plan_round_trips_through_json() -> None:
    plan = sample()
    again = Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan
    assert again.rules[0].partitions[0].held == 2
    assert again.stage(0) == ["raw_usage_events"] and again.stage(2) == ["closed_accounts"]


def test_dry_run_lines_show_counts_per_rule_and_clamps() -> None:
    lines = sample().lines()
    assert "DRY RUN" in lines[0]
    usage = next(line for line in lines if line.startswith("raw_usage_events"))
    assert " 57 " in usage and "(1 partitions)" in usage and "clamped by aggregation watermark" in usage
    accounts = next(line for line in lines if line.startswith("closed_accounts"))
    assert accounts.split()[-3:] == ["0", "1", "31"]
    assert lines[-1] == "total: 57 rows in 2 rules"


def test_unknown_strategy_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="'scramble'"):  # pseudonym_link is one since retention cuts usage links
        anonymised_value("user_id", "scramble")
    assert anonymised_value("user_id", "pseudonym_link").as_string(None) == "NULL"  # the pseudonym goes beside it
