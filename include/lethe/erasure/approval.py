"""The human approval of an erasure: Airflow's ApprovalOperator, answered per request by lethe.erasure.tasks.decide.

- Asks only when a request of the run waits for approval (`require_approval` stored on the request,
  so batch runs honour it); otherwise it returns at once.
- The screen shows the plan's counts per request and table (no identifier), not a pointer to an XCom.
- Respondents: the run's `approvers` param, else LETHE_ERASURE_APPROVERS (comma-separated Airflow
  user ids); the requesters of the run's requests are left out. Unset, anyone allowed to respond to
  the DAG's required actions may answer, but an answer from the requester never approves their own
  request (it goes back to the queue, with an alert).
- Times out after the run's `approval_timeout_hours` (default 72): the requests go back to the queue
  with an alert, nothing is erased. Reject closes them for good (rejected, identifier forgotten).
- The task succeeds whatever the answer; the erase task erases only the approved requests.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator, HITLOperator

APPROVERS_ENV = "LETHE_ERASURE_APPROVERS"


def respondents(params: dict[str, Any]) -> list[str]:
    """Named respondents: the run's `approvers`, else LETHE_ERASURE_APPROVERS; empty means not restricted."""
    given = params.get("approvers") or []
    if isinstance(given, str):
        given = given.split(",")
    names = [str(n).strip() for n in given if str(n).strip()]
    if not names:
        names = [n.strip() for n in os.environ.get(APPROVERS_ENV, "").split(",") if n.strip()]
    return sorted(set(names))


class ErasureApproval(ApprovalOperator):
    """Approve or reject the erasure requests of this run that require approval."""

    def __init__(self, *, default_timeout: timedelta, **kwargs: Any) -> None:
        super().__init__(
            subject="Approve erasure requests of subject_erasure run {{ run_id }}",
            body="Filled in when the run asks: the plan's counts per request and table.",
            response_timeout=default_timeout,
            **kwargs,
        )

    def execute(self, context: Any) -> Any:
        from lethe.connections import primary_url
        from lethe.erasure import tasks

        run_id = context["run_id"]
        pending = tasks.awaiting_approval(run_id, primary_url())
        if not pending:
            self.log.info("no request of this run waits for approval")
            return {"asked": 0}
        params = context["params"]
        hours = params.get("approval_timeout_hours")
        if hours:
            self.response_timeout = timedelta(hours=float(hours))
        named = respondents(params)
        requesters = {p["requested_by"] for p in pending if p["requested_by"]}
        allowed = [n for n in named if n not in requesters]
        if named and not allowed:
            return {"asked": len(pending), **tasks.decide(run_id, primary_url(), "no_respondent", None)}
        self.assigned_users = [{"id": n, "name": n} for n in allowed] or None
        self.subject = f"Approve {len(pending)} erasure request(s) of subject_erasure run {run_id}"
        self.body = tasks.approval_body(pending)
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        from lethe.connections import primary_url
        from lethe.erasure import tasks

        run_id = context["run_id"]
        if "error" in event and event.get("error_type") == "timeout":
            self.log.warning("no answer within the approval timeout: the requests go back to the queue")
            return {"decision": "timeout", **tasks.decide(run_id, primary_url(), "timeout", None)}
        # HITLOperator's checks and payload, without ApprovalOperator's skipping of downstream tasks:
        # requests of this run that needed no approval are still erased; rejected ones are closed here.
        answer = HITLOperator.execute_complete(self, context=context, event=event)
        decision = answer["chosen_options"][0]
        counts = tasks.decide(run_id, primary_url(), decision, answer.get("responded_by_user"))
        return {"decision": decision, **counts}
