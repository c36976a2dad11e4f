"""subject_erasure under a real Airflow: scheduler, dag-processor, api-server and executor as processes.

Triggered through Airflow's REST API the way `lethe erasure submit` does (the request id only), and
the way the trigger form does (the identifier in the conf). Outcomes are read from the primary
database and S3. Then airflow_metadata_cleanup, run by the same real executor (where tasks may not
use Airflow's own database session), must leave no trace of the identifier in Airflow's metadata
database or its task logs. CeleryExecutor when Redis answers on 127.0.0.1:6379 and the Celery
provider is installed; LocalExecutor otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from lethe import testing
from lethe.config import BUCKETS, PRIMARY_REGION
from lethe.ops.stack import AirflowStack, ephemeral_stack
from lethe.storage import s3_client

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def primary(services: tuple[str, str]) -> Iterator[str]:
    url = testing.fresh_database(services[0], prefix="lethe_e2e")
    yield url
    testing.drop_database(url)


@pytest.fixture(scope="module")
def stack(services: tuple[str, str], primary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowStack]:
    testing.empty_buckets(services[1])
    with ephemeral_stack(
        tmp_path_factory.mktemp("airflow-stack"),
        primary_url=primary,
        s3_endpoint=services[1],
        metadata_server=services[0],
    ) as running:
        running.wait_for_dag("subject_erasure")
        running.wait_for_dag("airflow_metadata_cleanup")
        yield running


def add_person(url: str, user_id: int, email: str) -> None:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO accounts (user_id, name, username, email, phone, password_hash, created_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (user_id, f"Person {user_id}", f"person{user_id}", email, None, "x", datetime(2025, 1, 1, tzinfo=UTC)),
        )
    conn.close()


def one(url: str, query: str, *params: Any) -> Any:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(query, params)
        row = cur.fetchone()
    conn.close()
    return row[0] if row else None


def certificate_exists(s3_endpoint: str, request_id: str) -> bool:
    client = s3_client(PRIMARY_REGION, s3_endpoint)
    listed = client.list_objects_v2(Bucket=BUCKETS.evidence, Prefix=f"certificates/{request_id}")
    return any(o["Key"].endswith(".json") for o in listed.get("Contents", []))


def metadata_tables_containing(url: str, text: str) -> list[str]:
    """Tables of Airflow's metadata database with any row whose text contains `text`."""
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        found = []
        for (table,) in cur.fetchall():
            cur.execute(
                f'SELECT count(*) FROM "{table}" t WHERE strpos(t::text, %s) > 0',  # noqa: S608 - catalog names
                (text,),
            )
            if cur.fetchone()[0]:  # type: ignore[index]
                found.append(table)
    conn.close()
    return found


def files_containing(folder: Path, text: str) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and text in p.read_text(errors="replace")]


def test_erasure_submitted_like_the_cli_runs_under_the_scheduler(
    stack: AirflowStack, primary: str, services: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from lethe.erasure import cli, request

    email = "cli.subject@example.org"
    add_person(primary, 9001, email)
    add_person(primary, 9002, "bystander@example.org")
    with psycopg2.connect(primary) as conn, conn.cursor() as cur:
        request_id, created = request.register(cur, "email", email, reference="T-1", dry_run=False)
    conn.close()
    assert created

    monkeypatch.setenv("AIRFLOW_API_USERNAME", "admin")
    monkeypatch.setenv("AIRFLOW_API_PASSWORD", stack.password)
    run_id = cli.trigger(stack.base_url, request_id, dry_run=False)
    state = stack.wait_for_run("subject_erasure", run_id)
    assert state == "success", stack.task_states("subject_erasure", run_id)

    assert one(primary, "SELECT count(*) FROM accounts WHERE user_id = 9001") == 0
    assert one(primary, "SELECT count(*) FROM accounts WHERE email = %s", email) == 0
    assert one(primary, "SELECT count(*) FROM accounts WHERE user_id = 9002") == 1, "only the subject is erased"
    assert one(primary, "SELECT status FROM erasure_requests WHERE request_id = %s", request_id) == "certified"
    assert certificate_exists(services[1], request_id)
    assert metadata_tables_containing(stack.metadata_url, email) == [], "the CLI path never hands Airflow the email"


def test_form_trigger_then_metadata_cleanup_forgets_the_identifier(
    stack: AirflowStack, primary: str, services: tuple[str, str]
) -> None:
    email = "form.subject@example.org"
    add_person(primary, 9003, email)

    run_id = stack.trigger(
        "subject_erasure", {"identifier_kind": "email", "identifier": email, "dry_run": False, "reason": "asked"}
    )
    state = stack.wait_for_run("subject_erasure", run_id)
    assert state == "success", stack.task_states("subject_erasure", run_id)
    assert one(primary, "SELECT count(*) FROM accounts WHERE user_id = 9003") == 0
    request_id = one(
        primary, "SELECT request_id::text FROM erasure_requests WHERE status = 'certified' ORDER BY 1 DESC"
    )
    assert request_id and certificate_exists(services[1], request_id)

    # The form put the identifier into Airflow: the run's conf and the API server's audit log.
    assert {"dag_run", "log"} <= set(metadata_tables_containing(stack.metadata_url, email))
    assert (stack.log_folder / "dag_id=subject_erasure" / f"run_id={run_id}").is_dir()

    cleanup = stack.trigger("airflow_metadata_cleanup", {"erasure_conf_retention": "PT0S"})
    state = stack.wait_for_run("airflow_metadata_cleanup", cleanup)
    assert state == "success", stack.task_states("airflow_metadata_cleanup", cleanup)

    assert metadata_tables_containing(stack.metadata_url, email) == []
    assert files_containing(stack.log_folder, email) == []
    assert not (stack.log_folder / "dag_id=subject_erasure" / f"run_id={run_id}").exists()
    assert one(stack.metadata_url, "SELECT state FROM dag_run WHERE run_id = %s", run_id) == "success"
    entry = one(primary, "SELECT payload FROM ledger WHERE kind = 'airflow_metadata_cleanup' ORDER BY entry_id DESC")
    assert entry["erasure_requests"]["confs"] >= 1 and entry["erasure_requests"]["log_files"] >= 1


def test_stop_ends_every_process_and_keeps_the_metadata_database(stack: AirflowStack) -> None:
    import psutil

    pids = [p.pid for p in stack.processes.values()]
    assert set(stack.processes) == set(AirflowStack.COMPONENTS) | (
        {"celery-worker"} if stack.executor == "CeleryExecutor" else set()
    )
    children = [c.pid for pid in pids for c in psutil.Process(pid).children(recursive=True)]
    ended = stack.stop()  # the fixture's exit afterwards finds nothing left to stop, then drops the database
    assert set(pids) <= set(ended)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
    assert not [pid for pid in children if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    assert not AirflowStack.live_processes(stack.home)
    assert one(stack.metadata_url, "SELECT count(*) FROM dag_run WHERE dag_id = 'subject_erasure'") >= 2
