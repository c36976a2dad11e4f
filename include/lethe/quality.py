"""Data-quality checks with Great Expectations, one shared way for every DAG.

Each check validates a small pandas frame (the result of a query Lethe ran, or
rows it read back) against a GX expectation suite in an ephemeral context; the
audit's checks on the primary run in PostgreSQL instead (lethe.audit.checkpoint).
Every named count gets its own expectation, so a failure names the rule, table
and column it is about. The outcome is plain data, safe for XCom and the
ledger: check names and counts, never row values. GX's own validation result
rides along (`validations`) for the Data Docs, in a result format without rows.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

# Counts only: no unexpected rows, no partial lists of values, in any validation result Lethe keeps.
RESULT_FORMAT: dict[str, Any] = {
    "result_format": "SUMMARY",
    "partial_unexpected_count": 0,
    "include_unexpected_rows": False,
    "return_unexpected_index_query": False,
}


@dataclass
class CheckResult:
    suite: str
    success: bool
    checks: list[dict[str, Any]] = field(default_factory=list)
    # GX's validation results (JSON) behind the checks, for the Data Docs; dropped before results are stored.
    validations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        return [c["name"] for c in self.checks if not c["success"]]

    def failures(self) -> list[str]:
        """Each failed check in words (name, table and column, counts), never a row's values."""
        return [describe(c) for c in self.checks if not c["success"]]

    def as_dict(self, validations: bool = False) -> dict[str, Any]:
        """Plain data; GX's validation results only when asked (the audit keeps them for its Data Docs)."""
        data = asdict(self)
        if not validations:
            del data["validations"]
        return data

    def raise_if_failed(self) -> None:
        if not self.success:
            raise DataQualityError(f"data-quality suite {self.suite!r} failed: {'; '.join(self.failures())}")


class DataQualityError(AssertionError):
    """A post-condition did not hold; names the suite and the failed checks."""


@contextlib.contextmanager
def quiet_gx() -> Iterator[None]:
    """GX without progress bars, warnings and hints in the task log (it prints some to stdout)."""
    import io

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def scrub_validation(validation: dict[str, Any]) -> dict[str, Any]:
    """A GX suite validation result without what could quote data: unexpected lists and rows,
    exception messages and tracebacks (a check that raised keeps only that it raised)."""
    for result in validation.get("results", []):
        body = result.get("result") or {}
        for key in list(body):
            if key.startswith(("partial_unexpected", "unexpected_list", "unexpected_index", "unexpected_rows")) or (
                key == "details"
            ):
                del body[key]
        info = result.get("exception_info") or {}
        if info:
            raised = info.get("raised_exception") or any(
                isinstance(v, dict) and v.get("raised_exception") for v in info.values()
            )
            result["exception_info"] = {"raised_exception": bool(raised), "exception_message": None,
                                        "exception_traceback": None}  # fmt: skip
    return validation


def validate(suite: str, frame: pd.DataFrame, expectations: list[tuple[str, Any]]) -> CheckResult:
    """Validate `frame` against (check name, GX expectation) pairs, as one GX suite."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    with quiet_gx():
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        source = context.data_sources.add_pandas(name=f"{suite}_source")
        asset = source.add_dataframe_asset(name=f"{suite}_frame")
        batch = asset.add_batch_definition_whole_dataframe(f"{suite}_batch").get_batch(
            batch_parameters={"dataframe": frame}
        )
        for name, expectation in expectations:
            expectation.meta = {**(expectation.meta or {}), "check": name}
        gx_suite = gx.ExpectationSuite(name=suite, expectations=[e for _, e in expectations])
        validation = batch.validate(gx_suite, result_format=RESULT_FORMAT)
        checks = []
        for result in validation.results:
            config = result.expectation_config
            assert config is not None  # GX sets it on every result of a suite validation
            observed = (result.result or {}).get("observed_value")
            checks.append(
                {
                    "name": config.meta["check"],
                    "success": bool(result.success),
                    "expectation": type(config.to_domain_obj()).__name__,
                    "observed": observed if isinstance(observed, int | float | bool | str | None) else None,
                }
            )
    return CheckResult(
        suite=suite,
        success=all(c["success"] for c in checks),
        checks=checks,
        validations=[scrub_validation(validation.to_json_dict())],
    )


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
                    column=col,
                    min_value=limits[name][0],
                    max_value=limits[name][1],
                    description=_description(name, limits[name], (where or {}).get(name)),
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


def _description(name: str, limits: tuple[int, int], where: str | None) -> str:
    low, high = limits
    allowed = str(low) if low == high else f"between {low} and {high}"
    return f"{name}{f' ({where})' if where else ''}: the count is {allowed}"


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
    validations = [v for r in results for v in r.validations]
    return CheckResult(suite=suite, success=all(c["success"] for c in checks), checks=checks, validations=validations)


def describe(check: dict[str, Any]) -> str:
    """One failed check in words: its name, where (table and column), the count seen and the count allowed."""
    where = f" [{check['where']}]" if check.get("where") else ""
    observed = check.get("observed")
    if "expected" not in check or not isinstance(observed, int):
        return f"{check['name']}{where}: {observed}"
    expected = check["expected"]
    allowed = f"{expected[0]}..{expected[1]}" if isinstance(expected, list) else str(expected)
    return f"{check['name']}{where}: observed {observed}, expected {allowed}"
