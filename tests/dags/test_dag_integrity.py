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
