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
    app.dependency_overrides[plugin.may_erase] = lambda: True
    with TestClient(app) as test_client:
        test_client.plugin = plugin  # type: ignore[attr-defined]
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


def _person(db_url: str, offset: int) -> tuple[str, str]:
    """Email and phone of a seeded person no request names."""
    with transaction(db_url) as cur:
        cur.execute("SELECT email, phone FROM accounts ORDER BY user_id OFFSET %s LIMIT 1", (offset,))
        email, phone = cur.fetchone()
    return email, phone


def _append_at(cur: Any, at: datetime, kind: str, payload: dict[str, Any]) -> None:
    """A ledger entry recorded at `at` (the ledger stamps now()), chained like every other entry."""
    from lethe.ledger import GENESIS, _digest

    cur.execute("SELECT entry_hash FROM ledger ORDER BY entry_id DESC LIMIT 1")
    row = cur.fetchone()
    prev = row[0] if row else GENESIS
    stamp = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    cur.execute(
        "INSERT INTO ledger (recorded_at, kind, payload, prev_hash, entry_hash) VALUES (%s, %s, %s, %s, %s)",
        (stamp, kind, json.dumps(payload), prev, _digest(prev, kind, payload, stamp)),
    )


def _leaks(body: str, secrets: set[str]) -> list[str]:
    return sorted(s for s in secrets if s in body or json.dumps(s)[1:-1] in body)


def _populate_sections(db_url: str, ids: dict[str, str], secrets: set[str]) -> dict[str, Any]:
    """Sharing releases and spends, holds (one whose reference and reason name a person), processor receipts,
    purges and completed erasures over the last weeks, and tombstones with and without propagation."""
    now = datetime.now(UTC)
    email, phone = _person(db_url, 36)
    with transaction(db_url) as cur:
        for rid, recipient, status, published, suppressed, days_ago in [
            ("r-old", "research_partner", "published", 40, 3, 8),
            ("r-new", "research_partner", "published", 52, 6, 1),
            ("p-1", "public_report", "published", 9, 2, 2),
            ("p-2", "public_report", "refused", 0, 0, 1),
        ]:
            cur.execute(
                "INSERT INTO sharing_releases (release_id, recipient, status, window_start, window_end, days,"
                " cells_published, cells_suppressed, mechanism, created_at, finished_at)"
                " VALUES (%s, %s, %s, %s, %s, 7, %s, %s, 'none', %s, %s)",
                (
                    rid,
                    recipient,
                    status,
                    now - timedelta(days=days_ago + 7),
                    now - timedelta(days=days_ago),
                    published,
                    suppressed,
                    now - timedelta(days=days_ago, hours=-1),
                    now - timedelta(days=days_ago, hours=-1),
                ),
            )
        cur.execute(
            "INSERT INTO sharing_budget_spend (recipient, release_id, epsilon, days, spent_at)"
            " VALUES ('public_report', 'p-1', 7, 7, %s), ('public_report', 'p-1', 100, 7, %s)",
            (now - timedelta(days=2), now - timedelta(days=45)),  # the second is outside the 30-day period
        )
        cur.execute(
            "INSERT INTO legal_holds (hold_id, subject_key, reference, reason, placed_at) VALUES"
            " (901, '1', 'dispute D-2026-77 (legal team)', %s, %s),"
            " (902, '2', %s, 'litigation', %s),"
            " (903, '3', 'released one', 'x', %s)",
            (
                f"customer {email} disputes an invoice",
                now - timedelta(days=12),
                f"call {phone}",
                now - timedelta(days=3),
                now - timedelta(days=50),
            ),
        )
        cur.execute("UPDATE legal_holds SET released_at = now() WHERE hold_id = 903")
        cur.execute(
            "INSERT INTO processor_receipts (cause, subject_ref, processor, status, first_at, updated_at) VALUES"
            " ('erasure', 'a', 'mailchimp', 'pending', %s, %s), ('erasure', 'b', 'mailchimp', 'confirmed', %s, %s),"
            " ('objection', 'c', 'mailchimp', 'pending', %s, %s), ('erasure', 'a', 'amazon_ses', 'confirmed', %s, %s)",
            (now - timedelta(hours=30), now - timedelta(hours=1)) * 4,
        )
        # Purges: 120 rows three nights ago and 30 last night for one rule; a dry run that must not count.
        for rows, dry, days_ago in [(120, False, 3), (30, False, 1), (999, True, 1)]:
            _append_at(
                cur,
                now - timedelta(days=days_ago),
                "retention",
                {"rule": "closed_accounts", "dry_run": dry, "counts": {"done": rows}},
            )
        # Completed erasures: two within their deadline, one after it, in the current week.
        cur.execute(
            "UPDATE erasure_requests SET completed_at = %s, due_at = %s WHERE request_id = ANY(%s::uuid[])",
            (now, now + timedelta(days=5), [ids["completed"], ids["certified"]]),
        )
        cur.execute(
            "UPDATE erasure_requests SET completed_at = %s, due_at = %s WHERE request_id = %s",
            (now, now - timedelta(days=2), ids["verified"]),
        )
        # Tombstones: one erased 10 days ago applied in us-east-1 after 3 days, still pending in the other region.
        cur.execute(
            "INSERT INTO erasure_tombstones (subject_pseudonym, request_id, erased_at, identifier_pseudonyms)"
            " VALUES ('pz', %s, %s, '{}')",
            (ids["completed"], now - timedelta(days=10)),
        )
        cur.execute(
            "INSERT INTO backup_propagation_status (subject_pseudonym, region, status, applied_at) VALUES"
            " ('pz', 'us-east-1', 'applied', %s), ('pz', 'ap-southeast-1', 'pending', NULL)",
            (now - timedelta(days=7),),
        )
        cur.execute("UPDATE erasure_requests SET claimed_by = 'manual__2026-11-01T00:00:00+00:00'")
    return {"now": now}


