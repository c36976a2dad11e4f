"""Airflow's metadata database: what it keeps about Lethe's runs, and removing it.

Tasks may not use Airflow's ORM session (Airflow 3 blocks it in workers), so this
module opens its own SQLAlchemy engine on the URL of the `lethe_airflow_metadata`
connection, and reuses Airflow's table definitions so JSON and timestamps are
written the way Airflow reads them on every database backend.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from lethe.db import ConfigurationError

METADATA_CONN_ID = "lethe_airflow_metadata"
BLOCKED_PREFIX = "airflow-db-not-allowed"  # what Airflow 3 puts in place of the URL inside a task

# `airflow db clean` applies --dag-ids only to tables with a dag_id column; other tables would be
# purged for every DAG, so only these are named.
# (task_reschedule rows go with their task instance.)
DB_CLEAN_TABLES = ("dag_run", "task_instance", "task_instance_history", "xcom", "log")
# (table, recency column) as `airflow db clean` judges age, for counting what it removes.
RECENCY = {
    "dag_run": "start_date",
    "task_instance": "start_date",
    "task_instance_history": "start_date",
    "xcom": "timestamp",
    "log": "dttm",
    "rendered_task_instance_fields": None,  # cascades with task_instance
}
FINISHED = ("success", "failed")
ACTIVE = ("queued", "running")


def metadata_url() -> str:
    """The metadata database URL: the `lethe_airflow_metadata` connection, else Airflow's own setting."""
    try:
        from airflow.sdk import Connection

        conn: Any = Connection.get(METADATA_CONN_ID)
    except Exception:  # not defined in this deployment: fall back to Airflow's configuration
        conn = None
    if conn is not None:
        extra = conn.extra_dejson or {}
        url = str(extra.get("sql_alchemy_conn") or conn.get_uri())
    else:
        from airflow.configuration import conf

        url = conf.get("database", "sql_alchemy_conn", fallback="")
    if not url or url.startswith(BLOCKED_PREFIX):
        raise ConfigurationError(
            f"cannot reach Airflow's metadata database from this task: define the Airflow connection "
            f"{METADATA_CONN_ID!r} (for example AIRFLOW_CONN_{METADATA_CONN_ID.upper()}="
            "postgres://user:password@host:5432/airflow)"
        )
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    return url


def engine(url: str) -> Any:
    from sqlalchemy import create_engine

    return create_engine(url, future=True)


