"""`lethe up` / `lethe down`: a real Airflow on this machine, on the embedded services (or LETHE_*'s).

Airflow's home is `$LETHE_HOME/airflow-local` (its state file and the admin's password, generated on
first start and kept, 0600), every log (task logs and one file per process) is under `$LETHE_HOME/logs`,
and its metadata database is `airflow` on the primary's PostgreSQL server, kept across restarts.
The first start of an embedded (or `--seed`) database also seeds the demo platform.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from lethe.airflow_env import DAGS_FOLDER
from lethe.config import lethe_home
from lethe.ops.stack import (
    ADMIN_USER,
    APPROVER_USER,
    PASSWORDS_FILE,
    AirflowStack,
    StackError,
    free_port,
    passwords,
    port_answers,
)

METADATA_DATABASE = "airflow"
DEFAULT_PORT = 8080


def airflow_home() -> Path:
    return lethe_home() / "airflow-local"


def log_folder() -> Path:
    return lethe_home() / "logs"


@dataclass(frozen=True)
class Running:
    url: str
    user: str
    password: str
    approver: str  # a second user: an erasure's requester never approves their own request
    approver_password: str
    password_file: Path
    logs: Path
    pids: dict[str, int]
    seeded_users: int  # accounts seeded by this start (0: the database had its data already)
    already_running: bool


def dag_ids() -> list[str]:
    return sorted(p.stem for p in DAGS_FOLDER.glob("*.py") if not p.name.startswith("_"))


def ensure_database(server_url: str, name: str) -> str:
    """Create database `name` on the server of `server_url` unless it exists; return its URL."""
    from lethe.db import url_for_database

    dsn = psycopg2.extensions.parse_dsn(server_url)
    admin = psycopg2.connect(**{**dsn, "dbname": "postgres"})
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        admin.close()
    return url_for_database(server_url, name)


def has_accounts(db_url: str) -> bool:
    from lethe.db import transaction

    with transaction(db_url) as cur:
        cur.execute("SELECT to_regclass('public.accounts') IS NOT NULL")
        if not cur.fetchone()[0]:  # type: ignore[index]
            return False
        cur.execute("SELECT EXISTS (SELECT 1 FROM public.accounts)")
        return bool(cur.fetchone()[0])  # type: ignore[index]


def up(
    *,
    port: int = DEFAULT_PORT,
    users: int = 2000,
    seed: bool | None = None,
    triggered_only: bool = False,
    metadata_database: str = METADATA_DATABASE,
    progress: Callable[[str], None] = lambda _: None,
) -> Running:
    """Start (or find running) the local Airflow; seed the demo platform on the first start of its database.

    `seed` None: seed when the database is the embedded one (LETHE_DATABASE_URL unset) and has no accounts.
    """
    import os

    from lethe.db import migrate
    from lethe.embedded import services
    from lethe.storage import ensure_buckets

    home = airflow_home()
    embedded_db = not os.environ.get("LETHE_DATABASE_URL")
    with services() as (db_url, s3_url):
        running = AirflowStack.live_processes(home)
        state = AirflowStack.recorded(home)
        if running and set(running) >= set(AirflowStack.COMPONENTS) and port_answers(int(state["port"])):
            return Running(
                url=str(state["url"]),
                user=ADMIN_USER,
                password=passwords(home)[ADMIN_USER],
                approver=APPROVER_USER,
                approver_password=passwords(home)[APPROVER_USER],
                password_file=home / PASSWORDS_FILE,
                logs=log_folder(),
                pids={label: p.pid for label, p in running.items()},
                seeded_users=0,
                already_running=True,
            )
        if running:  # a partial stack (a process died): end the rest and start afresh
            AirflowStack.stop_recorded(home)
        progress("migrating Lethe's schema and creating the buckets")
        migrate(db_url)
        ensure_buckets(s3_url)
        seeded = 0
        if (embedded_db if seed is None else seed) and not has_accounts(db_url):
            from lethe.seed import seed as seed_platform

            progress(f"seeding the demo platform with {users:,} people (first start)")
            seed_platform(db_url, users)
            seeded = users
            from lethe.erasure.indexes import ensure as ensure_indexes
            from lethe.policy import load_policy

            progress("creating Lethe's search indexes on the demo platform (`lethe db indexes`)")
            ensure_indexes(db_url, load_policy())
        metadata_url = ensure_database(db_url, metadata_database)
        if port_answers(port):
            chosen = free_port()
            progress(f"port {port} is taken: using {chosen}")
            port = chosen
        stack = AirflowStack(
            home,
            primary_url=db_url,
            s3_endpoint=s3_url,
            metadata_url=metadata_url,
            port=port,
            log_folder=log_folder(),
            executor="LocalExecutor",
            triggered_only=triggered_only,
        )
        progress(f"starting Airflow (api-server, scheduler, dag-processor, triggerer); logs in {stack.log_folder}")
        stack.start()
        progress("waiting for the dag-processor to parse Lethe's DAGs")
        try:
            stack.wait_for_dags(dag_ids(), timeout=600)
        except StackError as exc:  # slow or broken parsing: Airflow runs; the UI shows import errors
            progress(f"not every DAG is parsed yet (see {stack.log('dag-processor')}): {str(exc).splitlines()[0]}")
        return Running(
            url=stack.base_url,
            user=ADMIN_USER,
            password=stack.password,
            approver=APPROVER_USER,
            approver_password=passwords(home)[APPROVER_USER],
            password_file=home / PASSWORDS_FILE,
            logs=stack.log_folder,
            pids={label: p.pid for label, p in stack.processes.items()},
            seeded_users=seeded,
            already_running=False,
        )


def down(*, keep_services: bool = False) -> tuple[list[int], list[str]]:
    """Stop the local Airflow (every process and child), then the embedded services unless `keep_services`.

    Returns the pids ended and the embedded services stopped. The metadata database and its data stay.
    """
    from lethe.embedded import EmbeddedPostgres, EmbeddedS3

    ended = AirflowStack.stop_recorded(airflow_home())
    stopped: list[str] = []
    if not keep_services:
        for name, server in (("postgresql", EmbeddedPostgres()), ("s3", EmbeddedS3())):
            if server.running():
                server.stop()
                stopped.append(name)
    return ended, stopped
