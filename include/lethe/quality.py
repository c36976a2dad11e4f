"""Data-quality checks with Great Expectations, one shared way for every DAG.

Each check validates a small pandas frame (the result of a query Lethe ran, or
rows it read back) against a list of GX expectations in an ephemeral context.
Every named count gets its own expectation, so a failure names the rule, table
and column it is about. The outcome is plain data, safe for XCom and the
ledger: check names and counts, never row values.
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

    def failures(self) -> list[str]:
        """Each failed check in words (name, table and column, counts), never a row's values."""
        return [describe(c) for c in self.checks if not c["success"]]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def raise_if_failed(self) -> None:
        if not self.success:
            raise DataQualityError(f"data-quality suite {self.suite!r} failed: {'; '.join(self.failures())}")


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


def expect_counts(
    suite: str,
    counts: dict[str, int],
    *,
    maximum: int = 0,
    minimum: int = 0,
    details: dict[str, Any] | None = None,
    where: dict[str, str] | None = None,
    bounds: dict[str, tuple[int, int]] | None = None,
) -> CheckResult:
    """One GX expectation per named count, all in one validation: each must lie in [minimum, maximum]
    (or in its own (low, high) from `bounds`).

    A failure is reported under its own name (the rule or table it is about), with `where` (table and
    column) and the observed count beside it; `details` (counts, never values) ride along.
    """
    import great_expectations as gx

    if not counts:
        raise ValueError(f"suite {suite!r}: nothing to check (give at least one named count)")
    # One row, one column per check: GX reports each expectation under its check name.
    columns = {f"c{i}": name for i, name in enumerate(counts)}
    frame = pd.DataFrame([{col: int(counts[name]) for col, name in columns.items()}])
    limits = {name: (bounds or {}).get(name, (minimum, maximum)) for name in counts}
    result = validate(
        suite,
        frame,
        [
            (
                name,
                gx.expectations.ExpectColumnValuesToBeBetween(
                    column=col, min_value=limits[name][0], max_value=limits[name][1]
                ),
            )
            for col, name in columns.items()
        ],
    )
    for check in result.checks:
        name = check["name"]
        low, high = limits[name]
        check["observed"] = int(counts[name])
        check["expected"] = low if low == high else [low, high]
        if where and name in where:
            check["where"] = where[name]
        if details and name in details:
            check["details"] = details[name]
    return result


def zero_rows(suite: str, counts: dict[str, int], where: dict[str, str] | None = None) -> CheckResult:
    """Every named count is zero (expired rows left, rows of an erased person): one check per name."""
    if not counts:
        return CheckResult(suite=suite, success=True)
    return expect_counts(suite, counts, where=where)


def counts_equal(
    suite: str, observed: dict[str, int], expected: dict[str, int], where: dict[str, str] | None = None
) -> CheckResult:
    """Per key, the observed count equals the expected one (rows deleted vs. planned): one check per key.

    A key done but never planned is checked too, against zero (rows acted on where none were expected).
    """
    keys = list(expected) + [k for k, n in observed.items() if k not in expected and n]
    if not keys:
        return CheckResult(suite=suite, success=True)
    return expect_counts(
        suite,
        {k: int(observed.get(k, 0)) for k in keys},
        where=where,
        bounds={k: (int(expected.get(k, 0)), int(expected.get(k, 0))) for k in keys},
    )


def merge(suite: str, *results: CheckResult) -> CheckResult:
    """Several results as one suite (the checks keep their own names)."""
    checks = [c for r in results for c in r.checks]
    return CheckResult(suite=suite, success=all(c["success"] for c in checks), checks=checks)


def describe(check: dict[str, Any]) -> str:
    """One failed check in words: its name, where (table and column), the count seen and the count allowed."""
    where = f" [{check['where']}]" if check.get("where") else ""
    observed = check.get("observed")
    if "expected" not in check or not isinstance(observed, int):
        return f"{check['name']}{where}: {observed}"
    expected = check["expected"]
    allowed = f"{expected[0]}..{expected[1]}" if isinstance(expected, list) else str(expected)
    return f"{check['name']}{where}: observed {observed}, expected {allowed}"
