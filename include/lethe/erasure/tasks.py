"""The subject_erasure DAG's task callables (the DAG file only wires them).

register -> plan -> [approve] -> erase -> verify -> certify -> deadlines.
Tasks pass counts through XCom; requests are found again by the run's claim
(erasure_requests.claimed_by), so neither the raw identifier nor a list of
10,000 request ids travels through XCom. Every step can run again: a chunk
commits whole or not at all, and a processed request is not processed twice.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from datetime import timedelta
from typing import Any

import psycopg2.extensions
from lethe.db import connect, transaction
from lethe.erasure import certificate, execute, plan, request, vacuum, verify
from lethe.erasure.discovery import read_graph
from lethe.erasure.plan import Work
from lethe.policy import Policy, load_policy
from lethe.processors import workflow as processor_workflow

log = logging.getLogger(__name__)

CHUNK = 200  # people per transaction: big enough for set-based SQL, small enough to retry cheaply
STALE_CLAIM = timedelta(hours=6)
TODO = ("pending", "failed", "held")


class RequestsFailed(RuntimeError):
    """Some requests were rolled back and marked failed; each one's error class is in its detail."""


def register(params: dict[str, Any], run_id: str, db_url: str) -> dict[str, Any]:
    """Turn the trigger into claimed request rows; return the mode and counts (no identifier)."""
    kind = params.get("identifier_kind") or "email"
    identifier = params.get("identifier")
    named = params.get("request_id")
    with transaction(db_url) as cur:
        if named:
            status = request.claim_one(cur, str(named), run_id)
            if status is None:
                raise ValueError(f"no erasure request {named} in erasure_requests")
            return {"mode": "request", "claimed": 1, "status": status}
        if identifier not in (None, ""):
            request_id, created = request.register(
                cur,
                kind,
                identifier,
                reference=params.get("request_reference") or None,
                reason=params.get("reason") or None,
                dry_run=bool(params.get("dry_run", True)),
                request_id=request.request_id_for_run(run_id),
            )
            request.claim_one(cur, request_id, run_id)
            return {"mode": "form", "claimed": 1, "created": created, "request_id": request_id}
        n = request.claim_batch(cur, run_id, int(params.get("batch_size") or 10_000), STALE_CLAIM)
        return {"mode": "batch", "claimed": n}


def _works(rows: list[dict[str, Any]]) -> list[Work]:
    return [Work(r["request_id"], r["kind"], r["identifier"]) for r in rows if r["identifier"]]


def _chunks(rows: list[dict[str, Any]], size: int = CHUNK) -> list[list[dict[str, Any]]]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def plan_run(run_id: str, db_url: str, key: bytes, policy: Policy | None = None) -> dict[str, Any]:
    """Plan every claimed open request (rolled back: changes nothing); finish the dry runs."""
    policy = policy or load_policy()
    with transaction(db_url) as cur:
        rows = request.claimed(cur, run_id, TODO)
    outcomes: Counter[str] = Counter()
    rows_total: Counter[str] = Counter()
    dry = 0
    for chunk in _chunks(rows):
        conn = connect(db_url)
        try:
            with conn.cursor() as cur:
                graph = read_graph(cur, policy)
                works = _works(chunk)
                plan.build(cur, policy, graph, key, works)
            conn.rollback()  # the plan's temp tables go; nothing else was written
            with conn, conn.cursor() as cur:
                for w, r in zip(works, chunk, strict=True):
                    outcomes[w.outcome] += 1
                    rows_total.update(w.rows)
                    detail = {**(r["detail"] or {}), "plan": w.as_detail()}
                    if r["dry_run"]:
                        dry += 1
                        detail = {**w.as_detail(), "dry_run": True}
                        cur.execute(
                            "UPDATE erasure_requests SET status = 'dry_run', identifier = NULL, completed_at = now(),"
                            " subject_pseudonym = %s, detail = %s WHERE request_id = %s",
                            (w.pseudonym, json.dumps(detail), w.request_id),
                        )
                    else:
                        cur.execute(
                            "UPDATE erasure_requests SET detail = %s WHERE request_id = %s",
                            (json.dumps(detail), w.request_id),
                        )
        finally:
            conn.close()
    summary = {"requests": len(rows), "dry_run": dry, "outcomes": dict(outcomes), "rows": dict(rows_total)}
    log.info("erasure plan: %s", json.dumps(summary, sort_keys=True))
    return summary


