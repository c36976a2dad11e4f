"""The subject_erasure DAG's task callables (the DAG file only wires them).

register -> plan -> approve -> erase -> verify -> certify -> close_run. Each step takes the
requests this run holds in the state the step starts from (lethe.erasure.lifecycle) and moves each
one on its own: a request that fails is marked failed (with a reason that holds no identifier) and
the others go on. Tasks pass counts through XCom; requests are found again by the run's claim, so
neither the raw identifier nor a list of 10,000 request ids travels through XCom.

A dry run (the run's `dry_run`) changes nothing in any mode: the named or queued requests are
planned in a transaction that is rolled back, and no request is claimed or moved. A request
registered as a dry run (`lethe erasure submit` without --execute, or the form with dry run on)
is a preview: planned, its counts stored, closed as dry_run.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import psycopg2.extensions
from lethe.db import connect, error_objects, transaction
from lethe.erasure import certificate, execute, lifecycle, plan, request, vacuum, verify
from lethe.erasure.discovery import read_graph
from lethe.erasure.plan import Work
from lethe.policy import Policy, load_policy
from lethe.processors import workflow as processor_workflow
from lethe.relations import key_folds_case

log = logging.getLogger(__name__)

CHUNK = 200  # people per transaction: big enough for set-based SQL, small enough to retry cheaply
ERASED_OUTCOMES = ("erased", "same_subject", "already_erased", "no_data")


def _reason(step: str, exc: BaseException) -> str:
    # The class name, and the message only when it is one of Lethe's own (names tables and checks, never values):
    # a database error's text can quote a row of the person, so it gives only the names it carries.
    own = type(exc).__name__ in ("DataQualityError", "ErasureGraphError", "ErasureSideEffectError", "TransitionRefused")
    if isinstance(exc, psycopg2.Error) and error_objects(exc):
        return f"{step}: {type(exc).__name__} ({error_objects(exc)})"
    return f"{step}: {type(exc).__name__}" + (f": {exc}" if own else "")


def is_dry(params: Any, dag_run: Any) -> bool:
    """Whether the run changes nothing. A triggered run honours its `dry_run` in every mode (the trigger
    form always sends it). A scheduled run (nobody ticked anything) erases; so does a run naming a request
    without saying (the compliance page's form): the request's own dry_run flag, chosen when it was
    registered, then decides whether it is a preview."""
    if str(getattr(dag_run.run_type, "value", dag_run.run_type)) == "scheduled":
        return False
    conf = getattr(dag_run, "conf", None) or {}
    if "dry_run" in conf:
        return bool(conf["dry_run"])
    if params.get("request_id"):
        return False
    return bool(params.get("dry_run"))


def register_run(ctx: Any, db_url: str) -> dict[str, Any]:
    """`register` from an Airflow task's context: the requester is the user who triggered the run."""
    params = {**dict(ctx["params"]), "dry_run": is_dry(ctx["params"], ctx["dag_run"])}
    ti = ctx["ti"]

    def alive(run_id: str) -> bool:
        try:
            return ti.get_dagrun_state(dag_id=ti.dag_id, run_id=run_id) in ("queued", "running")  # type: ignore[no-any-return]
        except Exception:  # gone from Airflow's metadata: not alive
            return False

    requester = getattr(ctx["dag_run"], "triggering_user_name", None)
    return register(params, ctx["run_id"], db_url, requested_by=requester, alive=alive)


def register(
    params: dict[str, Any],
    run_id: str,
    db_url: str,
    *,
    requested_by: str | None = None,
    alive: Callable[[str], bool] = lambda _run: False,
) -> dict[str, Any]:
    """Turn the trigger into claimed requests; return the mode and counts (no identifier).

    `alive(run_id)` tells whether another run holding claims is still going (Airflow knows);
    the requests of dead runs are taken over.
    """
    kind = params.get("identifier_kind") or "email"
    identifier = params.get("identifier")
    named = params.get("request_id")
    dry = bool(params.get("dry_run"))
    with transaction(db_url) as cur:
        dead = lifecycle.dead_runs(cur, run_id, alive)
        # Airflow may call a run alive whose erase task died mid-erasure: its `erasing` requests are taken over.
        abandoned = lifecycle.abandoned_runs(cur, run_id, dead)
        if named:
            if dry:  # plan it, claim nothing
                cur.execute("SELECT status FROM erasure_requests WHERE request_id = %s", (str(named),))
                row = cur.fetchone()
                if row is None:
                    raise ValueError(f"no erasure request {named} in erasure_requests")
                return {"mode": "request", "dry_run": True, "request_id": str(named), "status": row[0]}
            status, held = lifecycle.claim_one(cur, str(named), run_id, dead, abandoned)
            if status is None:
                raise ValueError(f"no erasure request {named} in erasure_requests")
            if status == lifecycle.REJECTED:
                raise ValueError(f"erasure request {named} was rejected by its approver: it is never erased")
            if not held:
                _refuse_held(cur, str(named), run_id, dead, abandoned)
            return {"mode": "request", "dry_run": False, "claimed": int(held), "status": status}
        if identifier not in (None, ""):
            request_id, created = request.register(
                cur,
                kind,
                identifier,
                reference=params.get("request_reference") or None,
                reason=params.get("reason") or None,
                dry_run=dry,
                request_id=request.request_id_for_run(run_id),
                require_approval=bool(params.get("require_approval")),
                requested_by=requested_by,
            )
            status, held = lifecycle.claim_one(cur, request_id, run_id, dead, abandoned)
            if not held:
                _refuse_held(cur, request_id, run_id, dead, abandoned)
            return {
                "mode": "form",
                "dry_run": False,
                "claimed": int(held),
                "created": created,
                "request_id": request_id,
            }
        limit = int(params.get("batch_size") or 10_000)
        if dry:
            ids = lifecycle.queued(cur, limit, [])
            return {"mode": "batch", "dry_run": True, "queued": len(ids), "batch_size": limit}
        n = lifecycle.claim_batch(cur, run_id, limit, dead, abandoned)
        total, held_elsewhere = lifecycle.not_taken(cur, run_id, dead, abandoned)
    for h in held_elsewhere:  # never silent: an open request this run leaves is named, with its holder and why
        log.warning(
            "erasure request %s (%s) not taken: claimed by run %s since %s; %s",
            h["request_id"],
            h["status"],
            h["claimed_by"],
            h["claimed_since"],
            h["why"],
        )
    if total > len(held_elsewhere):
        log.warning("and %d more open erasure request(s) held by other runs", total - len(held_elsewhere))
    return {"mode": "batch", "dry_run": False, "claimed": n, "held_by_other_runs": total, "not_taken": held_elsewhere}


class RequestHeld(ValueError):
    """The named request is held by another run; names the request, its state, the run, since when and why."""


def _refuse_held(
    cur: psycopg2.extensions.cursor, request_id: str, run_id: str, dead: list[str], abandoned: list[str]
) -> None:
    """A run given one request that another run holds fails saying so, rather than succeed having done nothing."""
    _, held = lifecycle.not_taken(cur, run_id, dead, abandoned, request_id=request_id)
    if held:  # else it is closed: nothing is owed, the run has nothing to do
        h = held[0]
        raise RequestHeld(
            f"erasure request {request_id} ({h['status']}) is not taken by this run: claimed by run"
            f" {h['claimed_by']} since {h['claimed_since']}; {h['why']}"
        )


def _works(rows: list[dict[str, Any]]) -> list[Work]:
    return [Work(r["request_id"], r["kind"], r["identifier"]) for r in rows if r["identifier"]]


def _chunks(rows: list[dict[str, Any]], size: int = CHUNK) -> list[list[dict[str, Any]]]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def _plan_chunk(db_url: str, policy: Policy, key: bytes, chunk: list[dict[str, Any]]) -> list[Work]:
    """Plan in a transaction that is rolled back: the plan's temp tables go, nothing is written."""
    conn = connect(db_url)
    try:
        with conn.cursor() as cur:
            graph = read_graph(cur, policy)
            works = _works(chunk)
            plan.build(cur, policy, graph, key, works)
        conn.rollback()
        return works
    finally:
        conn.close()


def _planned(db_url: str, policy: Policy, key: bytes, chunk: list[dict[str, Any]], run_id: str) -> list[Work]:
    """Plan a chunk; when it fails, plan its requests one by one and mark the failing ones failed."""
    try:
        return _plan_chunk(db_url, policy, key, chunk)
    except Exception as exc:
        if len(chunk) == 1:
            with transaction(db_url) as cur:
                lifecycle.fail(cur, chunk[0]["request_id"], "plan", _reason("plan", exc))
            log.error("erasure request %s failed to plan: %s", chunk[0]["request_id"], type(exc).__name__)
            return []
    works: list[Work] = []
    for row in chunk:
        works += _planned(db_url, policy, key, [row], run_id)
    return works


def plan_run(
    run_id: str, db_url: str, key: bytes, registered: dict[str, Any], policy: Policy | None = None
) -> dict[str, Any]:
    """Plan every request of the run; move each to planned and then approved or awaiting approval.

    A held person's request becomes held (re-planned by every batch run until the hold is released);
    a preview request is closed as dry_run with its counts. In a dry run nothing is moved.
    """
    policy = policy or load_policy()
    dry = bool(registered.get("dry_run"))
    with transaction(db_url) as cur:
        if dry and registered.get("mode") == "request":
            rows = lifecycle.by_ids(cur, [registered["request_id"]])
        elif dry:  # what a batch would take now (requests no run holds), claiming none
            rows = lifecycle.by_ids(cur, lifecycle.queued(cur, int(registered.get("batch_size") or 10_000), []))
        else:
            rows = lifecycle.claimed(cur, run_id, lifecycle.QUEUED)
    rows = [r for r in rows if r["status"] in lifecycle.QUEUED or dry]
    outcomes: Counter[str] = Counter()
    states: Counter[str] = Counter()
    rows_total: Counter[str] = Counter()
    by_id = {r["request_id"]: r for r in rows}
    for chunk in _chunks(rows):
        works = _planned(db_url, policy, key, chunk, run_id)
        for w in works:
            outcomes[w.outcome] += 1
            rows_total.update(w.rows)
        if dry:
            continue
        with transaction(db_url) as cur:
            for w in works:
                states[_after_plan(cur, run_id, w, by_id[w.request_id])] += 1
    if not dry:
        with transaction(db_url) as cur:  # a request without an identifier cannot be planned (never expected)
            for r in rows:
                if not r["identifier"] and lifecycle.fail(cur, r["request_id"], "plan", "plan: no identifier"):
                    states[lifecycle.FAILED] += 1
    summary = {
        "requests": len(rows),
        "dry_run": dry,
        "outcomes": dict(outcomes),
        "states": dict(states),
        "rows": dict(rows_total),
    }
    log.info("erasure plan: %s", json.dumps(summary, sort_keys=True))
    return summary


def _after_plan(cur: psycopg2.extensions.cursor, run_id: str, w: Work, row: dict[str, Any]) -> str:
    """Move one planned request on; return its new state."""
    rid = w.request_id
    if row["dry_run"]:  # a preview: its counts are the answer, and it forgets the identifier
        lifecycle.move(
            cur, "preview", [rid], run_id=run_id, detail={**w.as_detail(), "dry_run": True}, pseudonym=w.pseudonym
        )
        return lifecycle.DRY_RUN
    if w.outcome == "held":
        lifecycle.move(cur, "hold", [rid], run_id=run_id, detail={**w.as_detail(), "plan": w.as_detail()})
        return lifecycle.HELD
    lifecycle.move(cur, "plan", [rid], run_id=run_id, detail={"plan": w.as_detail(), "error": None})
    if row["require_approval"] and w.outcome == "erased":
        lifecycle.move(cur, "ask_approval", [rid], run_id=run_id)
        return lifecycle.AWAITING_APPROVAL
    lifecycle.move(cur, "approve_unattended", [rid], run_id=run_id)
    return lifecycle.APPROVED


# --- approval ---------------------------------------------------------------------------------


def awaiting_approval(run_id: str, db_url: str) -> list[dict[str, Any]]:
    """The requests of this run waiting for a human: id, requester, planned counts (no identifier)."""
    with transaction(db_url) as cur:
        rows = lifecycle.claimed(cur, run_id, (lifecycle.AWAITING_APPROVAL,))
    return [
        {
            "request_id": r["request_id"],
            "requested_by": r["requested_by"],
            "kind": r["kind"],
            "plan": (r["detail"] or {}).get("plan") or {},
        }
        for r in rows
    ]


def approval_body(pending: list[dict[str, Any]]) -> str:
    """The approval screen: per request its planned rows per table and action, and the totals."""
    totals: Counter[str] = Counter()
    lines = [f"**{len(pending)} erasure request(s) wait for your decision.** Approve erases them; Reject closes them"]
    lines.append("for good (their identifier is forgotten and no run will erase them).\n")
    lines.append("| request | requested by | table | action | rows |")
    lines.append("| --- | --- | --- | --- | --- |")
    for p in pending:
        tables = p["plan"].get("tables") or {}
        for table, entry in tables.items():
            totals[table] += int(entry["rows"])
            lines.append(
                f"| {p['request_id']} | {p['requested_by'] or '?'} | {table} | {entry['action']} | {entry['rows']} |"
            )
        for column, n in (p["plan"].get("redactions") or {}).items():
            lines.append(f"| {p['request_id']} | {p['requested_by'] or '?'} | {column} | redact mention | {n} |")
    lines.append("\n**Totals:** " + (", ".join(f"{t} {n}" for t, n in sorted(totals.items())) or "no rows"))
    lines.append("\nThe person who asked for an erasure cannot approve it.")
    return "\n".join(lines)


def decide(run_id: str, db_url: str, decision: str, responder: dict[str, Any] | None) -> dict[str, int]:
    """Apply the approver's answer to every request of this run awaiting approval.

    Approve: approved, except a request the responder asked for (back to the queue, alert).
    Reject: rejected (identifier forgotten, never erased). Timeout: back to the queue, alert.
    """
    from lethe.erasure import notify

    names = {str(v) for v in (responder or {}).values() if v}
    counts: Counter[str] = Counter()
    with transaction(db_url) as cur:
        rows = lifecycle.claimed(cur, run_id, (lifecycle.AWAITING_APPROVAL,))
        for r in rows:
            rid = r["request_id"]
            if decision == "timeout":
                lifecycle.move(cur, "requeue", [rid], run_id=run_id, detail={"approval": "expired"})
                counts["expired"] += 1
            elif decision == "Reject":
                lifecycle.move(
                    cur, "reject", [rid], run_id=run_id, detail={"approval": "rejected", "approval_by": _who(responder)}
                )
                counts["rejected"] += 1
            elif decision == "no_respondent":
                lifecycle.move(cur, "requeue", [rid], run_id=run_id, detail={"approval": "no_respondent"})
                counts["no_respondent"] += 1
            elif decision == "Approve" and r["requested_by"] and r["requested_by"] in names:
                lifecycle.move(cur, "requeue", [rid], run_id=run_id, detail={"approval": "refused_own_request"})
                counts["refused_own_request"] += 1
            elif decision == "Approve":
                lifecycle.move(
                    cur,
                    "approve",
                    [rid],
                    run_id=run_id,
                    detail={"approval": "approved", "approval_by": _who(responder)},
                )
                counts["approved"] += 1
            else:
                raise ValueError(f"unknown approval decision {decision!r}")
    if counts["expired"]:
        notify.send(
            "erasure_approval_expired",
            f"{counts['expired']} erasure request(s) were not approved in time;"
            " they are back in the queue, nothing erased",
            dag_id="subject_erasure",
            run_id=run_id,
        )
    if counts["refused_own_request"]:
        notify.send(
            "erasure_self_approval",
            f"{counts['refused_own_request']} erasure request(s) were approved by their own requester; the approval was"
            " refused and they are back in the queue",
            dag_id="subject_erasure",
            run_id=run_id,
        )
    if counts["no_respondent"]:
        notify.send(
            "erasure_approval_expired",
            f"{counts['no_respondent']} erasure request(s) need approval but no named respondent other than"
            " the requester is configured (LETHE_ERASURE_APPROVERS or the run's `approvers`); back in the queue",
            dag_id="subject_erasure",
            run_id=run_id,
        )
    log.info("erasure approval: %s", json.dumps(dict(counts), sort_keys=True))
    return dict(counts)


def _who(responder: dict[str, Any] | None) -> str | None:
    return str(responder.get("name") or responder.get("id")) if responder else None


# --- erase, verify, certify --------------------------------------------------------------------


def _erase_chunk(db_url: str, policy: Policy, key: bytes, chunk: list[dict[str, Any]], run_id: str) -> Counter[str]:
    """One transaction: plan again under lock, execute, verify, tombstone, ledger, move to erased; all or nothing."""
    outcomes: Counter[str] = Counter()
    ids = [r["request_id"] for r in chunk]
    with transaction(db_url) as cur:
        # A killed worker's session would otherwise go on (holding these rows) until its statement ends; PostgreSQL
        # 14+ checks that the client is still there every 10 s and ends the session, rolling back, when it is not.
        cur.execute(
            "SELECT set_config('client_connection_check_interval', '10s', true)"
            " WHERE current_setting('server_version_num')::int >= 140000"
        )
        cur.execute("SELECT request_id FROM erasure_requests WHERE request_id = ANY(%s::uuid[]) FOR UPDATE", (ids,))
        graph = read_graph(cur, policy)
        works = _works(chunk)
        _lock_subjects(cur, policy, works)
        mentions = plan.build(cur, policy, graph, key, works)
        done, redacted = execute.apply(cur, policy, graph, works, mentions)
        targets = [w for w in works if w.outcome == "erased" and w.subject]
        checks: dict[str, Any] = {}
        if targets:
            planned: Counter[str] = Counter()
            executed: Counter[str] = Counter()
            for w in targets:
                assert w.subject is not None
                planned.update(w.rows)
                executed.update(done.get(w.subject.user_id, {}))
                for column, n in w.redactions.items():
                    planned[f"redacted:{column}"] += n
                for column, n in redacted.get(w.subject.user_id, {}).items():
                    executed[f"redacted:{column}"] += n
            people = [w.subject for w in targets if w.subject]
            checks = verify.in_transaction(cur, policy, graph, people, dict(planned), dict(executed))
        # Before the commit: the relations this transaction wrote, so only they are vacuumed after it.
        written = vacuum.written(cur, vacuum.touched(w.as_detail() for w in targets))
        execute.write_tombstones(cur, key, works, fold_case=key_folds_case(cur, policy))
        execute.record(cur, works, checks, written)
        processor_workflow.remember(cur, policy, works)  # before the rows holding the email are gone for good
        # A hold placed since the plan keeps the person: held, nothing of theirs was touched.
        lifecycle.move(cur, "hold", [w.request_id for w in works if w.outcome == "held"], run_id=run_id)
        lifecycle.move(cur, "erased", [w.request_id for w in works if w.outcome in ERASED_OUTCOMES], run_id=run_id)
        outcomes.update(w.outcome for w in works)
    return outcomes


def _lock_subjects(cur: psycopg2.extensions.cursor, policy: Policy, works: list[Work]) -> None:
    """Hold the people's subject rows so no new child row or legal hold slips in mid-erasure."""
    from lethe.erasure import discovery

    found = discovery.resolve(cur, policy, [(w.kind, w.identifier) for w in works])
    ids = sorted({p.user_id for p in found if p is not None})
    if ids:
        from lethe.relations import relation, subject_key_type
        from psycopg2 import sql

        cur.execute(
            sql.SQL("SELECT 1 FROM {} WHERE {} = ANY(%s::text[]::{}[]) FOR UPDATE").format(
                relation(policy.subject.table),
                sql.Identifier(policy.subject.key),
                sql.SQL(subject_key_type(cur, policy)),
            ),
            (ids,),
        )


def _erase_or_fail(
    db_url: str, policy: Policy, key: bytes, chunk: list[dict[str, Any]], run_id: str
) -> tuple[Counter[str], int]:
    try:
        return _erase_chunk(db_url, policy, key, chunk, run_id), 0
    except Exception as exc:
        if len(chunk) > 1:  # one bad request must not hold back the others: retry them one by one
            outcomes: Counter[str] = Counter()
            failed = 0
            for row in chunk:
                o, f = _erase_or_fail(db_url, policy, key, [row], run_id)
                outcomes += o
                failed += f
            return outcomes, failed
        with transaction(db_url) as cur:
            lifecycle.fail(cur, chunk[0]["request_id"], "erase", _reason("erase", exc))
        log.error("erasure request %s failed: %s", chunk[0]["request_id"], type(exc).__name__)
        return Counter(), 1


def erase_run(run_id: str, db_url: str, key: bytes, policy: Policy | None = None) -> dict[str, Any]:
    """Erase every approved request of the run (and resume the ones a dead run left erasing), chunk by chunk.

    Each chunk is first marked `erasing` in its own commit, so a crash inside the erasure's
    transaction (rolled back: nothing changed) leaves a state the next run resumes from.
    """
    policy = policy or load_policy()
    outcomes: Counter[str] = Counter()
    failed = 0
    # While this task lives its session holds the run's erase lock: a request it leaves `erasing` without the
    # lock held was left by a dead task, and the next run takes it over (lifecycle.abandoned_runs).
    with lifecycle.erase_lock(db_url, run_id):
        with transaction(db_url) as cur:
            rows = [
                r for r in lifecycle.claimed(cur, run_id, (lifecycle.APPROVED, lifecycle.ERASING)) if not r["dry_run"]
            ]
        for chunk in _chunks(rows):
            with transaction(db_url) as cur:
                lifecycle.move(cur, "start_erasing", [r["request_id"] for r in chunk], run_id=run_id)
            o, f = _erase_or_fail(db_url, policy, key, chunk, run_id)
            outcomes += o
            failed += f
    with transaction(db_url) as cur:  # after the commits: the old row versions of the people leave the pages
        changed = vacuum.targets(r["detail"] for r in lifecycle.claimed(cur, run_id, (lifecycle.ERASED,)))
    vacuumed = vacuum.vacuum(db_url, changed)
    summary = {"requests": len(rows), "outcomes": dict(outcomes), "failed": failed, "vacuumed": len(vacuumed)}
    log.info("erasure executed: %s", json.dumps(summary, sort_keys=True))
    return summary


def verify_run(run_id: str, db_url: str, policy: Policy | None = None) -> dict[str, Any]:
    """Checks after commit, per request: verified, or failed with the names of the checks that failed."""
    policy = policy or load_policy()
    with transaction(db_url) as cur:
        rows = lifecycle.claimed(cur, run_id, (lifecycle.ERASED,))
    if not rows:
        return {"requests": 0, "verified": 0, "failed": 0}
    with transaction(db_url) as cur:
        result = verify.after_commit(cur, policy, rows)
    # All at once (one pass); only when something failed, one by one to find which.
    singles = [(r, result) for r in rows] if result["success"] else [(r, _verify_one(db_url, policy, r)) for r in rows]
    verified = failed = 0
    for r, res in singles:
        checks = {**((r["detail"] or {}).get("checks") or {}), **{k: v for k, v in res.items() if k != "success"}}
        with transaction(db_url) as cur:
            if res["success"]:
                lifecycle.move(cur, "verified", [r["request_id"]], run_id=run_id, detail={"checks": checks})
                verified += 1
            else:
                names = sorted(n for part in res.values() if isinstance(part, dict) for n in part.get("failed") or [])
                cur.execute(
                    "UPDATE erasure_requests SET detail = detail || jsonb_build_object('checks', %s::jsonb)"
                    " WHERE request_id = %s",
                    (json.dumps(checks), r["request_id"]),
                )
                lifecycle.fail(cur, r["request_id"], "verify", "verify: checks failed: " + ", ".join(map(str, names)))
                failed += 1
    return {"requests": len(rows), "verified": verified, "failed": failed}


def _verify_one(db_url: str, policy: Policy, row: dict[str, Any]) -> dict[str, Any]:
    with transaction(db_url) as cur:
        return verify.after_commit(cur, policy, [row])


FINAL = {"erased": "certified", "same_subject": "certified", "already_erased": "certified", "no_data": "no_data"}


def certify_run(run_id: str, db_url: str, s3: Any, policy: Policy | None = None) -> dict[str, Any]:
    """Write each verified request's certificate, then close it (the identifier is forgotten).

    A request whose processors have not all confirmed stays open (awaiting_processors).
    """
    policy = policy or load_policy()
    with transaction(db_url) as cur:
        # Requests erased earlier whose processors this run called again are certified again too.
        rows = lifecycle.claimed(cur, run_id, (lifecycle.VERIFIED, lifecycle.AWAITING_PROCESSORS))
        ids = [r["request_id"] for r in rows]
        receipts = processor_workflow.receipts(cur, ids)
        cur.execute(
            "SELECT request_id::text, reference, received_at, due_at FROM erasure_requests"
            " WHERE request_id = ANY(%s::uuid[])",
            (ids,),
        )
        extra = {rid: (ref, rec, due) for rid, ref, rec, due in cur.fetchall()}
    keys = []
    statuses: Counter[str] = Counter()
    for r in rows:
        rid = r["request_id"]
        try:
            ref, received, due = extra[rid]
            cert = certificate.build(
                {
                    **{k: v for k, v in r.items() if k != "identifier"},
                    "reference": ref,
                    "received_at": received,
                    "due_at": due,
                },
                policy.version,
                processors=processor_workflow.certificate_entries(policy, receipts.get(rid)),
            )
            keys.append(certificate.write(s3, cert)[0])
            status = FINAL.get((r["detail"] or {}).get("outcome", "no_data"), "no_data")
            if status == "certified" and not processor_workflow.all_done(policy, receipts.get(rid)):
                status = lifecycle.AWAITING_PROCESSORS
            transition = {"certified": "certified", "no_data": "no_data"}.get(status, "await_processors")
            with transaction(db_url) as cur:
                lifecycle.move(cur, transition, [rid], run_id=run_id, detail={"stage": "certified"})
            statuses[status] += 1
        except Exception as exc:
            with transaction(db_url) as cur:
                lifecycle.fail(cur, rid, "certify", _reason("certify", exc), resume=lifecycle.VERIFIED)
            log.error("erasure request %s: certificate failed: %s", rid, type(exc).__name__)
            statuses[lifecycle.FAILED] += 1
    return {"certificates": len(keys), "statuses": dict(statuses), "first_key": keys[0] if keys else None}


def close_run(run_id: str, db_url: str) -> dict[str, Any]:
    """End of every run: alert on overdue or failed requests, let go of this run's open requests.

    Raises RequestsFailed when a request of this run failed (so the run shows failed), after the claims
    are released, so the next run resumes them.
    """
    from lethe.erasure import notify

    with transaction(db_url) as cur:
        failed = lifecycle.failed_in_run(cur, run_id)
        states = lifecycle.release(cur, run_id)
        counts = request.overdue_or_failed(cur)
    message = notify.deadline_alert(counts, run_id)
    summary = {**counts, "alerted": message is not None}
    log.info("erasure run closed: %s; its requests: %s", json.dumps(summary, sort_keys=True), json.dumps(states))
    if failed:
        raise RequestsFailed(
            f"{sum(failed.values())} erasure request(s) of this run failed ("
            + ", ".join(f"{n} at {step}" for step, n in sorted(failed.items()))
            + "); each one's reason is in erasure_requests.detail->>'error'; the next run resumes them"
        )
    return summary


class RequestsFailed(RuntimeError):
    """Some requests of the run failed; each one's reason (no identifier) is in its detail."""
