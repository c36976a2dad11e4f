"""The life of an erasure request: its states, and the only ways from one to the next.

    pending -> planned -> awaiting_approval -> approved | rejected
                       \\-> approved (no approval required)
    approved -> erasing -> erased -> verified -> certified | no_data | awaiting_processors
    and, from the steps that can meet them: held, failed; a preview ends in dry_run.

Every move is one guarded UPDATE (`WHERE status = ANY(expected)`), so a request can never jump a
step, and two runs cannot both move it: the second finds it no longer in the state it expected.
A run claims requests (`claimed_by` = its run id) and moves only its own. A claim outlives its run
only when the run died: `claim_batch` takes over requests whose claiming run is no longer alive and
resumes them where they stopped (an `erasing` request whose transaction rolled back is erased again,
an `erased` one is verified, a `verified` one certified).

Whether a run is alive is Airflow's word (its run state), except for `erasing`: a request is in that
state only while the run's erase task works on it, and that task holds a PostgreSQL session lock of
its run (`erase_lock`) the whole time. A session ends with its process, so an `erasing` request whose
run's lock nobody holds was left by a dead erase task, whatever Airflow says (a killed worker Airflow
has not noticed yet; a killed `dag.test()`, which nothing ever marks failed): it is taken over.
Requests another run holds are not taken, and `not_taken` says which, since when and why.

Closed states forget the identifier (and the reason and the processors' identifiers): certified,
no_data, rejected, dry_run. A rejected request is never claimed again.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import psycopg2.extensions
from psycopg2 import sql

PENDING = "pending"
PLANNED = "planned"
AWAITING_APPROVAL = "awaiting_approval"
APPROVED = "approved"
REJECTED = "rejected"
ERASING = "erasing"
ERASED = "erased"
VERIFIED = "verified"
CERTIFIED = "certified"
HELD = "held"
FAILED = "failed"
NO_DATA = "no_data"
DRY_RUN = "dry_run"
AWAITING_PROCESSORS = "awaiting_processors"
LEGACY_COMPLETED = "completed"  # closed by the previous release: means certified

# Still owed to the person (the deadline counts); the identifier is kept while a request is open.
OPEN = (PENDING, PLANNED, AWAITING_APPROVAL, APPROVED, ERASING, ERASED, VERIFIED, HELD, FAILED, AWAITING_PROCESSORS)
CLOSED = (CERTIFIED, NO_DATA, REJECTED, DRY_RUN, LEGACY_COMPLETED)
STATES = OPEN + CLOSED
# Waiting to be planned (again): a held request is re-planned each run, so a released hold is noticed.
QUEUED = (PENDING, FAILED, HELD)
# A run died with its request here: the next run takes over from this step.
MIDWAY = (PLANNED, AWAITING_APPROVAL, APPROVED, ERASING, ERASED, VERIFIED, AWAITING_PROCESSORS)

# name -> (states it may start from, state it ends in)
TRANSITIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "plan": (QUEUED, PLANNED),
    "preview": (QUEUED, DRY_RUN),
    "hold": ((*QUEUED, APPROVED, ERASING), HELD),
    "ask_approval": ((PLANNED,), AWAITING_APPROVAL),
    "approve_unattended": ((PLANNED,), APPROVED),
    "approve": ((AWAITING_APPROVAL,), APPROVED),
    "reject": ((AWAITING_APPROVAL,), REJECTED),
    "requeue": ((PLANNED, AWAITING_APPROVAL), PENDING),
    "start_erasing": ((APPROVED, ERASING), ERASING),
    "erased": ((ERASING,), ERASED),
    "verified": ((ERASED,), VERIFIED),
    "certified": ((VERIFIED, AWAITING_PROCESSORS), CERTIFIED),
    "no_data": ((VERIFIED,), NO_DATA),
    "await_processors": ((VERIFIED, AWAITING_PROCESSORS), AWAITING_PROCESSORS),
    "fail": ((*QUEUED, PLANNED, APPROVED, ERASING, ERASED, VERIFIED, AWAITING_PROCESSORS), FAILED),
    "resume_certify": ((FAILED,), VERIFIED),
}
# Closing forgets what identified the person; the reason too (it is the requester's words).
FORGETS = {CERTIFIED, NO_DATA, REJECTED, DRY_RUN}
# The run lets go of the request: another run may take it.
RELEASES = {PENDING, HELD, REJECTED, CERTIFIED, NO_DATA, DRY_RUN, AWAITING_PROCESSORS}


class TransitionRefused(RuntimeError):
    """A request was not in a state the transition may start from; names the request ids and states only."""


def move(
    cur: psycopg2.extensions.cursor,
    transition: str,
    request_ids: Iterable[str],
    *,
    run_id: str | None = None,
    detail: dict[str, Any] | None = None,
    pseudonym: str | None = None,
    strict: bool = True,
) -> list[str]:
    """Move the requests by `transition`; return the ids moved.

    Only requests in one of the transition's start states (and claimed by `run_id` when given) move.
    With `strict`, a request that could not move raises TransitionRefused (rolling back the caller's
    transaction); without it, such requests are left where they are and are not returned.
    """
    start, end = TRANSITIONS[transition]
    ids = sorted(set(request_ids))
    if not ids:
        return []
    sets = ["status = %(end)s", "status_changed_at = now()"]
    if end in FORGETS:
        sets += ["identifier = NULL", "processor_identifiers = NULL", "reason = NULL", "completed_at = now()"]
    detail_sql = "coalesce(detail, '{}'::jsonb)"
    if end in RELEASES:
        sets.append("claimed_by = NULL")
        # The run that last held it stays findable (the compliance page links a closed request to it).
        detail_sql += (
            " || CASE WHEN claimed_by IS NULL THEN '{}'::jsonb ELSE jsonb_build_object('run_id', claimed_by) END"
        )
    if detail is not None:
        detail_sql += " || %(detail)s::jsonb"
    if end in RELEASES or detail is not None:
        sets.append(f"detail = {detail_sql}")
    if pseudonym is not None:
        sets.append("subject_pseudonym = %(pseudonym)s")
    cur.execute(
        f"UPDATE erasure_requests SET {', '.join(sets)}"  # noqa: S608 (fixed column expressions, values are params)
        " WHERE request_id = ANY(%(ids)s::uuid[]) AND status = ANY(%(start)s)"
        " AND (%(run)s::text IS NULL OR claimed_by = %(run)s)"
        " RETURNING request_id::text",
        {
            "end": end,
            "ids": ids,
            "start": list(start),
            "run": run_id,
            "detail": json.dumps(detail) if detail is not None else None,
            "pseudonym": pseudonym,
        },
    )
    moved = sorted(r[0] for r in cur.fetchall())
    if strict and len(moved) != len(ids):
        refused = sorted(set(ids) - set(moved))
        cur.execute(
            "SELECT request_id::text, status FROM erasure_requests WHERE request_id = ANY(%s::uuid[])", (refused,)
        )
        states = dict(cur.fetchall())
        raise TransitionRefused(
            f"{transition} may start only from {', '.join(start)}; "
            + ", ".join(f"{rid} is {states.get(rid, 'missing')}" for rid in refused)
        )
    return moved


def fail(cur: psycopg2.extensions.cursor, request_id: str, step: str, reason: str, *, resume: str = PENDING) -> bool:
    """Mark a request failed at `step`. `reason` must hold no identifier (an error class, check names).

    `resume` is where the next run restarts it: pending (planned again) or verified (certified again).
    """
    moved = move(
        cur,
        "fail",
        [request_id],
        detail={"error": reason, "failed_step": step, "resume_from": resume},
        strict=False,
    )
    return bool(moved)


# --- claims -----------------------------------------------------------------------------------


def live_claims(cur: psycopg2.extensions.cursor, run_id: str) -> list[str]:
    """The other runs holding claims on open requests (so the caller can ask Airflow which are alive)."""
    cur.execute(
        "SELECT DISTINCT claimed_by FROM erasure_requests"
        " WHERE claimed_by IS NOT NULL AND claimed_by <> %s AND status = ANY(%s) ORDER BY 1",
        (run_id, list(OPEN)),
    )
    return [r[0] for r in cur.fetchall()]


def dead_runs(cur: psycopg2.extensions.cursor, run_id: str, alive: Callable[[str], bool]) -> list[str]:
    return [r for r in live_claims(cur, run_id) if not alive(r)]


# The advisory lock a run's erase task holds while it works (key: hashtextextended of this + run id).
ERASE_LOCK = "lethe.erasure.erase:"


@contextlib.contextmanager
def erase_lock(db_url: str, run_id: str) -> Iterator[None]:
    """Hold the run's erase lock in a session of its own for the duration: proof the erase task is alive.

    A claimer taking the lock (`abandoned_runs`) holds it until its claim commits, so this waits for that
    and then finds the requests it lost gone from its claim.
    """
    from lethe.db import session_lock

    with session_lock(db_url, ERASE_LOCK + run_id):
        yield


def abandoned_runs(cur: psycopg2.extensions.cursor, run_id: str, dead: list[str]) -> list[str]:
    """Runs, alive by Airflow's word, holding `erasing` requests while no session holds their erase lock.

    Their erase task died mid-erasure (its transaction rolled back). The lock is taken here until the
    caller's transaction ends, so a retry of that task cannot start on them while they are taken over.
    """
    cur.execute(
        "SELECT DISTINCT claimed_by FROM erasure_requests WHERE status = %s AND claimed_by IS NOT NULL"
        " AND claimed_by <> %s AND NOT claimed_by = ANY(%s) ORDER BY 1",
        (ERASING, run_id, dead),
    )
    runs = [r[0] for r in cur.fetchall()]
    abandoned = []
    for run in runs:
        cur.execute("SELECT pg_try_advisory_xact_lock(hashtextextended(%s, 0))", (ERASE_LOCK + run,))
        if cur.fetchone()[0]:  # type: ignore[index]
            abandoned.append(run)
    return abandoned


def _claimable(dead: list[str], abandoned: list[str]) -> tuple[str, dict[str, Any]]:
    where = (
        "status = ANY(%(open)s) AND (claimed_by IS NULL OR claimed_by = ANY(%(dead)s)"
        " OR (status = %(erasing)s AND claimed_by = ANY(%(abandoned)s)))"
    )
    return where, {"open": list(OPEN), "dead": dead, "erasing": ERASING, "abandoned": abandoned}


def queued(
    cur: psycopg2.extensions.cursor, limit: int, dead: list[str], abandoned: list[str] | None = None
) -> list[str]:
    """The ids a batch run would take now, oldest due first (for a dry run, which claims nothing)."""
    where, params = _claimable(dead, abandoned or [])
    cur.execute(
        f"SELECT request_id::text FROM erasure_requests WHERE {where} ORDER BY due_at, request_id LIMIT %(limit)s",  # noqa: S608
        {**params, "limit": limit},
    )
    return [r[0] for r in cur.fetchall()]


def claim_batch(
    cur: psycopg2.extensions.cursor, run_id: str, limit: int, dead: list[str], abandoned: list[str] | None = None
) -> int:
    """Claim up to `limit` open requests that no live run holds; return how many.

    A request left mid-way by a dead run resumes: planned or awaiting approval go back to the
    queue (plan and approval again), a failure of the certificate resumes at certification, the
    rest keep their state and the next step picks them up. `abandoned` (from `abandoned_runs`):
    runs whose `erasing` requests are taken over though Airflow calls them alive.
    """
    where, params = _claimable(dead, abandoned or [])
    cur.execute(
        f"""
        UPDATE erasure_requests r SET claimed_by = %(run)s, claimed_at = now()
        FROM (SELECT request_id FROM erasure_requests WHERE {where}
              ORDER BY due_at, request_id LIMIT %(limit)s FOR UPDATE SKIP LOCKED) q
        WHERE r.request_id = q.request_id
        RETURNING r.request_id::text, r.status, r.detail->>'resume_from'
        """,  # noqa: S608 (fixed SQL; values are params)
        {**params, "run": run_id, "limit": limit},
    )
    rows = cur.fetchall()
    _resume(cur, run_id, rows)
    return len(rows)


def claim_one(
    cur: psycopg2.extensions.cursor,
    request_id: str,
    run_id: str,
    dead: list[str],
    abandoned: list[str] | None = None,
) -> tuple[str | None, bool]:
    """Claim one named request; return (its status or None when there is none, whether this run holds it).

    A closed request (rejected included) is not claimed; nor is one that a live run holds, nor one whose
    row another transaction has locked (it is not waited for: `not_taken` says so).
    """
    where, params = _claimable(dead, abandoned or [])
    cur.execute(
        f"""
        UPDATE erasure_requests r SET claimed_by = %(run)s, claimed_at = now()
        FROM (SELECT request_id FROM erasure_requests WHERE request_id = %(id)s
              AND (({where}) OR (status = ANY(%(open)s) AND claimed_by = %(run)s)) FOR UPDATE SKIP LOCKED) q
        WHERE r.request_id = q.request_id
        RETURNING r.request_id::text, r.status, r.detail->>'resume_from'
        """,  # noqa: S608 (fixed SQL; values are params)
        {**params, "run": run_id, "id": request_id},
    )
    rows = cur.fetchall()
    if rows:
        _resume(cur, run_id, rows)
        cur.execute("SELECT status FROM erasure_requests WHERE request_id = %s", (request_id,))
        return cur.fetchone()[0], True  # type: ignore[index]
    cur.execute("SELECT status FROM erasure_requests WHERE request_id = %s", (request_id,))
    row = cur.fetchone()
    return (row[0] if row else None), False


def not_taken(
    cur: psycopg2.extensions.cursor,
    run_id: str,
    dead: list[str],
    abandoned: list[str],
    request_id: str | None = None,
    limit: int = 20,
) -> tuple[int, list[dict[str, Any]]]:
    """Open requests another run holds (all of them, or the one named), and why this run left them.

    Returns the count and the first `limit` of them, each with its id, state, holding run, since when
    and why: ids, states and times only, never an identifier.
    """
    cur.execute(
        "SELECT request_id::text, status, claimed_by, claimed_at, count(*) OVER () FROM erasure_requests"
        " WHERE status = ANY(%(open)s) AND claimed_by IS NOT NULL AND claimed_by <> %(run)s"
        " AND (%(id)s::uuid IS NULL OR request_id = %(id)s::uuid)"
        " ORDER BY claimed_at, request_id LIMIT %(limit)s",
        {"open": list(OPEN), "run": run_id, "id": request_id, "limit": limit},
    )
    rows = cur.fetchall()
    total = int(rows[0][4]) if rows else 0
    held = []
    for rid, status, run, since, _ in rows:
        if run in dead or (status == ERASING and run in abandoned):
            cur.execute("SELECT 1 FROM erasure_requests WHERE request_id = %s FOR UPDATE SKIP LOCKED", (rid,))
            why = (
                f"run {run} is gone, but a transaction still holds the request's row (a dead worker's session"
                " PostgreSQL has not dropped yet): the next run takes it over"
                if not cur.fetchall()
                else f"run {run} is gone; the request is beyond this run's batch_size: the next run takes it over"
            )
        elif status == ERASING:
            why = f"run {run}'s erase task is working on it now (its session holds the run's erase lock)"
        else:
            why = (
                f"run {run} holds it and Airflow reports that run queued or running: it goes on there"
                " (a run whose worker died is failed or retried by Airflow; the next run then takes over)"
            )
        held.append(
            {
                "request_id": rid,
                "status": status,
                "claimed_by": run,
                "claimed_since": since.isoformat() if since else None,
                "why": why,
            }
        )
    return total, held


def _resume(cur: psycopg2.extensions.cursor, run_id: str, rows: list[tuple[str, str, str | None]]) -> None:
    move(cur, "requeue", [rid for rid, status, _ in rows if status in (PLANNED, AWAITING_APPROVAL)], strict=False)
    move(cur, "resume_certify", [rid for rid, status, r in rows if status == FAILED and r == VERIFIED], strict=False)
    # requeue releases the claim: take it back, this run plans them now
    cur.execute(
        "UPDATE erasure_requests SET claimed_by = %s WHERE request_id = ANY(%s::uuid[]) AND status = %s",
        (run_id, [rid for rid, status, _ in rows if status in (PLANNED, AWAITING_APPROVAL)], PENDING),
    )


def claimed(cur: psycopg2.extensions.cursor, run_id: str, states: tuple[str, ...]) -> list[dict[str, Any]]:
    """The requests this run holds in the given states (raw identifier included: keep it in the task)."""
    return _select(cur, "claimed_by = %s AND status = ANY(%s)", (run_id, list(states)))


def by_ids(cur: psycopg2.extensions.cursor, request_ids: list[str]) -> list[dict[str, Any]]:
    return _select(cur, "request_id = ANY(%s::uuid[])", (request_ids,))


_COLUMNS = (
    "request_id",
    "kind",
    "identifier",
    "status",
    "dry_run",
    "subject_pseudonym",
    "detail",
    "require_approval",
    "requested_by",
)


def _select(cur: psycopg2.extensions.cursor, where: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
    query = sql.SQL(
        "SELECT request_id::text, identifier_kind, identifier, status, dry_run, subject_pseudonym, detail,"
        " require_approval, requested_by FROM erasure_requests WHERE {} ORDER BY due_at, request_id"
    ).format(sql.SQL(where))  # `where` is one of this module's fixed conditions; values are parameters
    cur.execute(query, params)
    return [dict(zip(_COLUMNS, row, strict=True)) for row in cur.fetchall()]


def release(cur: psycopg2.extensions.cursor, run_id: str) -> dict[str, int]:
    """At the end of a run: let go of every open request it still holds; return its requests per state."""
    cur.execute("SELECT status, count(*) FROM erasure_requests WHERE claimed_by = %s GROUP BY status", (run_id,))
    counts = {s: int(n) for s, n in cur.fetchall()}
    cur.execute(
        "UPDATE erasure_requests SET claimed_by = NULL WHERE claimed_by = %s AND status = ANY(%s)",
        (run_id, list(OPEN)),
    )
    return counts


def failed_in_run(cur: psycopg2.extensions.cursor, run_id: str) -> dict[str, int]:
    """Requests of this run that failed, per failed step (no identifier)."""
    cur.execute(
        "SELECT coalesce(detail->>'failed_step', 'unknown'), count(*) FROM erasure_requests"
        " WHERE claimed_by = %s AND status = %s GROUP BY 1",
        (run_id, FAILED),
    )
    return {s: int(n) for s, n in cur.fetchall()}
