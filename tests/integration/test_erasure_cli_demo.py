"""`lethe erasure submit` and the demo module against a real database and S3 (no Airflow API)."""

from __future__ import annotations

import erasure_people as people
import psycopg2
import pytest
from lethe.cli import main

pytestmark = pytest.mark.integration


def test_submit_queues_a_dry_run_without_printing_the_identifier(
    db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("AIRFLOW_API_URL", raising=False)
    assert main(["erasure", "submit", "--email", people.ASHA["email"], "--reference", "T-9"]) == 0
    out = capsys.readouterr()
    assert "queued for the nightly" in out.out
    assert people.ASHA["email"] not in out.out + out.err
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT identifier_kind, identifier, status, dry_run, reference, due_at - received_at FROM erasure_requests"
        )
        (kind, identifier, status, dry_run, reference, delta) = cur.fetchone()
    assert (kind, identifier, status, dry_run, reference, delta.days) == (
        "email",
        people.ASHA["email"],
        "pending",
        True,
        "T-9",
        30,
    )


def test_submit_refuses_a_malformed_identifier(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["erasure", "submit", "--phone", "robert'); DROP TABLE accounts;--", "--execute"]) == 2
    err = capsys.readouterr().err
    assert "--phone: the identifier is not a valid phone" in err and "DROP" not in err


def test_submit_says_queued_when_airflow_is_not_reachable(
    db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AIRFLOW_API_TOKEN", "t")
    assert main(["erasure", "submit", "--user-id", "7", "--execute", "--airflow-url", f"http://127.0.0.1:{port}"]) == 0
    assert "not reachable" in capsys.readouterr().out


def test_demo_conf_picks_an_unheld_active_person(db_url: str) -> None:
    from lethe.erasure import demo

    people.insert_people(db_url)
    conf = demo.conf(db_url)
    assert conf["identifier"] in (people.ASHA["email"], people.BHAVIN["email"])  # not Chitra, who is held
    assert conf["dry_run"] is False
