"""subject_erasure: erase one person everywhere on request, or the queued requests nightly."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import Asset, Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException
from lethe.assets import ERASURE_TOMBSTONES_URI
from lethe.dag_defaults import APPROVAL_TIMEOUT, APPROVAL_TIMEOUT_MAX, ERASURE_RUN_TIMEOUT, default_args
from lethe.erasure.approval import APPROVERS_ENV, ErasureApproval
from lethe.erasure.form import IDENTIFIER_HELP, IDENTIFIER_KINDS
from lethe.erasure.notify import ErasureAlert
from lethe.processors.workflow import retry_args as processor_retry_args

DOC = """
### subject_erasure

Erases one person from the primary database, as the privacy policy's "removal on request" asks,
and leaves the proof: a keyed-pseudonym tombstone, a ledger entry and a certificate
(`certificates/<request_id>.json` and `.md` in the evidence bucket).

**Trigger with config** (the form): identifier kind and identifier, a reference, a reason.
**Dry run is on by default** for a triggered run, in every mode (one identifier, a named request,
or the queue): the run then only plans and reports counts per table, and changes nothing. Untick
it to erase. Triggered with no identifier (and on the @daily schedule, which always erases), the
run processes the queued requests in `erasure_requests`. `lethe erasure submit` and the compliance
page's form queue a request and trigger a run with its `request_id` (a conf without `dry_run` then
follows the request's own dry-run choice).

