"""The erasure request lifecycle through real subject_erasure runs (dag.test()), checked with this test's own SQL.

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
DAG_TEST_USER = "dag_test"  # dag.test() records this as the user who triggered the run


def _query(url: str, q: str, args: Any = None) -> list[tuple[Any, ...]]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(q, args)
        return cur.fetchall() if cur.description else []


def _run(conf: dict[str, Any]) -> Any:
    from lethe.dagrun import run_dag

    return run_dag("subject_erasure", conf)


def _requests(url: str) -> list[tuple[Any, ...]]:
    return _query(url, "SELECT * FROM erasure_requests ORDER BY request_id")


def _certificates(s3_endpoint: str) -> set[str]:
    from lethe.config import BUCKETS, PRIMARY_REGION
    from lethe.storage import s3_client

    s3 = s3_client(PRIMARY_REGION, s3_endpoint)
    listed = s3.list_objects_v2(Bucket=BUCKETS.evidence, Prefix="certificates/")
    return {o["Key"] for o in listed.get("Contents", [])}


def _alerts(url: str) -> list[str]:
    return [k for (k,) in _query(url, "SELECT kind FROM audit_alerts")]


def test_a_rejected_request_is_closed_and_never_erased_by_a_later_batch(
    db_url: str, s3_endpoint: str, airflow_home: Path
) -> None:
    from lethe.dagrun import DagRunFailed

    people.insert_people(db_url)
    before = people.table_snapshot(db_url)
    conf = {"identifier_kind": "email", "identifier": ASHA["email"], "dry_run": False, "require_approval": True}
    with Responder("subject_erasure", "approve", option="Reject", user="dpo") as answer:
        _run(conf)
    assert answer.asked is not None
    body = answer.asked["body"]
    # The approval screen shows the plan's counts, not a pointer to an XCom, and no identifier.
    assert "| accounts | delete | 1 |" in body and "| invoices | pseudonymise | 2 |" in body
    assert ASHA["email"] not in body and ASHA["username"] not in body

    assert people.table_snapshot(db_url) == before
    ((rid, status, identifier, approval),) = _query(
        db_url, "SELECT request_id::text, status, identifier, detail->>'approval' FROM erasure_requests"
    )
    assert (status, identifier, approval) == ("rejected", None, "rejected")

    _run({"dry_run": False})  # the nightly batch: the rejected request is not taken
    with pytest.raises(DagRunFailed, match="register"):  # nor can it be run by name
        _run({"request_id": rid, "dry_run": False})
    assert people.table_snapshot(db_url) == before
    assert people.count_rows(db_url, 1) == people.ASHA_ROWS
    assert _query(db_url, "SELECT status, identifier FROM erasure_requests") == [("rejected", None)]
    assert _query(db_url, "SELECT count(*) FROM erasure_tombstones") == [(0,)]
    assert _certificates(s3_endpoint) == set()


def test_an_approved_request_is_certified_and_keeps_who_approved_it_and_its_run(
    db_url: str, s3_endpoint: str, airflow_home: Path
) -> None:
    people.insert_people(db_url)
    conf = {"identifier_kind": "email", "identifier": ASHA["email"], "dry_run": False, "require_approval": True}
    with Responder("subject_erasure", "approve", option="Approve", user="dpo") as answer:
        run = _run(conf)
    assert answer.asked is not None
    assert people.count_rows(db_url, 1) == dict.fromkeys(people.ASHA_ROWS, 0)
    ((rid, status, identifier, claimed_by, approval, approval_by, run_id),) = _query(
        db_url,
        "SELECT request_id::text, status, identifier, claimed_by, detail->>'approval', detail->>'approval_by',"
        " detail->>'run_id' FROM erasure_requests",
    )
    # Erasing replaces the plan's detail: who approved it, and the run that did it (the page's links), stay.
    assert (status, identifier, claimed_by) == ("certified", None, None)
    assert (approval, approval_by, run_id) == ("approved", "dpo", run.run_id)
    assert any(rid in key for key in _certificates(s3_endpoint))