def _erase_chunk(db_url: str, policy: Policy, key: bytes, chunk: list[dict[str, Any]]) -> Counter[str]:
    """One transaction: plan again under lock, execute, verify, tombstone, ledger; all or nothing."""
    outcomes: Counter[str] = Counter()
    with transaction(db_url) as cur:
        cur.execute(
            "SELECT request_id FROM erasure_requests WHERE request_id = ANY(%s::uuid[]) FOR UPDATE",
            ([r["request_id"] for r in chunk],),
        )
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
        execute.write_tombstones(cur, key, works)
        execute.record(cur, works, checks)
        processor_workflow.remember(cur, policy, works)  # before the rows holding the email are gone for good
        outcomes.update(w.outcome for w in works)
    return outcomes


def _lock_subjects(cur: psycopg2.extensions.cursor, policy: Policy, works: list[Work]) -> None:
    """Hold the people's subject rows so no new child row or legal hold slips in mid-erasure."""
    from lethe.erasure import discovery

    found = discovery.resolve(cur, policy, [(w.kind, w.identifier) for w in works])
    ids = sorted({p.user_id for p in found if p is not None})
    if ids:
        from psycopg2 import sql

        cur.execute(
            sql.SQL("SELECT 1 FROM {} WHERE {} = ANY(%s) FOR UPDATE").format(
                sql.Identifier(policy.subject.table), sql.Identifier(policy.subject.key)
            ),
            (ids,),
        )


def _fail(db_url: str, request_id: str, exc: BaseException) -> None:
    # The class name only: a database error's text can quote a row of the person.
    with transaction(db_url) as cur:
        cur.execute(
            "UPDATE erasure_requests SET status = 'failed',"
            " detail = coalesce(detail, '{}'::jsonb) || jsonb_build_object('error', %s::text) WHERE request_id = %s",
            (type(exc).__name__ + (f": {exc}" if _safe(exc) else ""), request_id),
        )


def _safe(exc: BaseException) -> bool:
    return type(exc).__name__ in ("DataQualityError", "ErasureGraphError")


def erase_run(run_id: str, db_url: str, key: bytes, policy: Policy | None = None) -> dict[str, Any]:
    """Execute every claimed, not yet processed, non-dry-run request; chunk by chunk."""
    policy = policy or load_policy()
    with transaction(db_url) as cur:
        rows = [r for r in request.claimed(cur, run_id, TODO) if not r["dry_run"]]
    outcomes: Counter[str] = Counter()
    failed = 0
    for chunk in _chunks(rows):
        try:
            outcomes += _erase_chunk(db_url, policy, key, chunk)
            continue
        except Exception as exc:
            if len(chunk) == 1:
                _fail(db_url, chunk[0]["request_id"], exc)
                failed += 1
                log.error("erasure request %s failed: %s", chunk[0]["request_id"], type(exc).__name__)
                continue
        for row in chunk:  # one bad request must not hold back the others: retry them one by one
            try:
                outcomes += _erase_chunk(db_url, policy, key, [row])
            except Exception as exc:
                _fail(db_url, row["request_id"], exc)
                failed += 1
                log.error("erasure request %s failed: %s", row["request_id"], type(exc).__name__)
    with transaction(db_url) as cur:  # after the commits: the old row versions of the people leave the pages
        changed = vacuum.touched(r["detail"] for r in processed(cur, run_id))
    vacuumed = vacuum.vacuum(db_url, changed)
    summary = {"requests": len(rows), "outcomes": dict(outcomes), "failed": failed, "vacuumed": len(vacuumed)}
    log.info("erasure executed: %s", json.dumps(summary, sort_keys=True))
    if failed:
        raise RequestsFailed(f"{failed} erasure request(s) failed; their error class is in erasure_requests.detail")
    return summary


