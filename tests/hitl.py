"""Answer an Airflow Human-in-the-loop task from outside a running `dag.test()`, as a person would.

dag.test() keeps a HITL task parked in awaiting_input until something outside resolves it: the
Required Actions API (a person's answer) or the scheduler's timeout sweep. `Responder` runs in a
thread beside the DAG run, waits for the task to park, records what it was asked (subject, body,
assigned users) and then either answers it the way the API does (records the response on the
hitl_detail row and resumes the task with it) or lets the real scheduler sweep time it out
(after moving the task's deadline into the past: no test waits for wall-clock time).
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any


class Responder:
    def __init__(
        self,
        dag_id: str,
        task_id: str,
        *,
        option: str | None = None,
        user: str = "approver",
        timeout: bool = False,
        wait_s: float = 1800,  # a loaded machine: the run may take minutes to reach the task
    ) -> None:
        self.dag_id, self.task_id = dag_id, task_id
        self.option, self.user, self.timeout, self.wait_s = option, user, timeout, wait_s
        self.asked: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Responder:
        # Import everything both threads need here, before the thread starts: two threads importing
        # Airflow's models at once deadlock on Python's import locks.
        import airflow.dag_processing.dagbag
        import airflow.jobs.scheduler_job_runner
        import airflow.models
        import airflow.models.hitl
        import airflow.models.trigger
        import airflow.triggers.base

        airflow.models.import_all_models()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(timeout=self.wait_s + 30)
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            deadline = time.monotonic() + self.wait_s
            while time.monotonic() < deadline:
                if self._answer():
                    return
                time.sleep(1)
        except BaseException as exc:  # surfaced by __exit__
            self.error = exc

    def _answer(self) -> bool:
        from airflow._shared.timezones import timezone
        from airflow.models.hitl import HITLDetail
        from airflow.models.taskinstance import TaskInstance
        from airflow.models.trigger import handle_event_submit
        from airflow.triggers.base import TriggerEvent
        from airflow.utils.session import create_session
        from airflow.utils.state import TaskInstanceState
        from sqlalchemy import select

        with create_session() as session:
            ti = session.scalars(
                select(TaskInstance).where(
                    TaskInstance.dag_id == self.dag_id,
                    TaskInstance.task_id == self.task_id,
                    TaskInstance.state == TaskInstanceState.AWAITING_INPUT,
                )
            ).first()
            if ti is None:
                return False
            detail = session.get(HITLDetail, ti.id)
            if detail is None:
                return False
            self.asked = {
                "subject": detail.subject,
                "body": detail.body,
                "assigned_users": [dict(u) for u in detail.assigned_users],
                "trigger_timeout": ti.trigger_timeout,
                "run_id": ti.run_id,
            }
            if self.timeout:
                ti.trigger_timeout = timezone.utcnow() - timedelta(seconds=1)
                session.commit()
            else:
                detail.responded_by = {"id": self.user, "name": self.user}
                detail.responded_at = timezone.utcnow()
                detail.chosen_options = [self.option]
                detail.params_input = {}
                session.add(detail)
                handle_event_submit(TriggerEvent(detail.as_resume_event_payload()), task_instance=ti, session=session)
                session.commit()
                return True
        from airflow.jobs.job import Job
        from airflow.jobs.scheduler_job_runner import SchedulerJobRunner

        SchedulerJobRunner(job=Job()).check_awaiting_input_timeouts()
        return True
