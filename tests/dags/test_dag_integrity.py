"""Every DAG file imports cleanly and carries what an operator needs to run it."""

from __future__ import annotations

from pathlib import Path

import pytest
from lethe.airflow_env import DAGS_FOLDER

pytestmark = pytest.mark.dags

CONTRACT_DAG_IDS = {
    "retention_nightly",
    "subject_erasure",
    "backup_nightly",
    "backup_erasure_propagation",
    "usage_sharing",
    "compliance_audit",
    "airflow_metadata_cleanup",
}


@pytest.fixture(scope="module")
def dagbag(airflow_home: Path):  # type: ignore[no-untyped-def]
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_FOLDER))


def test_every_dag_file_imports(dagbag) -> None:  # type: ignore[no-untyped-def]
    assert dagbag.import_errors == {}
    files = {p.stem for p in DAGS_FOLDER.glob("*.py")}
    assert files, "no DAG files"
    assert files <= CONTRACT_DAG_IDS, f"DAG files outside the contract: {files - CONTRACT_DAG_IDS}"
    assert set(dagbag.dag_ids) == files


def test_every_dag_is_documented_owned_and_retried(dagbag) -> None:  # type: ignore[no-untyped-def]
    for dag_id, dag in dagbag.dags.items():
        assert dag.doc_md and len(dag.doc_md) > 200, f"{dag_id}: doc_md missing or too short"
        assert dag.tags, f"{dag_id}: no tags"
        # Retries by default; a task may opt out where a retry cannot help (a verdict, a human approval).
        assert (dag.default_args or {}).get("retries", 0) >= 1, f"{dag_id}: no retries in default_args"
        for task in dag.tasks:
            assert task.owner and task.owner != "airflow", f"{dag_id}.{task.task_id}: no owner"
            assert task.on_failure_callback, f"{dag_id}.{task.task_id}: a failure would alert nobody"


def test_every_task_and_every_run_is_bounded_and_takes_a_slot_of_the_primary_pool(dagbag) -> None:  # type: ignore[no-untyped-def]
    from datetime import timedelta

    for dag_id, dag in dagbag.dags.items():
        assert dag.dagrun_timeout, f"{dag_id}: a run could last for ever"
        for task in dag.tasks:
            where = f"{dag_id}.{task.task_id}"
            # A mapped task carries them in the arguments each mapped instance is built from.
            timeout = task.execution_timeout or task.partial_kwargs.get("execution_timeout")
            assert isinstance(timeout, timedelta) and timeout > timedelta(0), f"{where}: no execution_timeout"
            assert timeout <= dag.dagrun_timeout, f"{where}: its timeout outlasts the run's"
            if hasattr(task, "response_timeout"):  # a human approval: its wait is bounded apart
                assert task.response_timeout and task.response_timeout < dag.dagrun_timeout, f"{where}: waits for ever"
            pool = task.partial_kwargs.get("pool") if task.is_mapped else task.pool
            assert pool == "lethe_primary", f"{where}: runs outside the primary's pool ({pool})"


def test_every_task_checks_the_policy_before_it_acts(dagbag) -> None:  # type: ignore[no-untyped-def]
    from lethe.policy.check import check_before_acting

    for dag_id, dag in dagbag.dags.items():
        for task in dag.tasks:
            # A mapped task carries it in the arguments each mapped instance is built from.
            hook = getattr(task, "_pre_execute_hook", None) or task.partial_kwargs.get("pre_execute")
            assert hook is check_before_acting, f"{dag_id}.{task.task_id}: acts unchecked"


def test_a_policy_that_cannot_be_applied_fails_the_run_at_once_without_retries(
    db_url: str, airflow_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg2
    from lethe.config import DEFAULT_POLICY_FILE
    from lethe.dagrun import load_dag

    broken = tmp_path / "policy.yaml"
    # password_hash is NOT NULL: this rule could only fail half-way through the night.
    shipped = DEFAULT_POLICY_FILE.read_text()
    assert "          password_hash: redact\n" in shipped
    broken.write_text(shipped.replace("          password_hash: redact\n", '          password_hash: "null"\n', 1))
    monkeypatch.setenv("LETHE_POLICY_FILE", str(broken))
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM ledger")
        ledger_before = cur.fetchone()[0]
    run = load_dag("retention_nightly").test()
    assert str(getattr(run.state, "value", run.state)) == "failed"
    plan = next(ti for ti in run.get_task_instances() if ti.task_id == "plan")
    assert str(getattr(plan.state, "value", plan.state)) == "failed"  # not up_for_retry
    assert plan.try_number == 1
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM ledger")
        assert cur.fetchone()[0] == ledger_before, "a run of a broken policy recorded work"