@dataclass
class FinishedRuns:
    """Finished runs of DAGs whose conf may name a person; `runs` stays in memory, never in XCom."""

    runs: list[tuple[str, str]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def scrub_finished_runs(url: str, dag_ids: Sequence[str], before: datetime, *, dry_run: bool = False) -> FinishedRuns:
    """Clear the request a finished run carried: its conf, XComs, rendered fields and audit-log details.

    Only runs that ended before `before` are touched; a running or queued run still needs its conf.
    Idempotent: a second pass finds nothing left and counts zeros.
    """
    from airflow.models.dagrun import DagRun
    from airflow.models.log import Log
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.models.xcom import XComModel
    from sqlalchemy import and_, delete, func, or_, select, tuple_, update

    dag_run, xcom = DagRun.__table__, XComModel.__table__
    rtif, log = RenderedTaskInstanceFields.__table__, Log.__table__
    result = FinishedRuns(counts={"runs": 0, "confs": 0, "xcoms": 0, "rendered_fields": 0, "audit_entries": 0})
    if not dag_ids:
        return result
    with engine(url).begin() as db:
        rows = db.execute(
            select(dag_run.c.id, dag_run.c.dag_id, dag_run.c.run_id, dag_run.c.conf).where(
                dag_run.c.dag_id.in_(list(dag_ids)),
                dag_run.c.state.in_(FINISHED),
                dag_run.c.end_date < before,
            )
        ).all()
        result.runs = [(r.dag_id, r.run_id) for r in rows]
        with_conf = [r.id for r in rows if r.conf]
        keys = [(r.dag_id, r.run_id) for r in rows]
        # The API server's audit log keeps the trigger request's body (with its conf) in `extra`,
        # often without a run_id: clear it by DAG and time rather than by run.
        audit = and_(log.c.dag_id.in_(list(dag_ids)), log.c.dttm < before, log.c.extra.is_not(None))
        counts = result.counts
        counts["runs"] = len(rows)
        counts["confs"] = len(with_conf)
        counts["audit_entries"] = db.execute(select(func.count()).select_from(log).where(audit)).scalar_one()
        if keys:
            by_run = or_(*(and_(rtif.c.dag_id == d, rtif.c.run_id == r) for d, r in keys))
            counts["rendered_fields"] = db.execute(select(func.count()).select_from(rtif).where(by_run)).scalar_one()
            in_runs = tuple_(xcom.c.dag_id, xcom.c.run_id).in_(keys)
            counts["xcoms"] = db.execute(select(func.count()).select_from(xcom).where(in_runs)).scalar_one()
        if dry_run:
            return result
        if with_conf:
            db.execute(update(dag_run).where(dag_run.c.id.in_(with_conf)).values(conf={}))
        if keys:
            db.execute(delete(rtif).where(by_run))
            db.execute(delete(xcom).where(in_runs))
        db.execute(update(log).where(audit).values(extra=None))
    return result


def active_since(url: str, dag_ids: Sequence[str]) -> datetime | None:
    """Start of the oldest queued or running run among `dag_ids`; purging must not reach it."""
    from airflow.models.dagrun import DagRun
    from sqlalchemy import func, select

    dag_run = DagRun.__table__
    with engine(url).connect() as db:
        value: datetime | None = db.execute(
            select(func.min(func.coalesce(dag_run.c.start_date, dag_run.c.queued_at))).where(
                dag_run.c.dag_id.in_(list(dag_ids)), dag_run.c.state.in_(ACTIVE)
            )
        ).scalar_one()
    return value


def _tables() -> dict[str, Any]:
    """Airflow's own table definitions, so timestamps compare the way Airflow stores them."""
    import airflow.models.dagrun
    import airflow.models.log
    import airflow.models.renderedtifields
    import airflow.models.taskinstance
    import airflow.models.taskinstancehistory
    import airflow.models.xcom  # noqa: F401 - registers the tables on Base.metadata
    from airflow.models.base import Base

    return dict(Base.metadata.tables)


def count_older(url: str, dag_ids: Sequence[str], before: datetime) -> dict[str, int]:
    """Rows per table that `airflow db clean` would judge older than `before`, for these DAGs."""
    from sqlalchemy import func, select

    tables = _tables()
    ti = tables["task_instance"]
    counts: dict[str, int] = {}
    with engine(url).connect() as db:
        for name, recency in RECENCY.items():
            t = tables[name]
            query = select(func.count()).select_from(t).where(t.c.dag_id.in_(list(dag_ids)))
            if recency is not None:
                query = query.where(t.c[recency] < before)
            else:  # rendered fields go with their task instance
                query = query.where(
                    select(ti.c.id)
                    .where(ti.c.dag_id == t.c.dag_id, ti.c.run_id == t.c.run_id, ti.c.start_date < before)
                    .exists()
                )
            counts[name] = int(db.execute(query).scalar_one())
    return counts


def db_clean(url: str, dag_ids: Sequence[str], before: datetime) -> None:
    """Run `airflow db clean` for Lethe's DAGs on the metadata database at `url`, without archive tables.

    Archive tables would keep a copy of what is being forgotten, hence --skip-archive. Not
    --error-on-cleanup-failure: with --dag-ids, Airflow 3.3.2 always fails on the dependent `deadline`
    table (it has no dag_id column; its rows go with their dag_run by cascade). The caller counts
    what is left instead.
    """
    env = os.environ.copy()
    for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_SECRET"):
        env.pop(key, None)
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = url
    command = [
        sys.executable,
        "-m",
        "airflow",
        "db",
        "clean",
        "--clean-before-timestamp",
        before.isoformat(),
        "--tables",
        ",".join(DB_CLEAN_TABLES),
        "--dag-ids",
        ",".join(dag_ids),
        "--skip-archive",
        "--yes",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    print(done.stdout.strip())  # table names and row counts only (rows are not printed without --verbose)
    if done.returncode != 0:
        # Its output names tables and counts, not row contents; keep the tail for the operator.
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"airflow db clean exited {done.returncode}: " + " | ".join(tail))


@dataclass
class StillHeld:
    """Airflow's records of Lethe's runs that a cleanup has not reached yet (no conf values, only counts and times)."""

    finished_ends: list[datetime] = field(default_factory=list)  # end of each finished run whose conf is not cleared
    naming_a_person: int = 0  # of those, runs whose conf carries an identifier
    active: int = 0
    lethe_runs: int = 0
    oldest_start: datetime | None = None


def still_held(url: str, erasure_dag_ids: Sequence[str], dag_ids: Sequence[str]) -> StillHeld:
    """What the compliance page reports about Airflow's metadata: erasure runs still carrying their conf,
    and the oldest recorded run of Lethe's DAGs (what the next cleanups remove, and when)."""
    from airflow.models.dagrun import DagRun
    from sqlalchemy import func, select

    dag_run = DagRun.__table__
    out = StillHeld()
    with engine(url).connect() as db:
        for state, end, conf in db.execute(
            select(dag_run.c.state, dag_run.c.end_date, dag_run.c.conf).where(
                dag_run.c.dag_id.in_(list(erasure_dag_ids))
            )
        ):
            if state in ACTIVE:
                out.active += 1
            elif conf and end is not None:
                out.finished_ends.append(end)
                out.naming_a_person += bool(isinstance(conf, dict) and conf.get("identifier"))
        count, oldest = db.execute(
            select(func.count(), func.min(dag_run.c.start_date)).where(dag_run.c.dag_id.in_(list(dag_ids)))
        ).one()
    out.lethe_runs, out.oldest_start = int(count), oldest
    return out
