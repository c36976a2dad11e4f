"""subject_erasure end to end with dag.test(): real PostgreSQL, S3 over HTTP, Airflow metadata in SQLite.

Expected outcomes come from tests/erasure_people.py (plain SQL inserts) and
from HMACs computed here with the standard library, not from lethe.erasure.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from pathlib import Path
from typing import Any

import erasure_people as people
import psycopg2
import pytest

pytestmark = pytest.mark.dags

ASHA = people.ASHA


def _key() -> bytes:
    return json.loads(os.environ["AIRFLOW_CONN_LETHE_PSEUDONYM_KEY"])["password"].encode()


def _hmac(kind: str, value: str) -> str:
    return hmac.new(_key(), f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()


def _query(url: str, q: str, args: Any = None) -> list[tuple[Any, ...]]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(q, args)
        return cur.fetchall()


def _run(conf: dict[str, Any]) -> Any:
    from lethe.dagrun import run_dag

    return run_dag("subject_erasure", conf)


def _rows_by_column(url: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of every platform table the people have rows in, by column name, in key order."""
    out = {}
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        for t in people.ASHA_ROWS:
            cur.execute(f"SELECT * FROM {t} ORDER BY 1")  # noqa: S608 - fixed table names
            names = [d[0] for d in cur.description]
            out[t] = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    return out


def _xcom_and_fields(run: Any) -> str:
    """Everything Airflow stored for the run besides its conf: XComs and rendered template fields."""
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        xcoms = session.query(XComModel).filter_by(dag_id="subject_erasure", run_id=run.run_id).all()
        fields = session.query(RenderedTaskInstanceFields).filter_by(dag_id="subject_erasure", run_id=run.run_id).all()
        return json.dumps([x.value for x in xcoms], default=str) + json.dumps(
            [f.rendered_fields for f in fields], default=str
        )


def _s3_text(s3_endpoint: str, key: str) -> str:
    from lethe.config import BUCKETS, PRIMARY_REGION
    from lethe.storage import s3_client

    return s3_client(PRIMARY_REGION, s3_endpoint).get_object(Bucket=BUCKETS.evidence, Key=key)["Body"].read().decode()


def _assert_no_pii(text: str, person: dict[str, Any]) -> None:
    lowered = text.lower()
    for field in ("email", "phone", "username"):
        assert person[field].lower() not in lowered, f"the {field} leaked"
    assert person["phone"].replace(" ", "") not in text


