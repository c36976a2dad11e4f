"""airflow_metadata_cleanup under dag.test: a person's identifier given to a DAG run leaves no trace in
Airflow's metadata database or its task logs once the cleanup ran.

A probe DAG (written to a temp folder) stands in for subject_erasure: its run conf carries a fake
email, which Airflow then copies into dag_run.conf, the rendered fields and an XCom; the API server's
audit-log entry and a task log file are seeded the way a real deployment writes them.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from lethe.dagrun import run_dag

pytestmark = pytest.mark.dags

EMAIL = "forget.me.{}@example.org"

PROBE = """
from airflow.sdk import dag, task


@dag(dag_id="{dag_id}", schedule=None, catchup=False)
def probe():
    @task
    def handle(who: str) -> str:
        print("handling the request")
        return who

    handle(who="{{{{ dag_run.conf['email'] }}}}")


probe()
"""


def metadata_engine() -> Any:
    from airflow.configuration import conf
    from sqlalchemy import create_engine

    return create_engine(conf.get("database", "sql_alchemy_conn"))


def tables_containing(text: str) -> dict[str, int]:
    """Every metadata table with rows whose text contains `text`, and how many rows."""
    from sqlalchemy import MetaData, select

    engine = metadata_engine()
    meta = MetaData()
    meta.reflect(engine)
    found: dict[str, int] = {}
    with engine.connect() as db:
        for name, table in meta.tables.items():
            hits = sum(1 for row in db.execute(select(table)) if text in repr(tuple(row)))
            if hits:
                found[name] = hits
    engine.dispose()
    return found


def files_containing(folder: Path, text: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and text in p.read_text(errors="replace")]


def rows(sql: str, **params: Any) -> list[Any]:
    from sqlalchemy import text

    engine = metadata_engine()
    with engine.connect() as db:
        result = list(db.execute(text(sql), params))
    engine.dispose()
    return result


@pytest.fixture
def probe_run(airflow_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str, str]:
    """Run the probe DAG with a fake email in its conf; seed its audit-log entry and task log file."""
    # dag.test() runs only DAGs of a configured bundle: add the temp folder as one, beside the project's.
    local = "airflow.dag_processing.bundles.local.LocalDagBundle"
    bundles = [
        {"name": "lethe-test-probes", "classpath": local, "kwargs": {"path": str(tmp_path / "probes")}},
        {"name": "dags-folder", "classpath": local, "kwargs": {}},
    ]
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps(bundles))
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.log import Log
    from airflow.utils.session import create_session

    dag_id = f"lethe_probe_{uuid.uuid4().hex[:8]}"
    email = EMAIL.format(uuid.uuid4().hex[:6])
    path = tmp_path / "probes" / f"{dag_id}.py"
    path.parent.mkdir()
    path.write_text(PROBE.format(dag_id=dag_id))
    bag = DagBag(dag_folder=str(path))
    assert not bag.import_errors
    run = bag.dags[dag_id].test(run_conf={"email": email})
    assert str(getattr(run.state, "value", run.state)) == "success"
    with create_session() as session:  # what the API server records for POST .../dagRuns
        session.add(
            Log(event="trigger_dag_run", dag_id=dag_id, extra=json.dumps({"conf": {"email": email}, "method": "POST"}))
        )
    from lethe.ops.logs import log_folder

    task_log = log_folder() / f"dag_id={dag_id}" / f"run_id={run.run_id}" / "task_id=handle" / "attempt=1.log"
    task_log.parent.mkdir(parents=True, exist_ok=True)
    task_log.write_text(f'{{"event": "handling {email}"}}\n')
    return dag_id, run.run_id, email


def test_cleanup_removes_an_erasure_request_from_metadata_and_logs(
    probe_run: tuple[str, str, str], db_url: str, tmp_path: Path
) -> None:
    from lethe.db import transaction
    from lethe.ops import demo
    from lethe.ops.logs import log_folder

    dag_id, run_id, email = probe_run
    # Another DAG's log mentioning the same address is not Lethe's to delete.
    foreign = log_folder() / "dag_id=someone_elses_dag" / "run_id=r1" / "task_id=t" / "attempt=1.log"
    foreign.parent.mkdir(parents=True, exist_ok=True)
    foreign.write_text(email)

    seeded = tables_containing(email)
    assert {"dag_run", "xcom", "rendered_task_instance_fields", "log"} <= set(seeded), seeded
    assert len(files_containing(log_folder(), email)) == 2

    run_dag(
        "airflow_metadata_cleanup",
        conf={"erasure_dag_ids": [dag_id], "dag_ids": [dag_id], "erasure_conf_retention": "PT0S"},
    )

    assert tables_containing(email) == {}
    assert files_containing(log_folder(), email) == [foreign]
    # The run itself is kept (history of what ran) until the retention clock; only its request went.
    kept = rows("SELECT conf, state FROM dag_run WHERE dag_id = :d AND run_id = :r", d=dag_id, r=run_id)
    assert len(kept) == 1 and kept[0][1] == "success"
    assert json.loads(kept[0][0]) in ({}, None) if isinstance(kept[0][0], str) else kept[0][0] in ({}, None)

    with transaction(db_url) as cur:
        cur.execute("SELECT payload::text FROM ledger WHERE kind = 'airflow_metadata_cleanup' ORDER BY entry_id")
        entries = [r[0] for r in cur.fetchall()]
    assert len(entries) == 1 and email not in entries[0]
    forgotten = json.loads(entries[0])["erasure_requests"]
    # Audit entries: the trigger's, plus the task events dag.test records for the probe's run.
    assert forgotten.pop("audit_entries") >= 1
    assert forgotten == {"runs": 1, "confs": 1, "xcoms": 1, "rendered_fields": 1, "log_files": 1}
    lines = demo.summary(db_url, "")
    assert "1 run confs" in lines[0] and email not in "\n".join(lines)


def test_cleanup_purges_runs_past_retention_and_is_idempotent(probe_run: tuple[str, str, str], db_url: str) -> None:
    dag_id, _, email = probe_run
    conf = {"erasure_dag_ids": [], "dag_ids": [dag_id], "retention": "PT0S"}

    run_dag("airflow_metadata_cleanup", conf={**conf, "dry_run": True})
    assert rows("SELECT count(*) FROM dag_run WHERE dag_id = :d", d=dag_id)[0][0] == 1, "a dry run changes nothing"

    run_dag("airflow_metadata_cleanup", conf=conf, logical_date=datetime.now(UTC))
    for table in ("dag_run", "task_instance", "xcom", "rendered_task_instance_fields", "log"):
        assert rows(f"SELECT count(*) FROM {table} WHERE dag_id = :d", d=dag_id)[0][0] == 0, table  # noqa: S608
    assert tables_containing(email) == {}

    run_dag("airflow_metadata_cleanup", conf=conf)  # nothing left: a rerun succeeds and removes nothing
    from lethe.db import transaction

    with transaction(db_url) as cur:
        cur.execute("SELECT payload FROM ledger WHERE kind = 'airflow_metadata_cleanup' ORDER BY entry_id")
        payloads = [r[0] for r in cur.fetchall()]
    assert [p["dry_run"] for p in payloads] == [True, False, False]
    assert payloads[0]["expired"]["dag_run_rows"] == 1 and payloads[1]["expired"]["dag_run_rows"] == 1
    assert payloads[1]["expired"]["log_files"] == 1
    assert all(v == 0 for v in payloads[2]["expired"].values())
