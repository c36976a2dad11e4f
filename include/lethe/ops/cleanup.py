"""airflow_metadata_cleanup: what Airflow itself remembers of Lethe's runs, kept only as long as the policy says.

Two clocks (policy file, `airflow_metadata`):
- erasure_conf_retention (P1D): a subject_erasure run's conf names the person to erase. Once the
  run has finished this long ago, its conf, XComs, rendered fields, audit-log details and task
  logs go. The day's grace lets an operator retry a failed run before its request is forgotten.
- retention (P30D): every record of every Lethe DAG run (runs, task instances, XComs, audit log,
  task logs) older than this is purged with `airflow db clean` and from the log folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from lethe.ops import logs, metadata
from lethe.policy.model import Duration

# The contract's DAG ids (docs/deployment.md): only these are Lethe's to clean.
LETHE_DAG_IDS = (
    "retention_nightly",
    "subject_erasure",
    "backup_nightly",
    "backup_erasure_propagation",
    "usage_sharing",
    "compliance_audit",
    "airflow_metadata_cleanup",
)
# DAGs whose run conf names a data subject.
ERASURE_DAG_IDS = ("subject_erasure",)
LEDGER_KIND = "airflow_metadata_cleanup"


@dataclass(frozen=True)
class Settings:
    retention: timedelta
    erasure_conf_retention: timedelta
    dag_ids: tuple[str, ...] = LETHE_DAG_IDS
    erasure_dag_ids: tuple[str, ...] = ERASURE_DAG_IDS


def settings(
    retention: str | None = None,
    erasure_conf_retention: str | None = None,
    dag_ids: Sequence[str] | None = None,
    erasure_dag_ids: Sequence[str] | None = None,
) -> Settings:
    """The policy file's values, overridden by the DAG's params where given (ISO-8601 durations)."""
    from lethe.policy import load_policy

    policy = load_policy().airflow_metadata

    def duration(value: str | None, default: Duration, name: str) -> timedelta:
        if value in (None, ""):
            return default.to_timedelta()
        try:
            return TypeAdapter(Duration).validate_python(value).to_timedelta()
        except ValidationError as exc:
            raise ValueError(f"param {name}: {exc.errors()[0]['msg']}") from None

    return Settings(
        retention=duration(retention, policy.retention, "retention"),
        erasure_conf_retention=duration(
            erasure_conf_retention, policy.erasure_conf_retention, "erasure_conf_retention"
        ),
        dag_ids=tuple(dag_ids) if dag_ids else LETHE_DAG_IDS,
        erasure_dag_ids=tuple(erasure_dag_ids) if erasure_dag_ids is not None else ERASURE_DAG_IDS,
    )


def forget_erasure_requests(
    url: str, log_base: Path, config: Settings, now: datetime | None = None, *, dry_run: bool = False
) -> dict[str, int]:
    """Remove what finished erasure runs were told (conf, XCom, rendered fields, audit details, logs)."""
    before = (now or datetime.now(UTC)) - config.erasure_conf_retention
    found = metadata.scrub_finished_runs(url, config.erasure_dag_ids, before, dry_run=dry_run)
    counts = dict(found.counts)
    counts["log_files"] = logs.remove_run_logs(log_base, found.runs, dry_run=dry_run)
    return counts


def purge_expired(
    url: str, log_base: Path, config: Settings, now: datetime | None = None, *, dry_run: bool = False
) -> dict[str, int]:
    """Purge every record of Lethe's runs older than the retention; never reach a run still going."""
    before = (now or datetime.now(UTC)) - config.retention
    oldest_active = metadata.active_since(url, config.dag_ids)
    if oldest_active is not None and oldest_active <= before:
        before = oldest_active - timedelta(seconds=1)
    older = metadata.count_older(url, config.dag_ids, before)
    if not dry_run and any(older.values()):
        metadata.db_clean(url, config.dag_ids, before)
        left = metadata.count_older(url, config.dag_ids, before)
        # dag_run may legitimately keep each DAG's latest scheduled run (db clean's keep_last).
        stuck = sorted(table for table, n in left.items() if n and table != "dag_run")
        if stuck:
            raise RuntimeError(f"airflow db clean left expired rows in {', '.join(stuck)}; see its output above")
        older = {table: older[table] - left[table] for table in older}
    counts = {f"{table}_rows": n for table, n in older.items()}
    counts["log_files"] = logs.remove_logs_older(log_base, config.dag_ids, before, dry_run=dry_run)
    return counts


def record(db_url: str, forgotten: dict[str, int], purged: dict[str, int], *, dry_run: bool) -> dict[str, Any]:
    """One ledger entry in the primary database: counts only."""
    from lethe.db import transaction
    from lethe.ledger import append

    payload: dict[str, Any] = {"dry_run": dry_run, "erasure_requests": forgotten, "expired": purged}
    with transaction(db_url) as cur:
        append(cur, LEDGER_KIND, payload)
    return payload