def test_erases_a_person_everywhere_and_leaves_only_proof(
    db_url: str,
    s3_endpoint: str,
    airflow_home: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    people.insert_people(db_url)
    others_before = {
        t: [r for r in rows if "'2'" in r or "'3'" in r] for t, rows in people.table_snapshot(db_url).items()
    }
    run = _run({"identifier_kind": "email", "identifier": ASHA["email"], "request_reference": "T-1", "dry_run": False})

    # Every row linked to Asha is gone, by key and by foreign key.
    assert people.count_rows(db_url, 1) == dict.fromkeys(people.ASHA_ROWS, 0)
    pseudonym = _hmac("user_id", "1")
    # Invoices and payments stay for the statutory period, linked to the pseudonym only; card digits nulled.
    assert _query(
        db_url, "SELECT invoice_id, user_id, subject_pseudonym, amount_cents FROM invoices WHERE invoice_id < 200"
    ) == [
        (101, None, pseudonym, 1000),
        (102, None, pseudonym, 1000),
    ]
    assert _query(db_url, "SELECT user_id, subject_pseudonym, card_last4 FROM payments WHERE payment_id < 200") == [
        (None, pseudonym, None),
        (None, pseudonym, None),
    ]
    # The released hold is kept as a record, its links cut.
    assert _query(
        db_url, "SELECT hold_id, subject_key, reference, subject_pseudonym FROM legal_holds WHERE hold_id = 101"
    ) == [(101, None, None, pseudonym)]
    # Mentions in other people's free text are redacted; a longer address that is not hers is left alone.
    assert _query(db_url, "SELECT body FROM comments WHERE user_id = 2 ORDER BY comment_id") == [
        ("Ask [erased] for the notes.",),
        ("write to asha.rao@example.community instead",),
    ]
    assert _query(db_url, "SELECT body FROM issue_reports WHERE user_id = 2") == [("user [erased] keeps posting",)]
    assert _query(db_url, "SELECT body FROM communications WHERE user_id = 2") == [("her number is [erased]",)]
    # Other people's rows (besides the redactions) are untouched.
    after = people.table_snapshot(db_url)
    for table in ("accounts", "ssh_keys", "usage_events", "disputes", "marketing_contacts"):
        assert [r for r in after[table] if "'2'" in r or "'3'" in r] == others_before[table]

    # The tombstone: keyed pseudonyms of the key and of every identifier, and of the rest of her
    # footprint (name, cookies, IPs) so backups and audits can match it; no raw value.
    tomb = _query(db_url, "SELECT subject_pseudonym, identifier_pseudonyms, counts FROM erasure_tombstones")
    assert len(tomb) == 1 and tomb[0][0] == pseudonym
    assert set(tomb[0][1]) >= {
        _hmac("email", ASHA["email"]),
        _hmac("phone", "+919000000001"),
        _hmac("username", ASHA["username"]),
    }
    assert _hmac("cookie", "cookie-101") in tomb[0][1] and _hmac("ip", "10.1.2.3") in tomb[0][1]
    assert all(re.fullmatch(r"[0-9a-f]{64}", p) for p in tomb[0][1])
    assert tomb[0][2] == people.ASHA_ROWS

    # The request is closed and forgets the identifier.
    (rid, status, identifier, detail) = _query(
        db_url, "SELECT request_id::text, status, identifier, detail FROM erasure_requests"
    )[0]
    assert (status, identifier) == ("certified", None)
    assert detail["redactions"] == people.MENTIONS_OF_ASHA

    # Ledger: tables and counts only, chain intact.
    (payload,) = _query(db_url, "SELECT payload FROM ledger WHERE kind = 'erasure'")[0]
    assert payload["tables"] == people.ASHA_ROWS
    _assert_no_pii(json.dumps(payload), ASHA)

    # Certificate in the evidence bucket: JSON and Markdown, no raw identifier, backup section pending.
    cert = json.loads(_s3_text(s3_endpoint, f"certificates/{rid}.json"))
    page = _s3_text(s3_endpoint, f"certificates/{rid}.md")
    assert cert["outcome"] == "erased" and cert["subject_pseudonym"] == pseudonym and cert["reference"] == "T-1"
    assert {t: v["rows"] for t, v in cert["tables"].items()} == people.ASHA_ROWS
    assert cert["retained"]["invoices"]["legal_basis"] == "legal_obligation"
    assert set(cert["backup_propagation"]) == {"us-east-1", "ap-southeast-1"}
    assert all(v["status"] == "pending" for v in cert["backup_propagation"].values())
    assert all(c["success"] for c in cert["checks"].values())
    assert "| invoices | pseudonymise | 2 |" in page
    for text in (json.dumps(cert), page):
        _assert_no_pii(text, ASHA)

    # Nothing of hers in task logs or XComs.
    out, err = capfd.readouterr()
    logs = out + err + caplog.text + _xcom_and_fields(run)
    for folder in (airflow_home / "logs",):
        if folder.exists():
            logs += "".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file())
    assert "erasure executed" in logs or "erased" in logs  # the capture did see the run
    _assert_no_pii(logs, ASHA)

    # A second request for the same person changes nothing and says so.
    before = people.table_snapshot(db_url)
    _run({"identifier_kind": "username", "identifier": ASHA["username"], "dry_run": False})
    assert people.table_snapshot(db_url) == before
    assert _query(db_url, "SELECT detail->>'outcome' FROM erasure_requests WHERE request_id <> %s", (rid,)) == [
        ("already_erased",)
    ]


