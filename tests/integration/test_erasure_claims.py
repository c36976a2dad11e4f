"""Which run takes an open erasure request, and what a run says about those it leaves (real PostgreSQL).

Airflow's word on a run (`alive`) is given here as a plain function, as `register_run` asks Airflow; the rest is
`register` against a real database: requests set up with Lethe's own moves, states read back with this test's SQL.

- An `erasing` request whose run's erase lock no session holds was left by a dead erase task: taken over even
  while Airflow still calls that run alive (a killed worker it has not noticed; a killed `dag.test()`).
- One whose erase task still holds the lock, or that a run Airflow calls alive holds, is not taken: a batch names
  it (request, state, run, since, why) and a run naming it fails saying so.
- One whose run is dead but whose row an open transaction still locks (a killed worker's session the server has
  not dropped) is named too, never skipped silently.
"""

from __future__ import annotations

import re
from typing import Any

import erasure_people as people
import psycopg2
import pytest

pytestmark = pytest.mark.integration

OTHER = "manual__2026-12-01T00:00:00+00:00"  # the run that claimed the request before this one
THIS = "scheduled__2026-12-02T00:00:00+00:00"


def _alive(_run: str) -> bool:
    return True  # Airflow says the other run is still queued or running


def _dead(_run: str) -> bool:
    return False


def _request_in(db_url: str, status: str) -> str:
    """Asha's request, claimed by OTHER and moved by Lethe's own transitions to `status` (approved or erasing)."""
    from lethe.db import transaction
    from lethe.erasure import lifecycle, request

    with transaction(db_url) as cur:
        rid, _ = request.register(cur, "email", people.ASHA["email"], reference="T-2026-0099")
        lifecycle.claim_one(cur, rid, OTHER, [])
        lifecycle.move(cur, "plan", [rid], run_id=OTHER)
        lifecycle.move(cur, "approve_unattended", [rid], run_id=OTHER)
        if status == "erasing":
            lifecycle.move(cur, "start_erasing", [rid], run_id=OTHER)
    return rid


def _state(db_url: str) -> list[tuple[Any, ...]]:
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SET statement_timeout = '30s'")
        cur.execute("SELECT status, claimed_by FROM erasure_requests")
        rows = cur.fetchall()
    conn.close()
    return rows


def _batch(db_url: str, alive: Any) -> dict[str, Any]:
    from lethe.erasure import tasks

    return tasks.register({"dry_run": False}, THIS, db_url, alive=alive)


def test_an_erasing_request_whose_erase_task_is_gone_is_taken_over_though_airflow_calls_its_run_alive(
    db_url: str,
) -> None:
    people.insert_people(db_url)
    _request_in(db_url, "erasing")

    registered = _batch(db_url, _alive)

    assert (registered["claimed"], registered["held_by_other_runs"], registered["not_taken"]) == (1, 0, [])
    assert _state(db_url) == [("erasing", THIS)]  # the erase task of this run erases it again


def test_an_erasing_request_whose_erase_task_holds_its_lock_is_named_and_not_taken(db_url: str) -> None:
    from lethe.erasure import lifecycle, tasks

    people.insert_people(db_url)
    rid = _request_in(db_url, "erasing")

    with lifecycle.erase_lock(db_url, OTHER):  # OTHER's erase task is alive, working on it
        registered = _batch(db_url, _alive)
        assert registered["claimed"] == 0
        assert registered["held_by_other_runs"] == 1
        ((held),) = registered["not_taken"]
        assert (held["request_id"], held["status"], held["claimed_by"]) == (rid, "erasing", OTHER)
        assert held["claimed_since"]
        assert "erase task is working on it" in held["why"]
        refused = rf"erasure request {rid} \(erasing\) is not taken.*{re.escape(OTHER)}"
        with pytest.raises(tasks.RequestHeld, match=refused):
            tasks.register({"request_id": rid, "dry_run": False}, THIS, db_url, alive=_alive)
        assert _state(db_url) == [("erasing", OTHER)]

    # Its session gone (the task ended or died): the next run takes it over.
    assert _batch(db_url, _alive)["claimed"] == 1
    assert _state(db_url) == [("erasing", THIS)]


def test_a_request_a_live_run_holds_between_tasks_is_named_by_the_batch_and_refused_to_a_run_naming_it(
    db_url: str,
) -> None:
    from lethe.erasure import tasks

    people.insert_people(db_url)
    rid = _request_in(db_url, "approved")  # planned and approved; OTHER's erase task has not started

    registered = _batch(db_url, _alive)
    assert (registered["claimed"], registered["held_by_other_runs"]) == (0, 1)
    ((held),) = registered["not_taken"]
    assert (held["request_id"], held["status"], held["claimed_by"]) == (rid, "approved", OTHER)
    assert "Airflow reports that run queued or running" in held["why"]
    assert people.ASHA["email"] not in repr(registered)
    with pytest.raises(tasks.RequestHeld, match=rf"{rid} \(approved\).*claimed by run {re.escape(OTHER)} since"):
        tasks.register({"request_id": rid, "dry_run": False}, THIS, db_url, alive=_alive)
    # The form, for the same person: resumes her open request, and says who holds it.
    with pytest.raises(tasks.RequestHeld, match=rf"{rid} \(approved\)"):
        tasks.register({"identifier": people.ASHA["email"], "dry_run": False}, THIS, db_url, alive=_alive)
    assert _state(db_url) == [("approved", OTHER)]

    # Once Airflow says that run is over, its request is taken over (planned again, as a resumed request).
    assert _batch(db_url, _dead)["claimed"] == 1
    assert _state(db_url) == [("approved", THIS)]


def test_a_dead_runs_request_whose_row_an_open_transaction_locks_is_named_not_skipped(db_url: str) -> None:
    people.insert_people(db_url)
    rid = _request_in(db_url, "erasing")
    zombie = psycopg2.connect(db_url)  # a killed worker's session the server has not dropped yet
    try:
        with zombie.cursor() as cur:
            cur.execute("SET statement_timeout = '30s'")
            cur.execute("SELECT 1 FROM erasure_requests WHERE request_id = %s FOR UPDATE", (rid,))

        registered = _batch(db_url, _dead)

        assert (registered["claimed"], registered["held_by_other_runs"]) == (0, 1)
        ((held),) = registered["not_taken"]
        assert (held["request_id"], held["claimed_by"]) == (rid, OTHER)
        assert "a transaction still holds the request's row" in held["why"]
    finally:
        zombie.close()
    assert _batch(db_url, _dead)["claimed"] == 1
