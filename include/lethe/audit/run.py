"""The audit's steps as plain functions: each DAG task calls one; the CLI and tests call them too.

Each check step returns CheckResult dicts (plain data, safe for XCom: names and
counts only). `conclude` keeps them, raises alerts and gives the verdict.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from lethe.audit.limits import RESTORE_DRILL_DAYS, RPO_HOURS, STALE_AFTER_HOURS
from lethe.db import transaction

# The suites compliance_audit runs, by task id; conclude() reports a suite whose task died.
SUITES = ("primary", "legal_holds", "backups", "restore_drill", "shares", "ledger")


def audit_clock(params: dict[str, Any]) -> datetime:
    """The audit's `now`: the `as_of` param (ISO 8601; naive means UTC) or the wall clock."""
    from lethe.db import ConfigurationError

    value = params.get("as_of")
    if not value:
        return datetime.now(UTC)
    try:
        when = datetime.fromisoformat(str(value))
    except ValueError:
        raise ConfigurationError(f"compliance_audit param as_of: {value!r} is not an ISO 8601 date-time") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def check_primary(
    db_url: str,
    key: bytes,
    now: datetime | None = None,
    stale_after_hours: float = STALE_AFTER_HOURS,
    run_id: str = "audit",
) -> list[dict[str, Any]]:
    """`now` is the audit's clock (default: the wall clock); each retention rule is judged as of
    its last completed run and is stale when that run is more than `stale_after_hours` before `now`.
    The SQL suites run in PostgreSQL through one GX Checkpoint; the keyed-pseudonym checks on frames."""
    from datetime import timedelta

    from lethe.audit import primary
    from lethe.policy import load_policy

    policy = load_policy()
    now = now or datetime.now(UTC)
    stale_after = timedelta(hours=stale_after_hours)
    sql = primary.sql_checks(db_url, policy, now, stale_after, run_name=run_id)
    with transaction(db_url) as cur:
        scan = primary.check_erasure_scan(cur, policy, key)
    return [
        r.as_dict(validations=True)
        for r in (
            primary.check_retention(db_url, policy, now, stale_after, sql["retention"]),
            primary.check_erasure(db_url, policy, key, now, sql["erasure_residue"]),
            scan,
            primary.check_deadlines(db_url, now, sql_result=sql["erasure_deadlines"]),
        )
    ]


def check_holds(db_url: str, run_id: str) -> tuple[list[dict[str, Any]], dict[str, dict[str, int]]]:
    from lethe.audit import primary, results
    from lethe.policy import load_policy

    with transaction(db_url) as cur:
        current = primary.held_rows(cur, load_policy())
        previous = results.previous_held_rows(cur, run_id)
    return [primary.check_holds(current, previous).as_dict(validations=True)], current


def check_backups(
    db_url: str, endpoint_url: str | None, key: bytes, rpo_hours: float = RPO_HOURS, now: datetime | None = None
) -> list[dict[str, Any]]:
    from datetime import timedelta

    from lethe.audit.backups import check_backups as check

    return [
        check(db_url, endpoint_url, key, now or datetime.now(UTC), timedelta(hours=rpo_hours)).as_dict(validations=True)
    ]


def check_restore_drill(
    db_url: str, endpoint_url: str | None, key: bytes, now: datetime, run_id: str, params: dict[str, Any]
) -> list[dict[str, Any]]:
    """The weekly restore drill (lethe.audit.drill), or its `skipped` check while the last one is recent."""
    from lethe.audit.drill import run_drill

    return [
        run_drill(
            db_url,
            endpoint_url,
            key,
            now,
            run_id,
            interval_days=float(params.get("restore_drill_days", RESTORE_DRILL_DAYS)),
            region=params.get("restore_drill_region") or None,
            database=params.get("restore_drill_database") or None,
        ).as_dict(validations=True)
    ]


def check_shares(endpoint_url: str | None) -> list[dict[str, Any]]:
    from lethe.audit.shares import check_shares as check

    return [check(endpoint_url).as_dict(validations=True)]


def check_ledger(db_url: str, endpoint_url: str | None) -> list[dict[str, Any]]:
    from lethe.audit.ledger_checks import check_ledger as check
    from lethe.config import BUCKETS, PRIMARY_REGION
    from lethe.storage import s3_client

    with transaction(db_url) as cur:
        return [check(cur, s3_client(PRIMARY_REGION, endpoint_url), BUCKETS.evidence).as_dict(validations=True)]


def conclude(
    db_url: str,
    run_id: str,
    suites: dict[str, list[dict[str, Any]] | str],
    held_rows: dict[str, dict[str, int]] | None = None,
    endpoint_url: str | None = None,
    data_docs: bool = True,
) -> str:
    """Publish the run's GX Data Docs to the evidence bucket, keep the results (with the Data Docs'
    place), alert on overdue erasures, and raise AuditFailed naming any failed check.

    `suites` maps each suite's task to its results, or to the error class name when the task died.
    A failure to publish the Data Docs fails the audit as the `data_docs` suite, after the results are kept.
    """
    import logging

    from lethe.audit import alerts, results

    collected: list[dict[str, Any]] = []
    for suite, value in suites.items():
        collected.extend([results.errored(suite, value)] if isinstance(value, str) else value)
    docs = None
    if data_docs:
        from lethe.audit.data_docs import build_and_publish

        try:
            docs = build_and_publish(db_url, endpoint_url, run_id, collected)
        except Exception as exc:  # the verdict and the results must still be kept
            logging.getLogger(__name__).exception("Data Docs not published")
            collected.append(results.errored("data_docs", type(exc).__name__))
    for result in collected:
        result.pop("validations", None)  # in the Data Docs now; audit_runs keeps the checks
    outcome = results.outcome(run_id, collected)
    with transaction(db_url) as cur:
        results.record(cur, outcome, held_rows, data_docs=docs)
    overdue = [
        c for r in collected for c in r["checks"] if c["name"] == "overdue_erasure_requests" and not c["success"]
    ]
    if overdue:
        alerts.raise_alert(
            db_url,
            "erasure_overdue",
            f"{overdue[0]['observed']} erasure request(s) are past their due date: run subject_erasure",
            dag_id=results.DAG_ID,
            run_id=run_id,
        )
    return results.verdict(outcome)