@pytest.mark.parametrize(
    ("kind", "identifier"), [("user_id", "1"), ("phone", ASHA["phone"]), ("username", ASHA["username"].upper())]
)
def test_every_identifier_kind_erases_the_person(
    db_url: str, s3_endpoint: str, airflow_home: Path, kind: str, identifier: str
) -> None:
    people.insert_people(db_url)
    _run({"identifier_kind": kind, "identifier": identifier, "dry_run": False})
    assert people.count_rows(db_url, 1) == dict.fromkeys(people.ASHA_ROWS, 0)
    assert _query(db_url, "SELECT DISTINCT user_id, subject_pseudonym FROM invoices WHERE invoice_id < 200") == [
        (None, _hmac("user_id", "1"))
    ]
    assert _query(db_url, "SELECT subject_pseudonym FROM erasure_tombstones") == [(_hmac("user_id", "1"),)]
    assert people.count_rows(db_url, 2) != dict.fromkeys(people.ASHA_ROWS, 0)  # others keep their rows


def test_dry_run_changes_nothing_and_reports_the_plan(db_url: str, s3_endpoint: str, airflow_home: Path) -> None:
    people.insert_people(db_url)
    before = people.table_snapshot(db_url)
    _run({"identifier_kind": "email", "identifier": ASHA["email"]})  # dry run is the default
    assert people.table_snapshot(db_url) == before
    assert _query(db_url, "SELECT count(*) FROM erasure_tombstones") == [(0,)]
    ((status, identifier, detail),) = _query(db_url, "SELECT status, identifier, detail FROM erasure_requests")
    assert (status, identifier) == ("dry_run", None)
    assert {t: v["rows"] for t, v in detail["tables"].items()} == people.ASHA_ROWS
    assert detail["redactions"] == people.MENTIONS_OF_ASHA


def test_unknown_person_and_held_person(db_url: str, s3_endpoint: str, airflow_home: Path) -> None:
    people.insert_people(db_url)
    before = people.table_snapshot(db_url)
    _run({"identifier_kind": "phone", "identifier": "+91 9999999999", "dry_run": False})
    _run({"identifier_kind": "username", "identifier": people.CHITRA["username"], "dry_run": False})
    assert people.table_snapshot(db_url) == before  # nobody erased: one unknown, one under hold
    rows = _query(
        db_url, "SELECT identifier_kind, status, identifier IS NULL, detail FROM erasure_requests ORDER BY received_at"
    )
    (_, s1, nulled1, d1), (_, s2, nulled2, d2) = rows
    assert (s1, nulled1, d1["outcome"]) == ("no_data", True, "no_data")
    assert (s2, nulled2, d2["outcome"]) == ("held", False, "held")  # stays open until the hold is released
    assert d2["legal_holds"] == [301]
    assert all(v["action"] == "held" for v in d2["tables"].values())
    assert _query(db_url, "SELECT count(*) FROM erasure_tombstones") == [(0,)]


def test_queued_requests_of_every_kind_run_as_a_nightly_batch(
    db_url: str, s3_endpoint: str, airflow_home: Path
) -> None:
    from lethe.db import transaction
    from lethe.erasure import request

    people.insert_people(db_url)
    with transaction(db_url) as cur:
        request.register(cur, "user_id", "1", reference="Q-1")
        request.register(cur, "phone", "+91 90000 00003")  # Chitra, held
        request.register(cur, "username", "nobody_here")
    _run({"dry_run": False})  # no identifier: the queue
    assert people.count_rows(db_url, 1) == dict.fromkeys(people.ASHA_ROWS, 0)
    assert people.count_rows(db_url, 3)["accounts"] == 1
    statuses = dict(_query(db_url, "SELECT identifier_kind, status FROM erasure_requests"))
    assert statuses == {"user_id": "certified", "phone": "held", "username": "no_data"}