**Lifecycle** (lethe.erasure.lifecycle): pending -> planned -> awaiting_approval -> approved |
rejected -> erasing -> erased -> verified -> certified, or held, failed, no_data. Each request
moves on its own: one failing request is marked failed (its reason, never an identifier, in
`detail->>'error'`) and the others complete; the next run resumes it, and resumes any request a
dead run left mid-way (one left `erasing` by a killed `erase` task even while Airflow still calls
that run running: the task's PostgreSQL lock went with it). A batch's `register` names each open
request another run holds (run, since when, why); a run naming such a request fails saying so.
A held request is planned again by every batch run until its hold is released.

**Approval**: a request registered with `require_approval` (stored on the request, honoured by
batch runs too) waits in `approve` for a human. The screen shows the plan's counts. Respondents:
the `approvers` param, else the LETHE_ERASURE_APPROVERS environment variable (comma-separated
Airflow user ids); the requester never approves their own request. Reject closes the request for
good (identifier forgotten, never erased). No answer within `approval_timeout_hours` (default 72):
back to the queue with an alert, nothing erased.

Tasks: `register` (the raw identifier goes into erasure_requests; only ids and counts travel on),
`plan`, `approve`, `erase` (one transaction per chunk, verified before commit, emits the
erasure_tombstones asset), `verify`, `processors` / `reach_processor` (one mapped task per
processor of the policy, with retries and backoff; a processor still down keeps the request
open), `certify` (certificate with every processor's receipt, then the identifier is forgotten),
`after_holds` (batch runs: a mention of an erased person in the row of someone under a legal
hold is left for the hold; once the hold is released it is masked, and the request's record and
certificate say so), `deadlines` (alerts on overdue or failed requests, releases the run's
requests, fails the run when one of its requests failed). Scheduled runs also send objections:
`objection_processors` / `reach_processor_for_objections` (docs/processors.md).

**Reading the certificate**: open `certificates/<request_id>.md` in the evidence bucket (the
request id is returned by the `register` task of a form run, printed by `lethe erasure submit`,
and kept in `erasure_requests`). It lists every
table with the rows deleted or pseudonymised, what was kept and under which legal basis (tax
records: legal obligation), the data-quality checks that passed, and one line per backup region
that `backup_erasure_propagation` turns from `pending` to `applied`. It holds no raw identifier,
only the keyed pseudonym and the request reference.

**When it fails**: nothing half-done is committed. `erasure_requests.detail->>'error'` names
the step and error class of each failed request. Fix the cause and trigger a run without an
identifier (or wait for the nightly batch): it resumes the request from where it stopped.
See docs/erasure.md.
"""


@dag(
    dag_id="subject_erasure",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    # A run waiting for an approval must not stop the queue: runs claim disjoint requests.
    max_active_runs=3,
    doc_md=DOC,
    tags=["lethe", "privacy", "erasure"],
    default_args=default_args(retries=1, on_failure=ErasureAlert()),
    dagrun_timeout=ERASURE_RUN_TIMEOUT,
    params={
        "identifier_kind": Param(
            "email",
            type="string",
            enum=list(IDENTIFIER_KINDS),
            title="Identifier kind",
            description="Which identifier of the person you give below.",
            values_display={"user_id": "User id", "email": "Email", "phone": "Phone", "username": "Username"},
        ),
        # No pattern or length in the schema: Airflow's validation error quotes the rejected value into the
        # log. The kind's format is checked by `register`, whose message names the rule, never the value.
        "identifier": Param(
            None,
            type=["null", "string"],
            title="Identifier",
            description=IDENTIFIER_HELP,
        ),
        # Optional (null allowed): a batch run over the queued requests has no one reference or reason.
        "request_reference": Param(
            None,
            type=["null", "string"],
            maxLength=200,
            title="Request reference",
            description="Your ticket or case number (shown on the certificate). Optional.",
        ),
        "reason": Param(
            None,
            type=["null", "string"],
            maxLength=500,
            title="Reason",
            description="Why the person asked. Optional.",
        ),
        "dry_run": Param(
            True,
            type="boolean",
            title="Dry run",
            description="On by default: plan and report counts only, change nothing (in every mode: one person, "
            "a named request, or the queue). Untick to erase. Scheduled runs always erase the queue.",
        ),
        "require_approval": Param(
            False,
            type="boolean",
            title="Require approval",
            description="Stored on the request: no run erases it before a human other than you approves.",
        ),
        "approval_timeout_hours": Param(
            int(APPROVAL_TIMEOUT.total_seconds() // 3600),
            type="integer",
            minimum=1,
            maximum=int(APPROVAL_TIMEOUT_MAX.total_seconds() // 3600),
            title="Approval timeout (hours)",
            description="Unanswered this long, the requests go back to the queue with an alert; nothing is erased.",
        ),
        "approvers": Param(
            [],
            type="array",
            items={"type": "string"},
            title="Approvers",
            description=f"Airflow user ids who may approve (default: {APPROVERS_ENV}); never the requester.",
        ),
        "request_id": Param(
            None,
            type=["null", "string"],
            title="Request id",
            description="Process this queued request (set by `lethe erasure submit`).",
        ),
        "batch_size": Param(
            10_000,
            type="integer",
            minimum=1,
            maximum=100_000,
            title="Batch size",
            description="Queued requests taken by one run without an identifier.",
        ),
    },
)
def subject_erasure() -> None:
    @task
    def register() -> dict[str, Any]:
        from lethe.connections import primary_url
        from lethe.erasure import tasks

        try:
            return tasks.register_run(get_current_context(), primary_url())
        except ValueError as exc:
            # Bad input, or a named request another run holds (the message says which run, since when):
            # retrying cannot help. The message names the rule, the request and the run, never the value.
            raise AirflowFailException(str(exc)) from None

    @task
    def plan(registered: Any) -> dict[str, Any]:
        from lethe.connections import primary_url, pseudonym_key
        from lethe.erasure import tasks

        return tasks.plan_run(get_current_context()["run_id"], primary_url(), pseudonym_key(), registered)

    approve = ErasureApproval(task_id="approve", default_timeout=APPROVAL_TIMEOUT, retries=0)  # a retry would ask again

    @task(outlets=[Asset(ERASURE_TOMBSTONES_URI)])
    def erase(registered: Any) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException
        from lethe.connections import primary_url, pseudonym_key
        from lethe.erasure import tasks

        if registered.get("dry_run"):
            raise AirflowSkipException("dry run: nothing is erased")
        return tasks.erase_run(get_current_context()["run_id"], primary_url(), pseudonym_key())

    @task
    def verify(erased: Any) -> dict[str, Any]:
        from lethe.connections import primary_url
        from lethe.erasure import tasks

        return tasks.verify_run(get_current_context()["run_id"], primary_url())

    @task(trigger_rule="none_failed")
    def processors() -> list[str]:
        from lethe.policy import load_policy
        from lethe.processors import workflow

        return workflow.erasure_targets(load_policy())

    @task(trigger_rule="none_failed", map_index_template="{{ processor_name }}", **processor_retry_args())
    def reach_processor(processor: str) -> dict[str, Any]:
        from lethe.connections import primary_url, processor_credentials
        from lethe.policy import load_policy
        from lethe.processors import workflow

        ctx = get_current_context()
        ctx["processor_name"] = processor  # type: ignore[typeddict-unknown-key]
        ti = ctx["ti"]
        return workflow.erase_in(
            processor,
            ctx["run_id"],
            primary_url(),
            load_policy(),
            processor_credentials,
            final_try=ti.try_number > ti.max_tries,  # type: ignore[attr-defined]
        )

    @task
    def objection_processors() -> list[str]:
        from airflow.sdk.exceptions import AirflowSkipException
        from lethe.erasure import tasks
        from lethe.policy import load_policy
        from lethe.processors import workflow

        ctx = get_current_context()
        params = ctx["params"]
        if params.get("identifier") or params.get("request_id"):
            raise AirflowSkipException("objections are sent by the scheduled (batch) runs")
        if tasks.is_dry(params, ctx["dag_run"]):
            raise AirflowSkipException("dry run: no objection is sent")
        return workflow.objection_targets(load_policy())

    @task(map_index_template="{{ processor_name }}", **processor_retry_args())
    def reach_processor_for_objections(processor: str) -> dict[str, Any]:
        from lethe.connections import primary_url, processor_credentials
        from lethe.policy import load_policy
        from lethe.processors import workflow

        ctx = get_current_context()
        ctx["processor_name"] = processor  # type: ignore[typeddict-unknown-key]
        ti = ctx["ti"]
        final_try = ti.try_number > ti.max_tries  # type: ignore[attr-defined]
        return workflow.object_in(processor, primary_url(), load_policy(), processor_credentials, final_try=final_try)

    @task(trigger_rule="none_failed")
    def certify(verified: Any) -> dict[str, Any]:
        from lethe.config import PRIMARY_REGION
        from lethe.connections import primary_url, s3_endpoint_url
        from lethe.erasure import tasks
        from lethe.storage import s3_client

        s3 = s3_client(PRIMARY_REGION, s3_endpoint_url())
        return tasks.certify_run(get_current_context()["run_id"], primary_url(), s3)

    @task
    def after_holds() -> dict[str, int]:
        """Mentions an erasure left in a held person's rows, masked once that hold is released."""
        from airflow.sdk.exceptions import AirflowSkipException
        from lethe.config import PRIMARY_REGION
        from lethe.connections import primary_url, pseudonym_key, s3_endpoint_url
        from lethe.erasure import after_hold, tasks
        from lethe.policy import load_policy
        from lethe.storage import s3_client

        ctx = get_current_context()
        params = ctx["params"]
        if params.get("identifier") or params.get("request_id"):
            raise AirflowSkipException("released holds are looked at by the batch runs")
        if tasks.is_dry(params, ctx["dag_run"]):
            raise AirflowSkipException("dry run: nothing is masked")
        s3 = s3_client(PRIMARY_REGION, s3_endpoint_url())
        return after_hold.finish(primary_url(), load_policy(), pseudonym_key(), s3)

    @task(trigger_rule="all_done")
    def deadlines() -> dict[str, Any]:
        from lethe.connections import primary_url
        from lethe.erasure import tasks

        try:
            return tasks.close_run(get_current_context()["run_id"], primary_url())
        except tasks.RequestsFailed as exc:  # each one marked failed with its reason; the next run resumes them
            raise AirflowFailException(str(exc)) from None

    @task(trigger_rule="one_failed")
    def run_failed() -> None:
        # deadlines runs whatever happened; without this leaf a failed erasure would leave the run green.
        raise AirflowFailException("a task of this run failed: see its log and erasure_requests.detail")

    registered = register()
    planned = plan(registered)
    planned >> approve
    erased = erase(registered)
    approve >> erased
    verified = verify(erased)
    targets = processors()
    verified >> targets
    reached = reach_processor.expand(processor=targets)
    certified = certify(verified)
    reached >> certified
    objected = reach_processor_for_objections.expand(processor=objection_processors())
    released = after_holds()
    [certified, released] >> deadlines()
    [registered, planned, approve, erased, verified, targets, reached, certified, objected, released] >> run_failed()


subject_erasure()
