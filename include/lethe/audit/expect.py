"""Named counts validated with Great Expectations: one GX expectation per check.

Each check is a count that must stay within bounds (usually zero: expired rows
left, rows of an erased person). The check's name is what an operator sees when
the audit fails, so names say what went wrong ("expired_rows.expired_cookies").
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from lethe.quality import CheckResult, validate


def expect_counts(
    suite: str,
    counts: dict[str, int],
    *,
    maximum: int = 0,
    minimum: int = 0,
    details: dict[str, Any] | None = None,
) -> CheckResult:
    """Validate that every count lies in [minimum, maximum]; `details` (counts, no values) ride along."""
    import great_expectations as gx

    if not counts:
        raise ValueError(f"suite {suite!r}: nothing to check (give at least one named count)")
    # One row, one column per check: GX reports each expectation under its check name.
    columns = {f"c{i}": name for i, name in enumerate(counts)}
    frame = pd.DataFrame([{col: int(counts[name]) for col, name in columns.items()}])
    result = validate(
        suite,
        frame,
        [
            (name, gx.expectations.ExpectColumnValuesToBeBetween(column=col, min_value=minimum, max_value=maximum))
            for col, name in columns.items()
        ],
    )
    for check in result.checks:
        check["observed"] = int(counts[check["name"]])
        if details and check["name"] in details:
            check["details"] = details[check["name"]]
    return result


def merge(suite: str, *results: CheckResult) -> CheckResult:
    """Several results as one suite (the checks keep their own names)."""
    checks = [c for r in results for c in r.checks]
    return CheckResult(suite=suite, success=all(c["success"] for c in checks), checks=checks)
