"""The audit as a GX user finds it: committed suites, a Checkpoint in PostgreSQL, results without rows."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from lethe import ledger
from lethe.audit import run, suites
from lethe.db import transaction
from lethe.policy import load_policy
from lethe.retention.catalog import foreign_keys

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
KEY = b"audit-gx-test-key"

# Personal data planted where the checks must find it; none of it may reach a validation result.
PII = {
    "name": "Zofia Quintana-Okafor",
    "email": "zofia.quintana@example.org",
    "phone": "+91 98111 22333",
    "cookie": "cookie-7f3a9c2e51d04b8aa1",
    "ip": "198.51.100.234",
    "request_email": "kept.identifier@example.net",
}


def test_the_committed_suites_are_what_the_policy_generates(db_url: str) -> None:
    """Regenerating from the repository's policy and schema gives the files under expectations/."""
    with transaction(db_url) as cur:
        fks = foreign_keys(cur)
    generated = suites.generate(load_policy(), fks)
    on_disk = sorted(p.stem for p in suites.SUITES_DIR.glob("*.json"))
    assert on_disk == sorted(generated), "regenerate: python -m lethe.audit.suites --write"
    for name, suite in generated.items():
        assert suites.committed(name) == suites.dumps(suite), (
            f"expectations/{name}.json is stale: python -m lethe.audit.suites --write"
        )
    checks = [e["meta"]["check"] for e in generated["retention"]["expectations"]]
    for _, rule in load_policy().rules():
        assert f"expired_rows.{rule.name}" in checks and f"stale.{rule.name}" in checks


def _plant_faults(db_url: str) -> None:
    """A closed account left whole (nothing references it: closed_accounts should have deleted it), another
    person's expired session and untruncated IP, a kept identifier, an overdue request."""
    policy = load_policy()
    with transaction(db_url) as cur:
        cur.execute(
            "INSERT INTO accounts (user_id, name, username, email, phone, password_hash, created_at, closed_at)"
            " VALUES (1, %s, 'zq', %s, %s, 'x', %s, %s)",
            (PII["name"], PII["email"], PII["phone"], NOW - timedelta(days=900), NOW - timedelta(days=90)),
        )
        cur.execute(
            "INSERT INTO accounts (user_id, name, username, email, password_hash, created_at)"
            " VALUES (2, 'Open Account', 'open2', 'open2@example.com', 'x', %s)",
            (NOW - timedelta(days=900),),
        )
        cur.execute(
            "INSERT INTO sessions (session_id, user_id, cookie_id, kind, ip_address, created_at, expires_at)"
            " VALUES (1, 2, %s, 'persistent', %s, %s, %s)",
            (PII["cookie"], PII["ip"], NOW - timedelta(days=40), NOW - timedelta(days=3)),
        )
        # Consented to analytics: the visit itself may stay (visits_without_analytics_consent), only its IP may not.
        cur.execute(
            "INSERT INTO consents (consent_id, user_id, purpose, granted_at) VALUES (1, 2, 'analytics', %s)",
            (NOW - timedelta(days=800),),
        )
        cur.execute(
            "INSERT INTO visitor_logs (log_id, user_id, visitor_id, occurred_at, ip_address, user_agent)"
            " VALUES (1, 2, 'v', %s, %s, 'agent')",
            (NOW - timedelta(days=10), PII["ip"]),
        )
        cur.execute(
            "INSERT INTO erasure_requests (request_id, identifier_kind, identifier, due_at, status)"
            " VALUES (%s, 'email', %s, %s, 'completed'), (%s, 'email', %s, %s, 'pending')",
            (
                str(uuid.uuid4()),
                PII["request_email"],
                NOW + timedelta(days=5),
                str(uuid.uuid4()),
                PII["email"],
                NOW - timedelta(days=2),
            ),
        )
        for table, rule in policy.rules():
            cutoff = NOW - rule.keep.to_timedelta()
            ledger.append(
                cur,
                "retention",
                {"rule": rule.name, "table": table, "now": NOW.isoformat(), "cutoff": cutoff.isoformat()},
            )


def test_checkpoint_finds_the_faults_in_postgresql_and_keeps_no_row_values(db_url: str) -> None:
    _plant_faults(db_url)
    results = run.check_primary(db_url, KEY, NOW, 26, "manual__pii")
    failed = {f"{r['suite']}.{c['name']}": c["observed"] for r in results for c in r["checks"] if not c["success"]}
    assert failed == {
        "retention.expired_rows.closed_accounts": 1,
        "retention.expired_rows.expired_cookies": 1,
        "retention.expired_rows.visitor_ip_truncation": 1,
        "retention.expired_rows.visitor_logs_unlinked": 1,  # the same planted visit, still linked after 24 h
        "erasure_residue.identifier_kept_after_completion": 1,
        "erasure_deadlines.overdue_erasure_requests": 1,
    }
    sql_suites = [v for r in results for v in r["validations"] if v["suite_name"] in suites.generate(load_policy(), [])]
    assert {v["suite_name"] for v in sql_suites} == {"retention", "erasure_residue", "erasure_deadlines"}
    for validation in sql_suites:
        for result in validation["results"]:
            assert result["expectation_config"]["type"] == "unexpected_rows_expectation"
            assert set(result["result"]) <= {"observed_value"}, result["result"]  # a count, never rows
    stored = json.dumps(results)
    for kind, value in PII.items():
        assert value not in stored, kind


def test_data_docs_are_published_for_the_run_and_carry_no_row_values(db_url: str, s3_endpoint: str) -> None:
    """The verdict step publishes GX's HTML to the evidence bucket; the page's fetch reads it back by run id."""
    from lethe.audit import data_docs, results
    from lethe.config import BUCKETS, PRIMARY_REGION
    from lethe.storage import s3_client

    _plant_faults(db_url)
    run_id = "manual__2026-11-20T12:00:00+00:00"
    collected = run.check_primary(db_url, KEY, NOW, 26, run_id)
    with pytest.raises(results.AuditFailed):
        run.conclude(db_url, run_id, {"primary": collected}, endpoint_url=s3_endpoint)
    with transaction(db_url) as cur:
        cur.execute("SELECT data_docs, results::text FROM audit_runs WHERE run_id = %s", (run_id,))
        prefix, stored = cur.fetchone()
    assert prefix and prefix.startswith("data-docs/")
    assert "validations" not in stored  # audit_runs keeps the checks; GX's results went to the Data Docs

    client = s3_client(PRIMARY_REGION, s3_endpoint)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKETS.evidence, Prefix=prefix)["Contents"]]
    pages = [k for k in keys if k.endswith(".html")]
    assert prefix + "index.html" in keys
    assert any("/validations/retention/" in k for k in pages)
    for key in pages:
        html = client.get_object(Bucket=BUCKETS.evidence, Key=key)["Body"].read().decode()
        for kind, value in PII.items():
            assert value not in html, (kind, key)
    index = data_docs.fetch(db_url, s3_endpoint, run_id, "index.html")
    assert index is not None and index[1].startswith("text/html")
    assert b"validations/retention/" in index[0]  # the index links each suite's validation
    page = next(k for k in pages if "/validations/retention/" in k)
    fetched = data_docs.fetch(db_url, s3_endpoint, run_id, page[len(prefix) :])
    assert fetched is not None and b"expired_cookies" in fetched[0]  # the failed rule, by name
    assert data_docs.fetch(db_url, s3_endpoint, run_id, "../../ledger-anchors/x") is None
    assert data_docs.fetch(db_url, s3_endpoint, "no-such-run", "index.html") is None
