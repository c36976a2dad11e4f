"""`lethe demo`'s processors: subject_erasure (dag.test) against the demo's local stand-ins
(lethe.processors.local) gives a certificate listing every processor of the policy with its receipt."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import erasure_people as people
import psycopg2
import pytest

pytestmark = pytest.mark.dags


def test_a_demo_erasure_certificate_lists_every_processor_with_its_receipt(
    db_url: str, s3_endpoint: str, airflow_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lethe import demo
    from lethe.config import BUCKETS, PRIMARY_REGION
    from lethe.dagrun import run_dag
    from lethe.policy import load_policy
    from lethe.processors.local import CONTACT_LIST, MAILCHIMP_LIST, LocalProcessors
    from lethe.storage import s3_client

    email = people.ASHA["email"]
    people.insert_people(db_url)
    with LocalProcessors() as processors:
        for name, value in demo.processor_env(processors).items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("LETHE_PROCESSOR_RETRIES", "1")  # a stand-in that does not answer fails fast
        monkeypatch.setenv("LETHE_PROCESSOR_RETRY_SECONDS", "0")
        regions = demo.ses_regions()
        processors.subscribe(email, regions)  # as `lethe demo` does for the person it erases
        run_dag(
            "subject_erasure",
            {"identifier_kind": "email", "identifier": email, "request_reference": "demo", "dry_run": False},
        )
        for region in regions:  # the stand-ins' own state
            assert email not in processors.contacts[(region, CONTACT_LIST)] and email in processors.suppressed[region]
        assert hashlib.md5(email.encode()).hexdigest() not in processors.members[MAILCHIMP_LIST]

    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT request_id::text FROM erasure_requests WHERE reference = 'demo'")
        ((request_id,),) = cur.fetchall()
    conn.close()
    s3 = s3_client(PRIMARY_REGION, s3_endpoint)
    cert = json.loads(s3.get_object(Bucket=BUCKETS.evidence, Key=f"certificates/{request_id}.json")["Body"].read())
    receipts = cert["processors"]
    assert set(receipts) == set(load_policy().processors)
    assert receipts["amazon_ses"]["status"] == "confirmed"
    assert set(receipts["amazon_ses"]["detail"]["regions"]) == set(regions)
    assert receipts["mixpanel"]["status"] == "accepted" and receipts["mixpanel"]["job_id"]
    assert receipts["mailchimp"]["status"] == "confirmed"
    assert not any(r["status"] == "skipped" for r in receipts.values())
