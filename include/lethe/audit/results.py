"""Keep the audit's results (migrations 050, 100) and turn them into the run's verdict."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import psycopg2.extensions

DAG_ID = "compliance_audit"


class AuditFailed(AssertionError):
    """At least one compliance check failed; the message names each one (suite.check)."""


@dataclass
class Outcome:
    run_id: str
    success: bool
    failed: list[str]
    checks_total: int
    results: list[dict[str, Any]] = field(default_factory=list)

    def message(self) -> str:
        if self.success:
            return f"compliance audit passed: {self.checks_total} checks"
        from lethe.quality import describe

        failures = [f"{r['suite']}.{describe(c)}" for r in self.results for c in r["checks"] if not c["success"]]
        return f"compliance audit failed {len(self.failed)} of {self.checks_total} checks: {'; '.join(failures)}"


def errored(suite: str, error: str) -> dict[str, Any]:
    """The result of a suite whose task did not finish (its error class only: messages may quote data)."""
    from lethe.quality import CheckResult

    return CheckResult(
        suite=suite, success=False, checks=[{"name": "suite_completed", "success": False, "observed": error}]
    ).as_dict()


def outcome(run_id: str, results: list[dict[str, Any]]) -> Outcome:
    failed = [f"{r['suite']}.{c['name']}" for r in results for c in r["checks"] if not c["success"]]
    total = sum(len(r["checks"]) for r in results)
    return Outcome(run_id=run_id, success=not failed, failed=failed, checks_total=total, results=results)


def record(
    cur: psycopg2.extensions.cursor,
    result: Outcome,
    held_rows: dict[str, dict[str, int]] | None = None,
    dag_id: str = DAG_ID,
    data_docs: str | None = None,
) -> None:
    """Store one run's results (and where its GX Data Docs are); a rerun of the same run replaces its row."""
    cur.execute(
        """
        INSERT INTO audit_runs
            (run_id, dag_id, success, checks_total, checks_failed, failed, results, held_rows, data_docs)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (run_id) DO UPDATE SET
            audited_at = now(), success = EXCLUDED.success, checks_total = EXCLUDED.checks_total,
            checks_failed = EXCLUDED.checks_failed, failed = EXCLUDED.failed, results = EXCLUDED.results,
            held_rows = EXCLUDED.held_rows, data_docs = EXCLUDED.data_docs
        """,
        (
            result.run_id,
            dag_id,
            result.success,
            result.checks_total,
            len(result.failed),
            result.failed,
            json.dumps(result.results),
            json.dumps(held_rows or {}),
            data_docs,
        ),
    )


def previous_held_rows(cur: psycopg2.extensions.cursor, run_id: str | None = None) -> dict[str, dict[str, int]] | None:
    """Held-row counts of the latest earlier audit, or None before the first one."""
    cur.execute(
        "SELECT held_rows FROM audit_runs WHERE run_id IS DISTINCT FROM %s ORDER BY audited_at DESC LIMIT 1",
        (run_id,),
    )
    row = cur.fetchone()
    return row[0] if row else None


def latest(cur: psycopg2.extensions.cursor, limit: int = 1) -> list[dict[str, Any]]:
    """The latest audit runs, newest first."""
    cur.execute(
        "SELECT run_id, dag_id, audited_at, success, checks_total, checks_failed, failed, results, data_docs"
        " FROM audit_runs ORDER BY audited_at DESC LIMIT %s",
        (limit,),
    )
    names = (
        "run_id", "dag_id", "audited_at", "success", "checks_total", "checks_failed", "failed", "results", "data_docs"
    )  # fmt: skip
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def verdict(result: Outcome) -> str:
    """The run's outcome: raise AuditFailed naming the failed checks, else the pass message."""
    if not result.success:
        raise AuditFailed(result.message())
    return result.message()