def test_sections_links_and_charts_show_what_the_tables_hold_and_no_identifier(
    db_url: str, s3_endpoint: str, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lethe.config import PRIMARY_REGION
    from lethe.erasure import certificate
    from lethe.storage import s3_client

    monkeypatch.setenv("LETHE_S3_ENDPOINT_URL", s3_endpoint)
    ids, secrets = _populate(db_url)
    _populate_sections(db_url, ids, secrets)
    cert = certificate.build({"request_id": ids["certified"], "reference": "TICKET-6", "kind": "email"}, "v1")
    certificate.write(s3_client(PRIMARY_REGION, s3_endpoint), cert)

    html = client.get("/").text
    api = client.get("/api/summary")
    cert_page = client.get(f"/certificates/{ids['certified']}")
    cert_json = client.get(f"/certificates/{ids['certified']}.json")
    for body in (html, api.text, cert_page.text, cert_json.text):
        assert not _leaks(body, secrets), "a seeded identifier appears on the page"
    data = api.json()

    # Requests link to their run, their approval (when they went through one) and their certificate.
    rows = {e["request_id"]: e for e in data["erasures"]}
    run = "/dags/subject_erasure/runs/manual__2026-11-01T00%3A00%3A00%2B00%3A00"
    assert rows[ids["pending"]]["run_url"] == run
    assert rows[ids["awaiting_approval"]]["approval_url"] == run + "/required_actions"
    assert rows[ids["pending"]]["approval_url"] is None
    assert rows[ids["certified"]]["certificate_url"].endswith(f"/lethe-compliance/certificates/{ids['certified']}")
    assert rows[ids["pending"]]["certificate_url"] is None
    assert cert_page.status_code == 200 and "TICKET-6" in cert_page.text
    assert cert_json.json()["request_id"] == ids["certified"]
    assert client.get(f"/certificates/{ids['completed']}").status_code == 404  # not written
    assert client.get("/certificates/not-a-uuid").status_code == 422

    # Sharing: the last published release per recipient; epsilon spent within the 30-day period only.
    with transaction(db_url) as cur:
        cur.execute(
            "SELECT coalesce(sum(epsilon), 0) FROM sharing_budget_spend WHERE recipient = 'public_report'"
            " AND spent_at > now() - interval '30 days'"
        )
        spent = float(cur.fetchone()[0])
    sharing = {r["recipient"]: r for r in data["sharing"]}
    assert (sharing["research_partner"]["cells_published"], sharing["research_partner"]["cells_suppressed"]) == (52, 6)
    assert sharing["research_partner"]["epsilon_spent"] is None  # k-anonymous cells, no budget
    assert sharing["public_report"]["epsilon_spent"] == spent == 7
    assert sharing["public_report"]["epsilon_left"] == 60 - spent
    assert sharing["public_report"]["last_attempt_status"] == "refused"
    assert 'data-recipient="public_report"' in html

    # Holds: the two active ones, oldest first; a reference naming a person is withheld; reasons never shown.
    holds = data["holds"]
    assert [h["hold_id"] for h in holds] == [901, 902]
    assert holds[0]["reference"] == "dispute D-2026-77 (legal team)" and 11.9 < holds[0]["age_days"] < 12.1
    assert holds[1]["reference"].startswith("withheld")
    assert "disputes an invoice" not in html and "litigation" not in html

    # Processors: pending receipts and the lag of the oldest pending one.
    procs = {p["processor"]: p for p in data["processors"]}
    assert (procs["mailchimp"]["pending_erasures"], procs["mailchimp"]["pending_objections"]) == (1, 1)
    assert procs["mailchimp"]["done"] == 1 and 29.9 < procs["mailchimp"]["lag_hours"] < 30.5
    assert procs["amazon_ses"]["pending_erasures"] == 0 and procs["amazon_ses"]["lag_hours"] == 0
    assert procs["mixpanel"]["done"] == 0  # never called: listed all the same

    # Charts: the purge series skips the dry run; erasures per week; lag per region from the tombstone.
    purged = {s["name"]: s for s in data["charts"]["purged_per_night"]}
    assert sum(v for _, v in purged["closed_accounts"]["points"]) == 150
    week = {s["name"]: s["points"][-1][1] for s in data["charts"]["erasures_per_week"]}
    assert week == {"within deadline": 2, "after deadline": 1}
    lag = {s["name"]: s["points"] for s in data["charts"]["lag_per_region"]}
    assert lag["us-east-1"][-1][1] == 0 and 239 < lag["ap-southeast-1"][-1][1] < 241
    assert max(v for _, v in lag["us-east-1"]) > 48  # it waited three days before it was applied
    for chart in ("chart-erasures", "chart-lag", "chart-purged"):
        assert f'id="{chart}"' in html
    assert "<svg" in html and "http://" not in html.split("<svg", 1)[1].replace("http://www.w3.org/2000/svg", "")


def test_metadata_section_counts_erasure_runs_airflow_still_holds(db_url: str, airflow_home: Any, client: Any) -> None:
    from airflow.models.dagrun import DagRun
    from lethe.ops.metadata import engine
    from sqlalchemy import delete, insert

    _populate(db_url)
    now = datetime.now(UTC)
    table = DagRun.__table__
    url = client.plugin.metadata_url()
    runs = [
        ("subject_erasure", "form", "success", {"request_id": str(uuid.uuid4())}, now - timedelta(hours=3)),
        ("subject_erasure", "ui", "success", {"identifier": "someone@example.com"}, now - timedelta(hours=2)),
        ("subject_erasure", "cleared", "success", {}, now - timedelta(days=2)),
        ("subject_erasure", "going", "running", {"request_id": "x"}, None),
        ("retention_nightly", "n1", "success", {}, now - timedelta(days=5)),
    ]
    # The session's metadata database also holds the runs of earlier tests: count what these add to them.
    before = client.get("/api/summary").json()["metadata"]
    with engine(url).begin() as db:
        db.execute(delete(table).where(table.c.run_id.in_([r[1] for r in runs])))
        for i, (dag_id, run_id, state, conf, end) in enumerate(runs):
            db.execute(
                insert(table).values(
                    dag_id=dag_id,
                    run_id=run_id,
                    run_type="manual",
                    state=state,
                    conf=conf,
                    end_date=end,
                    start_date=now - timedelta(days=6 - i),
                    run_after=now,
                )
            )
    try:
        meta = client.get("/api/summary").json()["metadata"]
        html = client.get("/").text
    finally:
        with engine(url).begin() as db:
            db.execute(delete(table).where(table.c.run_id.in_([r[1] for r in runs])))
    assert meta["reachable"]
    assert meta["finished_runs_with_conf"] - before["finished_runs_with_conf"] == 2
    assert meta["runs_naming_a_person"] - before["runs_naming_a_person"] == 1
    assert meta["active_runs"] - before["active_runs"] == 1 and meta["lethe_runs"] - before["lethe_runs"] == 5
    first_clear = datetime.fromisoformat(meta["next_clear_at"])
    assert abs((first_clear - (now - timedelta(hours=3) + timedelta(days=1))).total_seconds()) < 2
    assert 'id="metadata-runs-naming"' in html and "someone@example.com" not in html


def test_erase_form_refuses_an_identifier_in_the_reference_and_writes_nothing(
    db_url: str, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, secrets = _populate(db_url)
    person, phone = _person(db_url, 35)
    triggered: list[str] = []
    monkeypatch.setattr(client.plugin, "trigger_erasure", lambda rid, user: triggered.append(rid) or "manual__x")
    page = client.get("/").text
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)  # type: ignore[union-attr]
    with transaction(db_url) as cur:
        cur.execute("SELECT count(*) FROM erasure_requests")
        before = cur.fetchone()[0]

    for field, text in [("reference", f"ticket for {person}"), ("reason", f"asked by phone {phone}")]:
        form = {"identifier_kind": "email", "identifier": person, "csrf": csrf, field: text}
        refused = client.post("/erase", data=form, follow_redirects=False)
        assert refused.status_code == 400
        assert f"the {field} holds" in refused.text and 'id="erase-error"' in refused.text
        assert not _leaks(refused.text, secrets)  # neither the identifier nor the note is echoed
    forged = client.post("/erase", data={"identifier_kind": "email", "identifier": person, "csrf": "0" * 40})
    assert forged.status_code == 400
    with transaction(db_url) as cur:
        cur.execute("SELECT count(*) FROM erasure_requests")
        assert cur.fetchone()[0] == before
    assert not triggered

    # A clean submission writes the request (a dry run unless ticked) and triggers with its id only.
    done = client.post(
        "/erase",
        data={"identifier_kind": "email", "identifier": person, "csrf": csrf, "reference": "T-2026-0042"},
        follow_redirects=False,
    )
    assert done.status_code == 303 and person not in done.headers["location"]
    with transaction(db_url) as cur:
        cur.execute(
            "SELECT request_id::text, dry_run, reference FROM erasure_requests WHERE identifier = %s"
            " AND status = 'pending'",
            (person,),
        )
        ((request_id, dry_run, reference),) = cur.fetchall()
    assert triggered == [request_id] and dry_run and reference == "T-2026-0042"
    assert f"erase_request={request_id}" in done.headers["location"]
    shown = client.get(done.headers["location"].split("/lethe-compliance", 1)[-1] or "/").text
    assert 'id="erase-submitted"' in shown and not _leaks(shown, secrets)


def test_erase_form_is_not_offered_to_users_airflow_does_not_let_trigger_the_dag(db_url: str, client: Any) -> None:
    _populate(db_url)
    client.app.dependency_overrides[client.plugin.may_erase] = lambda: False
    page = client.get("/").text
    assert 'id="erase-not-allowed"' in page and 'id="erase-form"' not in page
    refused = client.post("/erase", data={"identifier_kind": "email", "identifier": "a@b.co", "csrf": "x"})
    assert refused.status_code == 403