def processed(cur: psycopg2.extensions.cursor, run_id: str) -> list[dict[str, Any]]:
    rows = request.claimed(cur, run_id, ("running",))
    return [r for r in rows if (r["detail"] or {}).get("stage") == "erased"]


def verify_run(run_id: str, db_url: str, policy: Policy | None = None) -> dict[str, Any]:
    """Checks after commit, stored in each request's detail; raises when one fails."""
    policy = policy or load_policy()
    with transaction(db_url) as cur:
        rows = processed(cur, run_id)
        if not rows:
            return {"requests": 0}
        result = verify.after_commit(cur, policy, rows)
        for r in rows:
            checks = {**(r["detail"].get("checks") or {}), **{k: v for k, v in result.items() if k != "success"}}
            cur.execute(
                "UPDATE erasure_requests SET detail = detail || jsonb_build_object('checks', %s::jsonb)"
                " WHERE request_id = %s",
                (json.dumps(checks), r["request_id"]),
            )
    if not result["success"]:
        raise AssertionError(f"erasure post-conditions failed: {json.dumps(result, sort_keys=True)}")
    return {"requests": len(rows), "success": True}


FINAL_STATUS = {"erased": "completed", "same_subject": "completed", "already_erased": "completed", "no_data": "no_data"}


def certify_run(run_id: str, db_url: str, s3: Any, policy: Policy | None = None) -> dict[str, Any]:
    """Write each processed request's certificate, then close it: the identifier is nulled."""
    policy = policy or load_policy()
    with transaction(db_url) as cur:
        # Requests erased earlier whose processors this run called again are certified again too.
        rows = processed(cur, run_id) + request.claimed(cur, run_id, ("awaiting_processors",))
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
        ref, received, due = extra[r["request_id"]]
        cert = certificate.build(
            {
                **{k: v for k, v in r.items() if k != "identifier"},
                "reference": ref,
                "received_at": received,
                "due_at": due,
            },
            policy.version,
            processors=processor_workflow.certificate_entries(policy, receipts.get(r["request_id"])),
        )
        keys.append(certificate.write(s3, cert)[0])
        outcome = r["detail"].get("outcome", "no_data")
        status = FINAL_STATUS.get(outcome, "held")
        if status == "completed" and not processor_workflow.all_done(policy, receipts.get(r["request_id"])):
            status = "awaiting_processors"
        statuses[status] += 1
        with transaction(db_url) as cur:
            if status in ("held", "awaiting_processors"):  # still open: the identifiers stay until it completes
                cur.execute(
                    "UPDATE erasure_requests SET status = %s, claimed_by = NULL,"
                    ' detail = detail || \'{"stage": "certified"}\'::jsonb WHERE request_id = %s',
                    (status, r["request_id"]),
                )
            else:
                cur.execute(
                    "UPDATE erasure_requests SET status = %s, identifier = NULL, processor_identifiers = NULL,"
                    " completed_at = now(),"
                    ' detail = detail || \'{"stage": "certified"}\'::jsonb WHERE request_id = %s',
                    (status, r["request_id"]),
                )
    return {"certificates": len(keys), "statuses": dict(statuses), "first_key": keys[0] if keys else None}


def deadlines(run_id: str, db_url: str) -> dict[str, Any]:
    from lethe.erasure import notify

    with transaction(db_url) as cur:
        counts = request.overdue_or_failed(cur)
    message = notify.deadline_alert(counts, run_id)
    return {**counts, "alerted": message is not None}