def test_malformed_identifiers_are_refused_plainly(
    db_url: str, airflow_home: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    from lethe.dagrun import DagRunFailed

    bad = "x' OR 1=1; DROP TABLE accounts; --"
    with pytest.raises(DagRunFailed, match="register"):  # refused by the first task, by its rule
        _run({"identifier_kind": "email", "identifier": bad})
    with pytest.raises(DagRunFailed, match="register"):  # a valid email is not a valid phone number
        _run({"identifier_kind": "phone", "identifier": ASHA["email"], "dry_run": False})
    out, err = capfd.readouterr()
    logs = out + err + caplog.text
    assert "the identifier is not a valid email" in logs  # the refusal was captured, naming the rule
    assert bad not in logs and "OR 1=1" not in logs  # neither Airflow's validation nor Lethe repeats the value
    assert ASHA["email"] not in logs
    assert _query(db_url, "SELECT count(*) FROM accounts") == [(0,)]
    assert _query(db_url, "SELECT count(*) FROM erasure_requests") == [(0,)]


def test_a_failed_erasure_changes_nothing_and_a_rerun_completes(
    db_url: str, s3_endpoint: str, airflow_home: Path
) -> None:
    from lethe.dagrun import DagRunFailed

    people.insert_people(db_url)
    before = people.table_snapshot(db_url)
    # Make the erasure die half-way through its deletes (after other tables were already deleted from).
    _query(
        db_url,
        "CREATE FUNCTION boom() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'disk on fire'; END $$ LANGUAGE plpgsql;"
        " CREATE TRIGGER boom BEFORE DELETE ON disputes FOR EACH ROW EXECUTE FUNCTION boom(); SELECT 1",
    )
    conf = {"identifier_kind": "email", "identifier": ASHA["email"], "dry_run": False}
    with pytest.raises(DagRunFailed, match=r"tasks not successful: deadlines$"):  # the run fails at its close
        _run(conf)
    assert people.table_snapshot(db_url) == before
    ((status, error),) = _query(db_url, "SELECT status, detail->>'error' FROM erasure_requests")
    assert status == "failed" and error == "erase: RaiseException"  # the class only: a message may quote a row

    _query(db_url, "DROP TRIGGER boom ON disputes; SELECT 1")
    _run(conf)  # the same identifier resumes the open request
    assert people.count_rows(db_url, 1) == dict.fromkeys(people.ASHA_ROWS, 0)
    assert _query(db_url, "SELECT status, identifier FROM erasure_requests") == [("certified", None)]
    assert _query(db_url, "SELECT counts FROM erasure_tombstones") == [(people.ASHA_ROWS,)]


def test_the_trigger_form_needs_no_reference_or_reason(airflow_home: Path) -> None:
    """A batch run over the queue has no one ticket or reason: both fields may stay empty."""
    from lethe.dagrun import load_dag

    params = load_dag("subject_erasure").params
    params.validate()  # the form's defaults, as a batch run submits them
    for name in ("request_reference", "reason"):
        # Airflow's trigger form marks a field required unless its schema type admits null.
        assert "null" in params.get_param(name).schema["type"], name
        assert params[name] is None, name


def test_a_held_persons_mention_of_the_erased_person_is_left_for_the_hold(
    db_url: str, s3_endpoint: str, airflow_home: Path
) -> None:
    """Chitra is under a legal hold: her comment naming Asha is evidence, and Asha's erasure must not touch it."""
    people.insert_people(db_url)
    held_text = "Asha (asha.rao@example.com) saw the incident"
    _query(db_url, "INSERT INTO comments VALUES (301, 3, %s, now()) RETURNING 1", (held_text,))
    _run({"identifier_kind": "email", "identifier": people.ASHA["email"], "dry_run": False})

    assert _query(db_url, "SELECT count(*) FROM accounts WHERE user_id = 1") == [(0,)]
    assert _query(db_url, "SELECT body FROM comments WHERE comment_id = 301") == [(held_text,)]
    (bhavin,) = _query(db_url, "SELECT body FROM comments WHERE comment_id = 201")[0]
    assert "asha.rao@example.com" not in bhavin.lower()  # a bystander without a hold is redacted
    ((rid, status, detail),) = _query(db_url, "SELECT request_id::text, status, detail FROM erasure_requests")
    assert status == "certified"
    assert detail["residue"]["waiting_for_hold:comments.body"] == 1
    page = _s3_text(s3_endpoint, f"certificates/{rid}.md")
    left = page.split("Left unchanged: rows of other people under an active legal hold", 1)[1]
    assert "- comments.body: 1 row(s)" in left
    _assert_no_pii(page, people.ASHA)

    # The hold is released: the next batch run masks what waited for it (the mention, and her IP where
    # Chitra's own rows share it), and nothing else.
    waited = {k.split(":", 1)[1]: n for k, n in detail["residue"].items() if k.startswith("waiting_for_hold:")}
    before = _rows_by_column(db_url)
    _query(db_url, "UPDATE legal_holds SET released_at = now() WHERE hold_id = 301 RETURNING 1")
    _run({"dry_run": False})
    ((body,),) = _query(db_url, "SELECT body FROM comments WHERE comment_id = 301")
    assert "asha.rao@example.com" not in body.lower() and "[erased]" in body
    assert body.startswith("Asha (") and body.endswith(") saw the incident")
    after = _rows_by_column(db_url)
    for table, rows in before.items():
        unchanged = {c for c in rows[0] if f"{table}.{c}" not in waited} if rows else set()
        assert [{c: r[c] for c in unchanged} for r in after[table]] == [{c: r[c] for c in unchanged} for r in rows]
        others = [r for r in rows if r.get("user_id") != 3]
        assert [r for r in after[table] if r.get("user_id") != 3] == others  # nobody else's row changed
    assert [r for r in after["comments"] if r["user_id"] == 3]  # Chitra's rows were there to compare
    ((status, detail),) = _query(db_url, "SELECT status, detail FROM erasure_requests")
    assert status == "certified"
    assert "waiting_for_hold:comments.body" not in detail["residue"]
    assert detail["residue"]["masked_after_hold:comments.body"] == 1
    assert {k.split(":", 1)[1]: n for k, n in detail["residue"].items() if "_after_hold:" in k} == waited
    assert detail["after_hold"]["completed_at"]
    page = _s3_text(s3_endpoint, f"certificates/{rid}.md")
    assert "Left unchanged" not in page
    done = page.split("Completed after the legal hold's release", 1)[1]
    assert "- comments.body: 1 row(s) masked" in done
    _assert_no_pii(page, people.ASHA)
    (payload,) = _query(db_url, "SELECT payload FROM ledger WHERE kind = 'erasure_after_hold'")[0]
    assert payload["request_id"] == rid and payload["masked"]["masked_after_hold:comments.body"] == 1
    # A later batch run finds nothing more to do.
    _run({"dry_run": False})
    assert _query(db_url, "SELECT count(*) FROM ledger WHERE kind = 'erasure_after_hold'") == [(1,)]


def _residue_found_by_the_audit(db_url: str) -> dict[str, int]:
    from lethe.audit.primary import erasure_residue_scan
    from lethe.policy import load_policy

    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        counts, _ = erasure_residue_scan(cur, load_policy(), _key())
    return counts


def test_a_held_persons_visit_cut_from_her_account_waits_for_the_hold_too(
    db_url: str, s3_endpoint: str, airflow_home: Path
) -> None:
    """Chitra is under a legal hold. A visit of hers is past its day tied to her account: retention cut the link and
    the row keeps only her keyed pseudonym. It is still hers, so Asha's erasure leaves its referrer naming Asha for
    the hold, as it leaves Chitra's linked rows; and the audit does not count it as residue while the hold lasts."""
    people.insert_people(db_url)
    referrer = "https://mail.example/inbox?from=asha.rao@example.com"
    _query(
        db_url,
        "INSERT INTO visitor_logs (log_id, user_id, subject_pseudonym, visitor_id, occurred_at, referrer)"
        " VALUES (399, NULL, %s, 'v-399', now() - interval '3 days', %s) RETURNING 1",
        (_hmac("user_id", "3"), referrer),
    )
    _run({"identifier_kind": "email", "identifier": ASHA["email"], "dry_run": False})

    assert _query(db_url, "SELECT count(*) FROM accounts WHERE user_id = 1") == [(0,)]
    assert _query(db_url, "SELECT referrer FROM visitor_logs WHERE log_id = 399") == [(referrer,)]
    ((status, detail),) = _query(db_url, "SELECT status, detail FROM erasure_requests")
    assert status == "certified"
    assert detail["residue"]["waiting_for_hold:visitor_logs.referrer"] == 1
    assert _residue_found_by_the_audit(db_url) == {"erased_found_by_value": 0}

    # Released: the next batch run masks the referrer; the audit still finds nothing of Asha.
    _query(db_url, "UPDATE legal_holds SET released_at = now() WHERE hold_id = 301 RETURNING 1")
    # now it is residue, with what else waited for the hold, until the batch masks it
    assert _residue_found_by_the_audit(db_url)["erased_found_by_value.visitor_logs.referrer"] == 1
    _run({"dry_run": False})
    ((after,),) = _query(db_url, "SELECT referrer FROM visitor_logs WHERE log_id = 399")
    assert "asha.rao@example.com" not in after.lower() and after.startswith("https://mail.example/inbox?from=")
    ((detail,),) = _query(db_url, "SELECT detail FROM erasure_requests")
    assert detail["residue"]["masked_after_hold:visitor_logs.referrer"] == 1
    assert _residue_found_by_the_audit(db_url) == {"erased_found_by_value": 0}


def test_usage_rows_tied_only_to_the_pseudonym_are_erased_too(
    db_url: str, s3_endpoint: str, airflow_home: Path
) -> None:
    """Usage older than the policy's window keeps only the person's keyed pseudonym (the user id cut by
    retention_nightly): erasing the person finds and deletes those rows as well, and no one else's."""
    people.insert_people(db_url)
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        for event_id, uid in ((9101, 1), (9102, 1), (9201, 2)):
            cur.execute(
                "INSERT INTO usage_events (event_id, user_id, subject_pseudonym, occurred_at, feature, duration_ms)"
                " VALUES (%s, NULL, %s, now() - interval '3 days', 'quiz', 700)",
                (event_id, _hmac("user_id", str(uid))),
            )
        for log_id, uid in ((9101, 1), (9201, 2)):
            cur.execute(
                "INSERT INTO visitor_logs (log_id, user_id, subject_pseudonym, visitor_id, occurred_at, ip_address)"
                " VALUES (%s, NULL, %s, %s, now() - interval '3 days', '10.9.9.8')",
                (log_id, _hmac("user_id", str(uid)), f"v-old-{uid}"),
            )
    _run({"identifier_kind": "email", "identifier": ASHA["email"], "dry_run": False})

    assert _query(db_url, "SELECT event_id FROM usage_events WHERE event_id > 9000 ORDER BY 1") == [(9201,)]
    assert _query(db_url, "SELECT log_id FROM visitor_logs WHERE log_id > 9000 ORDER BY 1") == [(9201,)]
    assert _query(
        db_url, "SELECT count(*) FROM usage_events WHERE subject_pseudonym = %s", (_hmac("user_id", "1"),)
    ) == [(0,)]
    ((counts,),) = _query(db_url, "SELECT counts FROM erasure_tombstones")
    assert counts["usage_events"] == people.ASHA_ROWS["usage_events"] + 2
    assert counts["visitor_logs"] == people.ASHA_ROWS["visitor_logs"] + 1
