"""The release gate (Great Expectations through lethe.quality.validate).

A release is published only if every check passes; the CheckResult names the
failed checks (names and counts only, never a value). compliance_audit re-runs
`run_gate` on the latest release read back from S3 (release.load_latest_release).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from lethe.quality import CheckResult, validate
from lethe.sharing.aggregate import CELL_KEYS, MEASURES
from lethe.sharing.config import RecipientConfig

SCHEMA = [*CELL_KEYS, *MEASURES]
TEXT_COLUMNS = [c for c in CELL_KEYS if c != "day"]

# What personal data looks like in a published value. Deliberately wide: a false
# alarm stops one release; a miss publishes someone.
PII_PATTERNS = {
    "email": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
    "phone": r"\+?\(?\d[\d\s().-]{6,}\d",
    "ip_address": r"\b(?:\d{1,3}\.){3}\d{1,3}\b|\b[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{0,4}){2,7}\b",
    "uuid": r"[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{12}",
    "cookie_id": r"[0-9A-Fa-f]{12,}|(?=[A-Za-z0-9_-]*\d)(?=[A-Za-z0-9_-]*[A-Z])[A-Za-z0-9_-]{20,}",
}


def _expectations(frame: pd.DataFrame, config: RecipientConfig) -> tuple[pd.DataFrame, list[tuple[str, Any]]]:
    import great_expectations as gx

    e = gx.expectations
    checks: list[tuple[str, Any]] = []
    work = frame.copy()
    schema_ok = list(frame.columns) == SCHEMA
    helpers: list[str] = []
    if schema_ok:
        work["day"] = work["day"].map(lambda d: None if pd.isna(d) else pd.Timestamp(d).strftime("%Y-%m-%d"))
        events = work["events"].astype("Float64")
        people = work["people"].astype("Float64")
        work["_events_minus_people"] = events - people
        work["_people_cap_minus_events"] = people * config.max_events_per_cell - events
        work["_duration_cap_minus_total"] = events * config.max_duration_ms - work["total_duration_ms"].astype(
            "Float64"
        )
        helpers = ["_events_minus_people", "_people_cap_minus_events", "_duration_cap_minus_total"]
    checks.append(("schema_exact", e.ExpectTableColumnsToMatchOrderedList(column_list=SCHEMA + helpers)))
    text_columns = [c for c in frame.columns if c not in MEASURES and c != "day"] if not schema_ok else TEXT_COLUMNS
    for column in text_columns:
        work[column] = work[column].astype("string")
        for kind, pattern in PII_PATTERNS.items():
            checks.append((f"no_{kind}_in_{column}", e.ExpectColumnValuesToNotMatchRegex(column=column, regex=pattern)))
    if not schema_ok:
        return work, checks
    checks += [
        ("day_is_a_date", e.ExpectColumnValuesToMatchRegex(column="day", regex=r"^\d{4}-\d{2}-\d{2}$")),
        ("day_not_null", e.ExpectColumnValuesToNotBeNull(column="day")),
        ("source_known", e.ExpectColumnValuesToBeInSet(column="source", value_set=["usage", "page"])),
        ("people_not_null", e.ExpectColumnValuesToNotBeNull(column="people")),
        ("events_not_null", e.ExpectColumnValuesToNotBeNull(column="events")),
        ("every_cell_at_least_k_people", e.ExpectColumnValuesToBeBetween(column="people", min_value=config.k)),
        ("events_at_least_people", e.ExpectColumnValuesToBeBetween(column="_events_minus_people", min_value=0)),
        (
            "events_per_person_within_bound",
            e.ExpectColumnValuesToBeBetween(column="_people_cap_minus_events", min_value=0),
        ),
        (
            "duration_per_event_within_bound",
            e.ExpectColumnValuesToBeBetween(column="_duration_cap_minus_total", min_value=0),
        ),
        (
            "median_duration_within_bound",
            e.ExpectColumnValuesToBeBetween(column="median_duration_ms", min_value=0, max_value=config.max_duration_ms),
        ),
    ]
    for column in TEXT_COLUMNS:
        checks.append((f"{column}_not_null", e.ExpectColumnValuesToNotBeNull(column=column)))
    if config.noisy:  # durations are not released under noise
        checks += [(f"{m}_withheld_under_noise", e.ExpectColumnValuesToBeNull(column=m)) for m in MEASURES[2:]]
    return work, checks


def run_gate(
    frame: pd.DataFrame, recipient_config: RecipientConfig, contributions: dict[str, int] | None = None
) -> CheckResult:
    """Check a release frame (and, when known, the contribution maxima left after bounding)."""
    work, checks = _expectations(frame, recipient_config)
    result = validate(f"sharing_gate_{recipient_config.name}", work, checks)
    if contributions is not None:
        import great_expectations as gx

        bounds = pd.DataFrame([contributions])
        extra = validate(
            f"sharing_contributions_{recipient_config.name}",
            bounds,
            [
                (
                    "cells_per_person_day_within_bound",
                    gx.expectations.ExpectColumnValuesToBeBetween(
                        column="max_cells_per_person_day", max_value=recipient_config.max_cells_per_day
                    ),
                ),
                (
                    "events_per_person_cell_within_bound",
                    gx.expectations.ExpectColumnValuesToBeBetween(
                        column="max_events_per_person_cell", max_value=recipient_config.max_events_per_cell
                    ),
                ),
            ],
        )
        result = CheckResult(result.suite, result.success and extra.success, result.checks + extra.checks)
    return result
