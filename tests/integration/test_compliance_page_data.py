"""The Privacy compliance page's HTML and JSON over a seeded primary: what it says, and no identifier in it.

The page is rendered by the plugin's own FastAPI app; only the login dependency is replaced
(authentication is the e2e test's subject, against a real Airflow api-server).
"""

from __future__ import annotations

import importlib.util
import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any

import pytest
from lethe.config import PROJECT_DIR
from lethe.db import transaction
from lethe.seed import seed

pytestmark = pytest.mark.integration
NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
# Every state of the lifecycle (some added by the approval work), plus one the page has never heard of.
STATES = [
    "awaiting_approval",
    "rejected",
    "planned",
    "erasing",
    "erased",
    "verified",
    "certified",
    "held",
    "failed",
    "no_data",
    "pending",
    "completed",
    "queued_behind_other_run",
]


class _User:
    def get_name(self) -> str:
        return "auditor"


def _plugin() -> ModuleType:
    path = PROJECT_DIR / "plugins" / "lethe_compliance" / "lethe_compliance_plugin.py"
    spec = importlib.util.spec_from_file_location("lethe_compliance_plugin_under_test", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check(name: str, success: bool, observed: int, where: str | None = None) -> dict[str, Any]:
    check: dict[str, Any] = {"name": name, "success": success, "observed": observed, "expected": 0}
    if where:
        check["where"] = where
    return check


def _populate(db_url: str) -> tuple[dict[str, str], set[str]]:
    """Seed people, requests in every state (their identifiers are seeded people's), 31 audits, a purge."""
    seed(db_url, 40, random_seed=3, now=NOW - timedelta(days=1))
    ids: dict[str, str] = {}
    with transaction(db_url) as cur:
        cur.execute("SELECT email, phone, username FROM accounts ORDER BY user_id")
        people = cur.fetchall()
        secrets = {value for row in people for value in row if value}
        # The approval work widens this constraint; the page must already cope with any state.
        cur.execute("ALTER TABLE erasure_requests DROP CONSTRAINT IF EXISTS erasure_requests_status_check")
        kinds = ("email", "phone", "username")
        for i, state in enumerate(STATES):
            kind = kinds[i % 3]
            rid = str(uuid.uuid4())
            ids[state] = rid
            cur.execute(
                "INSERT INTO erasure_requests (request_id, identifier_kind, identifier, reference, received_at,"
                " due_at, status) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (rid, kind, people[i][i % 3], f"TICKET-{i}", NOW - timedelta(days=10), NOW + timedelta(days=i), state),
            )
        where = "table accounts, column closed_at"
        for n in range(31):
            latest = n == 30
            checks = [
                _check("expired_rows.accounts_closed", not latest, 4 if latest else 0, where),
                _check("stale.accounts_closed", True, 0),
            ]
            results = [
                {"suite": "retention", "success": not latest, "checks": checks},
                {"suite": "ledger", "success": True, "checks": [_check("ledger_chain_broken", True, 0)]},
            ]
            failed = ["retention.expired_rows.accounts_closed"] if latest else []
            cur.execute(
                "INSERT INTO audit_runs (run_id, dag_id, audited_at, success, checks_total, checks_failed, failed,"
                " results) VALUES (%s, 'compliance_audit', %s, %s, 3, %s, %s, %s)",
                (
                    f"scheduled__{n:02d}",
                    NOW - timedelta(days=30 - n, hours=8),
                    not failed,
                    len(failed),
                    failed,
                    json.dumps(results),
                ),
            )
    return ids, secrets


@pytest.fixture
def client(db_url: str) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    plugin = _plugin()
    app = plugin.create_app()
    app.dependency_overrides[plugin.require_user] = lambda: _User()
    with TestClient(app) as test_client:
        yield test_client


def test_page_and_api_show_no_identifier_and_explain_states_checks_and_freshness(db_url: str, client: Any) -> None:
    ids, secrets = _populate(db_url)
    assert len(secrets) >= 100  # 40 people: email, phone and username each

    html = client.get("/").text
    api = client.get("/api/summary")
    assert api.status_code == 200
    for body in (html, api.text):
        leaked = sorted(s for s in secrets if s in body or json.dumps(s)[1:-1] in body)
        assert not leaked, f"{len(leaked)} seeded identifiers appear on the page"

    data = api.json()
    # Every request is there with a colour and a meaning; the unknown state is flagged, not dropped.
    shown = {e["request_id"]: e for e in data["erasures"]}
    assert set(shown) == set(ids.values())
    assert shown[ids["awaiting_approval"]]["meaning"].startswith("waiting for a second person")
    assert shown[ids["rejected"]]["days_left"] is None  # closed: no deadline to count down
    assert shown[ids["queued_behind_other_run"]]["meaning"].startswith("a state this page does not know")
    for state, rid in ids.items():
        assert re.search(rf'data-request="{rid}" data-state="{state}"', html), state

    # Audit: the failure first, with where/observed/expected and what to do; 30 runs of history.
    first = data["latest_checks"][0]
    assert (first["suite"], first["name"], first["success"]) == ("retention", "expired_rows.accounts_closed", False)
    assert (first["where"], first["observed"], first["expected"]) == ("table accounts, column closed_at", 4, 0)
    assert "retention_nightly" in first["action"] and first["doc"] == "docs/audit.md#when-it-fails"
    assert len(data["runs"]) == 30 and not data["runs"][0]["success"]
    assert html.count('class="pass"') == 29 and html.count('class="fail"') == 1
    assert "table accounts, column closed_at" in html and "rerun `retention_nightly`" in html

    # Freshness against the feeding DAG's schedule (the page's clock is now; the seed is older).
    fresh = data["freshness"]
    assert fresh["audit"]["stale"] and "no audit since" in fresh["audit"]["text"]
    assert fresh["purges"]["text"] == "no purge yet" and fresh["purges"]["dag_id"] == "retention_nightly"
    assert 'id="fresh-audit"' in html and "UTC" in fresh["audit"]["text"]


def test_filters_by_state_and_due_within_seven_days(db_url: str, client: Any) -> None:
    ids, _ = _populate(db_url)
    held = client.get("/api/summary", params={"state": "held"}).json()["erasures"]
    assert [e["request_id"] for e in held] == [ids["held"]]

    # Due dates are NOW + i days for the i-th state: open ones due within 7 days of the page's clock.
    with transaction(db_url) as cur:
        cur.execute(
            "SELECT request_id::text FROM erasure_requests WHERE due_at <= now() + interval '7 days'"
            " AND status NOT IN ('rejected', 'erased', 'verified', 'certified', 'no_data', 'completed', 'dry_run')"
        )
        due_soon = {r[0] for r in cur.fetchall()}
    assert due_soon  # the seeded deadlines are in the past of the wall clock, so all open ones qualify
    got = client.get("/api/summary", params={"due_within": 7}).json()["erasures"]
    assert {e["request_id"] for e in got} == due_soon
    assert client.get("/api/summary", params={"state": "DROP TABLE"}).status_code == 422
    page = client.get("/", params={"state": "held"}).text
    assert ids["held"] in page and ids["failed"] not in page


def test_freshness_words() -> None:
    from lethe.audit.dashboard import freshness

    now = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    assert freshness("purges", now - timedelta(hours=3), now).text == "last purge 3.0 hours ago (2026-11-02 06:00 UTC)"
    late = freshness("purges", now - timedelta(hours=27), now)
    assert late.stale and late.text.startswith("no purge since yesterday: last purge more than 26 hours ago")
    assert freshness("audit", None, now).text == "no audit yet"
    old = freshness("regions", now - timedelta(days=3), now)
    assert old.stale and old.text == "no complete snapshot since 2026-10-30 09:00 UTC: more than 26 hours ago"


@pytest.mark.parametrize(
    "name",
    [
        "retention.expired_rows.accounts_closed",
        "retention.stale.accounts_closed",
        "legal_holds.held_rows_removed",
        "erasure_residue.erased_subject_rows.accounts",
        "erasure_residue.erased_identifiers_left",
        "erasure_residue.identifier_kept_after_completion",
        "erasure_deadlines.overdue_erasure_requests",
        "backups.bucket_in_region.eu-west-1",
        "backups.snapshot_within_rpo.eu-west-1",
        "backups.manifest_mismatches.eu-west-1",
        "backups.tombstones_not_applied.eu-west-1",
        "backups.erased_mentions_left.eu-west-1",
        "shares.partner_a.min_group_size",
        "ledger.ledger_chain_broken",
        "ledger.ledger_tail_missing",
        "backups.suite_completed",
    ],
)
def test_every_documented_check_has_a_meaning_and_an_action(name: str) -> None:
    from lethe.audit.runbook import explain

    suite, check = name.split(".", 1)
    entry = explain(suite, check)
    assert entry and entry.meaning and entry.action, name


def test_a_suite_that_errored_is_explained_as_such_not_as_its_checks() -> None:
    from lethe.audit.runbook import explain

    entry = explain("shares", "suite_completed")
    assert entry and "task itself errored" in entry.meaning
