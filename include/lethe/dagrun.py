"""Run a Lethe DAG in-process with `dag.test()` (the demo and the DAG tests).

Call lethe.airflow_env.configure() first: Airflow reads its configuration on import.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from lethe.airflow_env import DAGS_FOLDER


class DagRunFailed(RuntimeError):
    """A DAG run ended in a state other than success; names the failed tasks."""


def load_dag(dag_id: str) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    path = DAGS_FOLDER / f"{dag_id}.py"
    if not path.exists():
        raise FileNotFoundError(f"no DAG file {path}")
    bag = DagBag(dag_folder=str(path))
    if bag.import_errors:
        raise DagRunFailed(f"{path} does not import: {bag.import_errors}")
    return bag.dags[dag_id]


def run_dag(dag_id: str, conf: dict[str, Any] | None = None, logical_date: datetime | None = None) -> Any:
    """Run the DAG to completion; return the DagRun, or raise DagRunFailed naming the failed tasks."""
    dag = load_dag(dag_id)
    kwargs: dict[str, Any] = {"run_conf": conf or {}}
    if logical_date is not None:
        kwargs["logical_date"] = logical_date
    run = dag.test(**kwargs)
    state = str(getattr(run.state, "value", run.state))
    if state != "success":
        failed = sorted(
            ti.task_id + (f"[{ti.map_index}]" if ti.map_index >= 0 else "")
            for ti in run.get_task_instances()
            if str(getattr(ti.state, "value", ti.state)) not in ("success", "skipped")
        )
        raise DagRunFailed(f"{dag_id} ended {state}; tasks not successful: {', '.join(failed) or 'none recorded'}")
    return run
