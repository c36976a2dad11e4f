"""Data-quality checks with Great Expectations, one shared way for every DAG.

Each check validates a small pandas frame (the result of a query Lethe ran, or
rows it read back) against a list of GX expectations in an ephemeral context.
The outcome is plain data, safe for XCom and the ledger: check names and
counts, never row values.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd


@dataclass
class CheckResult:
    suite: str
    success: bool
    checks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        return [c["name"] for c in self.checks if not c["success"]]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def raise_if_failed(self) -> None:
        if not self.success:
            raise DataQualityError(f"data-quality suite {self.suite!r} failed: {', '.join(self.failed)}")


class DataQualityError(AssertionError):
    """A post-condition did not hold; names the suite and the failed checks."""


def validate(suite: str, frame: pd.DataFrame, expectations: list[tuple[str, Any]]) -> CheckResult:
    """Validate `frame` against (check name, GX expectation) pairs."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        source = context.data_sources.add_pandas(name=f"{suite}_source")
        asset = source.add_dataframe_asset(name=f"{suite}_frame")
        batch = asset.add_batch_definition_whole_dataframe(f"{suite}_batch").get_batch(
            batch_parameters={"dataframe": frame}
        )
        checks = []
        for name, expectation in expectations:
            result = batch.validate(expectation)
            observed = result.result.get("observed_value")
            checks.append(
                {
                    "name": name,
                    "success": bool(result.success),
                    "expectation": type(expectation).__name__,
                    "observed": observed if isinstance(observed, int | float | bool | str | None) else None,
                }
            )
    return CheckResult(suite=suite, success=all(c["success"] for c in checks), checks=checks)


def counts_equal(suite: str, observed: dict[str, int], expected: dict[str, int]) -> CheckResult:
    """Check, per key, that an observed count equals the expected one (e.g. rows deleted vs. planned)."""
    import great_expectations as gx

    frame = pd.DataFrame(
        [{"key": k, "observed": int(observed.get(k, 0)), "expected": int(v)} for k, v in expected.items()]
        or [{"key": "-", "observed": 0, "expected": 0}]
    )
    return validate(
        suite,
        frame,
        [
            (
                "observed_equals_expected",
                gx.expectations.ExpectColumnPairValuesToBeEqual(column_A="observed", column_B="expected"),
            )
        ],
    )


def zero_rows(suite: str, counts: dict[str, int]) -> CheckResult:
    """Check that every named count is zero (e.g. expired rows left, rows of an erased person)."""
    import great_expectations as gx

    frame = pd.DataFrame([{"check": k, "rows": int(v)} for k, v in counts.items()] or [{"check": "-", "rows": 0}])
    return validate(
        suite,
        frame,
        [("no_rows_left", gx.expectations.ExpectColumnValuesToBeBetween(column="rows", min_value=0, max_value=0))],
    )
