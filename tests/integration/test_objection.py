"""Objections as first-class events: recorded through `lethe objection record`, ledgered, applied by the night.

Each test plants its people with its own SQL, records through the command line (or the function the
compliance page calls), runs the real purge (`lethe purge --now`) the next morning, and reads the
outcome with its own SQL.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import psycopg2
import pytest
from lethe.cli import main

pytestmark = pytest.mark.integration

# Rows are planted a month before the objection, which is recorded now; the purge runs the next morning.
A_MONTH_AGO = datetime.now(UTC) - timedelta(days=30)
NEXT_MORNING = (datetime.now(UTC) + timedelta(days=1)).isoformat()


def _rows(url: str, q: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(q, params)
        return cur.fetchall()


def _plant(url: str) -> None:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        for user_id in (1, 2, 3):
            cur.execute(
                "INSERT INTO accounts (user_id, name, username, email, password_hash, created_at)"
                " VALUES (%s, %s, %s, %s, 'x', '2024-01-01Z')",
                (user_id, f"Asha {user_id}", f"asha{user_id}", f"asha{user_id}@example.com"),
            )
            cur.execute(
                "INSERT INTO consents (consent_id, user_id, purpose, granted_at) VALUES (%s, %s, 'marketing', %s)",
                (user_id, user_id, "2024-01-01Z"),
            )
            cur.execute(
                "INSERT INTO feedback (feedback_id, user_id, body, created_at) VALUES (%s, %s, 'Great', %s)",
                (user_id, user_id, A_MONTH_AGO),
            )
            cur.execute(
                "INSERT INTO survey_responses (response_id, user_id, survey, answers, created_at)"
                " VALUES (%s, %s, 'nps', '{}', %s)",
                (user_id, user_id, A_MONTH_AGO),
            )
            cur.execute(
                "INSERT INTO security_evidence (evidence_id, user_id, kind, observed_at)"
                " VALUES (%s, %s, 'scraping', %s)",
                (user_id, user_id, A_MONTH_AGO),
            )


def test_a_marketing_objection_is_ledgered_and_the_next_night_removes_what_served_only_marketing(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _plant(db_url)
    assert main(["objection", "record", "--purpose", "marketing", "--identifier-kind", "email",
                 "--identifier", "ASHA1@example.com"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "objection to marketing recorded" in out and "asha1" not in out.lower()
    assert _rows(db_url, "SELECT user_id FROM consents WHERE objected_at IS NOT NULL") == [(1,)]
    entries = _rows(db_url, "SELECT payload FROM ledger WHERE kind = 'objection'")
    assert len(entries) == 1
    payload = entries[0][0]
    assert payload["purpose"] == "marketing" and payload["kind"] == "objection"  # type: ignore[index]
    assert "asha" not in json.dumps(payload).lower() and '"user_id"' not in json.dumps(payload)

    # A second objection to the same purpose changes nothing and ledgers nothing.
    assert main(["objection", "record", "--purpose", "marketing", "--identifier", "1"]) == 0
    assert "already ended" in capsys.readouterr().out
    assert _rows(db_url, "SELECT count(*) FROM ledger WHERE kind = 'objection'") == [(1,)]

    assert main(["purge", "--now", NEXT_MORNING]) == 0
    assert _rows(db_url, "SELECT user_id FROM feedback ORDER BY 1") == [(2,), (3,)]
    assert _rows(db_url, "SELECT user_id FROM survey_responses ORDER BY 1") == [(2,), (3,)]
    # Not used only for marketing: security evidence and the account stay.
    assert _rows(db_url, "SELECT user_id FROM security_evidence ORDER BY 1") == [(1,), (2,), (3,)]
    assert _rows(db_url, "SELECT count(*) FROM accounts") == [(3,)]


def test_an_objection_to_purpose_iv_can_be_recorded_and_is_balanced_not_ignored(db_url: str) -> None:
    """Purpose iv was refused by the consents table before; now it is recorded, and the policy's balancing
    applies: the evidence is kept 90 days after the objection, then goes."""
    from lethe.objection import submit

    _plant(db_url)
    recorded = submit(db_url, "user_id", "2", "security")  # the compliance page's call
    assert not recorded.already and recorded.purpose == "security"
    assert _rows(db_url, "SELECT user_id, purpose FROM consents WHERE objected_at IS NOT NULL") == [(2, "security")]
    assert _rows(db_url, "SELECT payload->>'purpose' FROM ledger WHERE kind = 'objection'") == [("security",)]
    # 60 days after the objection the evidence is still kept, 100 days after it it is gone.
    later = [(recorded.at + timedelta(days=days)).isoformat() for days in (60, 100)]
    assert main(["purge", "--now", later[0]]) == 0
    assert _rows(db_url, "SELECT user_id FROM security_evidence ORDER BY 1") == [(1,), (2,), (3,)]
    assert main(["purge", "--now", later[1]]) == 0
    assert _rows(db_url, "SELECT user_id FROM security_evidence ORDER BY 1") == [(1,), (3,)]


def test_bad_input_is_refused_naming_the_field_never_the_value(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    _plant(db_url)
    assert main(["objection", "record", "--purpose", "marketing", "--identifier-kind", "email",
                 "--identifier", "nobody@example.com"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "no account has that email" in err and "nobody" not in err
    assert main(["objection", "record", "--purpose", "analytics", "--identifier", "twelve"]) == 2
    assert "user_id must be a whole number" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["objection", "record", "--purpose", "newsletters", "--identifier", "1"])
    assert _rows(db_url, "SELECT count(*) FROM ledger WHERE kind = 'objection'") == [(0,)]
