"""The audit's SQL suites (lethe.audit.suites) run in PostgreSQL by a GX Checkpoint.

GX connects to the primary through its PostgreSQL data source (a TCP URL; Lethe's search path, so
the queries name tables as the policy does). The batch is a one-row query asset holding the audit's
clock, so the suites themselves stay as committed. The result format keeps counts only: no
unexpected rows, no partial lists. Each validation comes back as a lethe.quality CheckResult per
suite, with GX's own validation result (for Data Docs) beside it.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from lethe.audit import suites
from lethe.policy.model import Policy
from lethe.quality import RESULT_FORMAT, CheckResult, quiet_gx, scrub_validation
from lethe.retention.catalog import ForeignKey

log = logging.getLogger(__name__)
CHECKPOINT = "compliance_audit_primary"
DATA_SOURCE = "lethe_primary"


def clock_query(now: datetime, stale_after: timedelta) -> str:
    """The batch: the audit's clock and the staleness limit, as numbers (no text from outside)."""
    return (
        f"SELECT to_timestamp({float(now.timestamp())!r}) AS audit_now,"
        f" make_interval(secs => {float(stale_after.total_seconds())!r}) AS stale_after"
    )


def sqlalchemy_url(db_url: str) -> str:
    if db_url.startswith("postgres://"):
        return "postgresql://" + db_url[len("postgres://") :]
    return db_url


def _check(result: Any) -> dict[str, Any]:
    meta = result.expectation_config.meta or {}  # the check's name and where it looks
    observed = (result.result or {}).get("observed_value")
    check: dict[str, Any] = {
        "name": meta["check"],
        "success": bool(result.success),
        "expectation": "UnexpectedRowsExpectation",
        "observed": int(observed) if isinstance(observed, int) else None,
        "expected": 0,
        "where": meta.get("where"),
    }
    info = result.exception_info or {}
    if any(v.get("raised_exception") for v in info.values() if isinstance(v, dict)) or info.get("raised_exception"):
        check["success"] = False
        check["error"] = "the check's query failed: see the task log"
        for v in [info, *info.values()]:
            if isinstance(v, dict) and v.get("exception_message"):
                log.warning("%s: %s", meta["check"], str(v["exception_message"]).splitlines()[0])
                break
    return check


def run(
    db_url: str,
    policy: Policy,
    fks: list[ForeignKey],
    now: datetime,
    stale_after: timedelta,
    run_name: str = "audit",
    only: set[str] | None = None,
    key_type: str | None = None,
) -> dict[str, CheckResult]:
    """Run every SQL suite (or those in `only`) through one Checkpoint; suite name -> its CheckResult.
    `key_type`: the subject key's SQL type when its equal values are not equal as text (suites.generate)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    from lethe.db import search_path

    with quiet_gx():
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        source = context.data_sources.add_postgres(
            name=DATA_SOURCE,
            connection_string=sqlalchemy_url(db_url),
            kwargs={"connect_args": {"options": f"-c search_path={search_path()}"}},  # type: ignore[call-arg]
        )
        clock = source.add_query_asset("audit_clock", clock_query(now, stale_after))
        batch = clock.add_batch_definition_whole_table("audit_clock")
        definitions = []
        for name, spec in suites.generate(policy, fks, key_type).items():
            if only is not None and name not in only:
                continue
            suite = context.suites.add(suites.build(spec))
            definitions.append(
                context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
            )
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(name=CHECKPOINT, validation_definitions=definitions, result_format=RESULT_FORMAT)
        )
        outcome = checkpoint.run(run_id=gx.RunIdentifier(run_name=run_name, run_time=now))
    results: dict[str, CheckResult] = {}
    for validation in outcome.run_results.values():
        name = validation.suite_name
        checks = [_check(r) for r in validation.results]
        results[name] = CheckResult(
            suite=name,
            success=all(c["success"] for c in checks),
            checks=checks,
            validations=[scrub_validation(validation.to_json_dict())],
        )
    return results
