"""subject_erasure reaches the processors (dag.test(), real PostgreSQL and S3): SES through moto's
server over HTTP with the real boto3, Mixpanel and Mailchimp through a local server implementing
their documented APIs (tests/processor_services.py). Expected hashes and rows come from here."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import erasure_people as people
import psycopg2
import pytest
from processor_services import (
    MAILCHIMP_KEY,
    MAILCHIMP_LIST,
    MIXPANEL_OAUTH,
    MIXPANEL_TOKEN,
    Provider,
    local_ses,
    ses_client,
)

pytestmark = pytest.mark.dags

ASHA = people.ASHA
BHAVIN = people.BHAVIN
REGIONS = ("us-east-1", "ap-southeast-1")
PROCESSORS = {"amazon_ses", "mixpanel", "mailchimp"}


def _query(url: str, q: str, args: Any = None) -> list[tuple[Any, ...]]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(q, args)
        return cur.fetchall()


def _run(conf: dict[str, Any]) -> Any:
    from lethe.dagrun import run_dag

    return run_dag("subject_erasure", conf)


def _batch() -> Any:
    """The queue, as the nightly run takes it: a triggered run without `dry_run: false` only previews."""
    return _run({"dry_run": False})


def _erase_asha() -> Any:
    return _run({"identifier_kind": "email", "identifier": ASHA["email"], "request_reference": "T-9", "dry_run": False})


def _subscriber_hash(email: str) -> str:
    return hashlib.md5(email.lower().encode()).hexdigest()


def _certificate(s3_endpoint: str, request_id: str) -> tuple[dict[str, Any], str]:
    from lethe.config import BUCKETS, PRIMARY_REGION
    from lethe.storage import s3_client

    s3 = s3_client(PRIMARY_REGION, s3_endpoint)
    read = lambda key: s3.get_object(Bucket=BUCKETS.evidence, Key=key)["Body"].read().decode()  # noqa: E731
    return json.loads(read(f"certificates/{request_id}.json")), read(f"certificates/{request_id}.md")


def _receipts(db_url: str, cause: str = "erasure") -> dict[str, tuple[Any, ...]]:
    rows = _query(
        db_url,
        "SELECT processor, status, attempts, job_id FROM processor_receipts WHERE cause = %s",
        (cause,),
    )
    return {r[0]: r[1:] for r in rows}


def _ledger(db_url: str, kind: str) -> list[dict[str, Any]]:
    return [r[0] for r in _query(db_url, "SELECT payload FROM ledger WHERE kind = %s ORDER BY entry_id", (kind,))]


def _xcom_value(run: Any, task_id: str) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter_by(dag_id="subject_erasure", run_id=run.run_id, task_id=task_id, key="return_value")
            .one()
        )
        return row.value


@pytest.fixture
def world(
    db_url: str, s3_endpoint: str, airflow_home: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, Provider]]:
    """Asha and Bhavin on the platform, in SES's contact lists (both regions) and on Mailchimp's list."""
    people.insert_people(db_url)
    with local_ses() as ses, Provider() as provider:
        conns = {
            "LETHE_SES": {"conn_type": "aws", "login": "lethe", "password": "x", "extra": {"endpoint_url": ses}},
            "LETHE_MIXPANEL": {
                "conn_type": "http",
                "host": provider.url,
                "password": MIXPANEL_OAUTH,
                "extra": {"project_token": MIXPANEL_TOKEN},
            },
            "LETHE_MAILCHIMP": {
                "conn_type": "http",
                "host": provider.url,
                "login": "lethe",
                "password": MAILCHIMP_KEY,
                "extra": {"list_id": MAILCHIMP_LIST},
            },
        }
        for name, conn in conns.items():
            monkeypatch.setenv(f"AIRFLOW_CONN_{name}", json.dumps(conn))
        monkeypatch.setenv("LETHE_PROCESSOR_RETRIES", "2")
        monkeypatch.setenv("LETHE_PROCESSOR_RETRY_SECONDS", "0")
        for region in REGIONS:
            client = ses_client(ses, region)
            client.create_contact_list(ContactListName="newsletter")
            for p in (ASHA, BHAVIN):
                client.create_contact(ContactListName="newsletter", EmailAddress=p["email"])
        for p in (ASHA, BHAVIN):
            provider.subscribe(p["email"])
        yield ses, provider


def _ses_state(ses: str, email: str) -> dict[str, tuple[bool, bool]]:
    """Per region: (still in the contact list, on the suppression list), read with boto3 directly."""
    state = {}
    for region in REGIONS:
        client = ses_client(ses, region)
        listed = email in [c["EmailAddress"] for c in client.list_contacts(ContactListName="newsletter")["Contacts"]]
        try:
            client.get_suppressed_destination(EmailAddress=email)
            suppressed = True
        except client.exceptions.NotFoundException:
            suppressed = False
        state[region] = (listed, suppressed)
    return state


def test_an_erasure_reaches_every_processor_and_the_certificate_lists_each_receipt(
    world: tuple[str, Provider], db_url: str, s3_endpoint: str
) -> None:
    ses, provider = world
    _erase_asha()

    # SES: out of the list and suppressed in both regions; Bhavin untouched.
    assert _ses_state(ses, ASHA["email"]) == dict.fromkeys(REGIONS, (False, True))
    assert _ses_state(ses, BHAVIN["email"]) == dict.fromkeys(REGIONS, (True, False))
    # Mailchimp: her member, found by MD5 of the lowercased address, deleted permanently; Bhavin stays.
    assert set(provider.members[MAILCHIMP_LIST]) == {_subscriber_hash(BHAVIN["email"])}
    # Mixpanel: one GDPR deletion task for her distinct_id (the platform's user id).
    assert [t["distinct_ids"] for t in provider.tasks.values()] == [["1"]]
    (task_id,) = provider.tasks

    receipts = _receipts(db_url)
    assert receipts == {
        "amazon_ses": ("confirmed", 1, None),
        "mixpanel": ("accepted", 1, task_id),
        "mailchimp": ("confirmed", 1, None),
    }
    entries = _ledger(db_url, "processor_erasure")
    assert {e["processor"] for e in entries} == PROCESSORS
    (rid, status, identifier, kept) = _query(
        db_url, "SELECT request_id::text, status, identifier, processor_identifiers FROM erasure_requests"
    )[0]
    assert (status, identifier, kept) == ("certified", None, None)

    cert, page = _certificate(s3_endpoint, rid)
    assert set(cert["processors"]) == PROCESSORS
    assert cert["processors"]["mixpanel"]["job_id"] == task_id
    assert cert["processors"]["amazon_ses"]["detail"]["regions"]["ap-southeast-1"]["suppressed"] is True
    assert all(r["at"] for r in cert["processors"].values())
    assert f"| mixpanel | accepted | {task_id} |" in page
    assert "| amazon_ses | confirmed |" in page and "| mailchimp | confirmed |" in page
    for text in (json.dumps(cert), page, json.dumps(entries)):
        for value in (ASHA["email"], _subscriber_hash(ASHA["email"])):
            assert value not in text.lower()


def test_a_provider_failing_twice_then_succeeding_is_retried_and_the_request_completes(
    world: tuple[str, Provider], db_url: str
) -> None:
    _, provider = world
    provider.fail_next["mailchimp"] = 2
    _erase_asha()

    assert _receipts(db_url)["mailchimp"] == ("confirmed", 3, None)
    assert [e["status"] for e in _ledger(db_url, "processor_erasure") if e["processor"] == "mailchimp"] == [
        "pending",
        "pending",
        "confirmed",
    ]
    assert len(provider.calls_to("mailchimp")) == 3
    assert len(provider.calls_to("mixpanel")) == 1  # the other processors are not called again
    assert _subscriber_hash(ASHA["email"]) not in provider.members[MAILCHIMP_LIST]
    assert _query(db_url, "SELECT status, identifier FROM erasure_requests") == [("certified", None)]


def test_a_provider_down_keeps_the_request_open_until_it_confirms_or_the_deadline_alert_fires(
    world: tuple[str, Provider], db_url: str, s3_endpoint: str
) -> None:
    _, provider = world
    provider.down["mixpanel"] = True
    _erase_asha()  # the run succeeds: the request is not failed

    (rid, status, identifier, kept) = _query(
        db_url, "SELECT request_id::text, status, identifier, processor_identifiers FROM erasure_requests"
    )[0]
    assert status == "awaiting_processors"
    assert identifier == ASHA["email"] and kept == {"email": ASHA["email"], "user_id": "1"}
    assert _receipts(db_url)["mixpanel"] == ("pending", 3, None)
    assert _receipts(db_url)["mailchimp"] == ("confirmed", 1, None)
    cert, _ = _certificate(s3_endpoint, rid)
    assert cert["processors"]["mixpanel"]["status"] == "pending"
    assert cert["processors"]["mixpanel"]["error"] == "mixpanel: HTTP 503"

    # Past its due date and still down: the nightly batch tries again, the request stays open, the alert fires.
    _query(db_url, "UPDATE erasure_requests SET due_at = now() - interval '1 day' RETURNING 1")
    run = _batch()
    assert _query(db_url, "SELECT status FROM erasure_requests") == [("awaiting_processors",)]
    assert _receipts(db_url)["mixpanel"] == ("pending", 6, None)
    assert _xcom_value(run, "deadlines") == {"overdue": 1, "failed": 0, "held_past_due": 0, "alerted": True}
    assert len(provider.calls_to("mailchimp")) == 1  # confirmed processors are not called again

    # Back up: the next batch gets the confirmation and closes the request.
    provider.down["mixpanel"] = False
    _batch()
    assert _query(db_url, "SELECT status, identifier, processor_identifiers FROM erasure_requests") == [
        ("certified", None, None)
    ]
    (task_id,) = provider.tasks
    assert _receipts(db_url)["mixpanel"] == ("accepted", 7, task_id)
    cert, _ = _certificate(s3_endpoint, rid)
    assert cert["processors"]["mixpanel"]["job_id"] == task_id
    assert {r["status"] for r in cert["processors"].values()} == {"confirmed", "accepted"}


def test_an_objection_to_marketing_removes_the_person_from_the_marketing_processor_only(
    world: tuple[str, Provider], db_url: str
) -> None:
    ses, provider = world
    # Asha objects to marketing (consent 101); her analytics consent (102) holds.
    _query(db_url, "UPDATE consents SET objected_at = now() WHERE consent_id = 101 RETURNING 1")
    _batch()

    assert set(provider.members[MAILCHIMP_LIST]) == {_subscriber_hash(BHAVIN["email"])}
    assert provider.calls_to("mixpanel") == [] and provider.tasks == {}
    assert _ses_state(ses, ASHA["email"]) == dict.fromkeys(REGIONS, (True, False))
    assert _receipts(db_url, "objection") == {"mailchimp": ("confirmed", 1, None)}
    (entry,) = _ledger(db_url, "processor_objection")
    assert (entry["processor"], entry["ref"], entry["detail"]["purpose"]) == ("mailchimp", "101", "marketing")
    assert ASHA["email"] not in json.dumps(entry)
    # The platform still has her: an objection is not an erasure.
    assert _query(db_url, "SELECT count(*) FROM accounts WHERE user_id = 1") == [(1,)]

    _batch()  # sent once: the next run does not call again
    assert len(provider.calls_to("mailchimp")) == 1
