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


def _expectations(
    frame: pd.DataFrame, config: RecipientConfig, contributions: dict[str, int] | None
) -> tuple[pd.DataFrame, list[tuple[str, Any]]]:
    import great_expectations as gx

    e = gx.expectations
    checks: list[tuple[str, Any]] = []
    work = frame.copy()
    schema_ok = list(frame.columns) == SCHEMA
    # Every text value of a row in one helper column: one regex pass per kind of personal data, not per column.
    text_columns = TEXT_COLUMNS if schema_ok else [c for c in frame.columns if c not in MEASURES and c != "day"]
    joined = pd.Series([""] * len(work), index=work.index, dtype="string")
    for column in text_columns:
        joined = joined + " | " + work[column].astype("string").fillna("")
    helpers = {"_dimension_values": joined}
    if schema_ok:
        work["day"] = work["day"].map(lambda d: None if pd.isna(d) else pd.Timestamp(d).strftime("%Y-%m-%d"))
        events = work["events"].astype("Float64")
        people = work["people"].astype("Float64")
        helpers["_events_minus_people"] = events - people
        helpers["_people_cap_minus_events"] = people * config.max_events_per_cell - events
        helpers["_duration_cap_minus_total"] = events * config.max_duration_ms - work["total_duration_ms"].astype(
            "Float64"
        )
        for name, value in (contributions or {}).items():
            helpers[f"_{name}"] = pd.Series([value] * len(work), index=work.index, dtype="Int64")
    for name, column in helpers.items():
        work[name] = column
    checks.append(("schema_exact", e.ExpectTableColumnsToMatchOrderedList(column_list=SCHEMA + list(helpers))))
    for kind, pattern in PII_PATTERNS.items():
        checks.append(
            (
                f"no_{kind}_in_dimension_values",
                e.ExpectColumnValuesToNotMatchRegex(column="_dimension_values", regex=pattern),
            )
        )
    if not schema_ok:
        return work, checks
    between = e.ExpectColumnValuesToBeBetween
    checks += [
        ("day_is_a_date", e.ExpectColumnValuesToMatchRegex(column="day", regex=r"^\d{4}-\d{2}-\d{2}$")),
        ("source_known", e.ExpectColumnValuesToBeInSet(column="source", value_set=["usage", "page"])),
        ("people_not_null", e.ExpectColumnValuesToNotBeNull(column="people")),
        ("events_not_null", e.ExpectColumnValuesToNotBeNull(column="events")),
        ("every_cell_at_least_k_people", between(column="people", min_value=config.k)),
        ("events_at_least_people", between(column="_events_minus_people", min_value=0)),
        ("events_per_person_within_bound", between(column="_people_cap_minus_events", min_value=0)),
        ("duration_per_event_within_bound", between(column="_duration_cap_minus_total", min_value=0)),
        (
            "median_duration_within_bound",
            between(column="median_duration_ms", min_value=0, max_value=config.max_duration_ms),
        ),
    ]
    if config.noisy:  # durations are not released under noise
        checks += [(f"{m}_withheld_under_noise", e.ExpectColumnValuesToBeNull(column=m)) for m in MEASURES[2:]]
    if contributions is not None:
        checks += [
            (
                "cells_per_person_day_within_bound",
                between(column="_max_cells_per_person_day", max_value=config.max_cells_per_day),
            ),
            (
                "events_per_person_cell_within_bound",
                between(column="_max_events_per_person_cell", max_value=config.max_events_per_cell),
            ),
        ]
    return work, checks


def run_gate(
    frame: pd.DataFrame, recipient_config: RecipientConfig, contributions: dict[str, int] | None = None
) -> CheckResult:
    """Check a release frame (and, when known, the contribution maxima left after bounding).

    Text values are checked in one helper column `_dimension_values` (GX
    skips nulls in range checks, hence the explicit not-null checks).
    """
    work, checks = _expectations(frame, recipient_config, contributions)
    return validate(f"sharing_gate_{recipient_config.name}", work, checks)
