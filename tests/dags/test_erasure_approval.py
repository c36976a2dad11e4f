"""An erasure approval that nobody answers, through a real subject_erasure run (dag.test()), checked with
this test's own SQL.

Approvals are answered from outside the run (tests/hitl.py) the way a person or the scheduler's timeout
sweep would. Outcomes are compared as sets and per-request dictionaries, never by row order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import erasure_people as people
import psycopg2
import pytest
from hitl import Responder

pytestmark = pytest.mark.dags

ASHA = people.ASHA


def _query(url: str, q: str, args: Any = None) -> list[tuple[Any, ...]]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(q, args)
        return cur.fetchall() if cur.description else []


def _run(conf: dict[str, Any]) -> Any:
    from lethe.dagrun import run_dag

    return run_dag("subject_erasure", conf)


def _alerts(url: str) -> list[str]:
    return [k for (k,) in _query(url, "SELECT kind FROM audit_alerts")]


def test_an_unanswered_approval_times_out_back_to_the_queue_with_an_alert(
    db_url: str, s3_endpoint: str, airflow_home: Path
) -> None:
    people.insert_people(db_url)
    before = people.table_snapshot(db_url)
    conf = {
        "identifier_kind": "username",
        "identifier": ASHA["username"],
        "dry_run": False,
        "require_approval": True,
        "approval_timeout_hours": 5,
    }
    with Responder("subject_erasure", "approve", timeout=True) as sweep:
        _run(conf)
    assert sweep.asked is not None
    # The run's timeout was the one the task parked with (5 hours after it asked).
    (created,) = _query(db_url, "SELECT now()")[0]
    waited = sweep.asked["trigger_timeout"] - created
    assert 4 * 3600 < waited.total_seconds() <= 5 * 3600

    assert people.table_snapshot(db_url) == before
    rows = _query(db_url, "SELECT status, identifier, claimed_by, detail->>'approval' FROM erasure_requests")
    assert rows == [("pending", ASHA["username"], None, "expired")]  # queued again, still owed to the person
    assert "erasure_approval_expired" in _alerts(db_url)
    assert _query(db_url, "SELECT count(*) FROM erasure_tombstones") == [(0,)]
