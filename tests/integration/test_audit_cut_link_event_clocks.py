"""The audit's event clocks recognise rows whose link retention cut: an expired cut-link row is reported.

The citext shop of test_retention_citext_clocks: visits whose link retention cuts a day after the visit (each keeps
its customer's keyed pseudonym), deleted a week after her marketing consent ended (`consent_ended:marketing`) or
her account closed (`account_closed`). Anna's clock started on 2026-11-10; a hold on her keeps her cut-link visits
through the run. Once the hold is released, the audit's `expired_rows.<rule>` must count them (the retention
executor recognises them by her pseudonym, and would delete them on its next run); Cleo, whose clock never
started, has a cut-link visit that must not count. Rows are planted and read back with this test's own SQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import own_schema
import psycopg2
import pytest
from lethe import testing
from test_audit_citext_holds import release
from test_erasure_citext_key import KEY, SCHEMA, SEED, q
from test_retention_citext_clocks import CLOCKS, CLOCKS_POLICY, run
from test_retention_citext_clocks import shop as clocks_shop  # noqa: F401  (the fixture)
from test_retention_citext_key import NOW, VISITS

pytestmark = pytest.mark.integration


def expired(url: str, rule: str) -> dict[str, object]:
    from lethe.audit import primary
    from lethe.policy import load_policy

    result = primary.check_retention(url, load_policy(), datetime.now(UTC))
    [check] = [c for c in result.checks if c["name"] == f"expired_rows.{rule}"]
    return check


@pytest.mark.parametrize("rule", ["visits_after_objection", "visits_after_closing"])
def test_her_expired_cut_link_visits_are_reported_once_her_hold_is_released(
    clocks_shop: str,  # noqa: F811
    rule: str,
) -> None:
    from lethe.db import migrate

    migrate(clocks_shop)
    # Cleo: consent given and running, account open; her visit is as old as the others
    q(
        clocks_shop,
        "INSERT INTO customers VALUES ('cleo@example.net', 'Cleo Cole');"
        " INSERT INTO visits VALUES (24, 'cleo@example.net', NULL, '2026-11-05');"
        " INSERT INTO consents VALUES (32, 'cleo@example.net', 'marketing', '2026-10-01', NULL, NULL);"
        " INSERT INTO accounts VALUES (42, 'cleo@example.net', NULL)",
    )
    run(clocks_shop, "visits_unlinked")
    assert q(clocks_shop, "SELECT count(*) FROM visits WHERE customer IS NULL AND customer_pseudonym IS NOT NULL") == [
        (5,)
    ]
    q(
        clocks_shop,
        "INSERT INTO lethe.legal_holds (hold_id, subject_key, reason, placed_at)"
        " VALUES (1, 'anna@EXAMPLE.com', 'litigation', now())",
    )
    run(clocks_shop, rule)
    # Bob's visit went with his clock; Anna's three stay under her hold, Cleo's under no clock
    assert q(clocks_shop, "SELECT visit_id FROM visits ORDER BY 1") == [(20,), (21,), (22,), (24,)]
    check = expired(clocks_shop, rule)
    assert check["success"] and check["observed"] == 0, check

    release(clocks_shop)
    check = expired(clocks_shop, rule)
    # her three visits are past her clock's week and no longer held; Cleo's is not past any clock
    assert not check["success"] and check["observed"] == 3, check
    # the retention rule agrees: its next run takes exactly those three
    run(clocks_shop, rule)
    assert q(clocks_shop, "SELECT visit_id FROM visits ORDER BY 1") == [(24,)]
    check = expired(clocks_shop, rule)
    assert check["success"] and check["observed"] == 0, check


# The same shop with a page column on visits that a rule blanks ten days after the visit, after the rules deleting
# visits a week after the customer's clock; and notes referencing visits, which keep a visit those rules would
# delete. Such a visit is the deleting rule's (the scrubbing rule leaves it, and the audit allows it), whether its
# link is cut or not.
SCRUB_POLICY = (
    CLOCKS_POLICY.replace(
        "customer_pseudonym: pseudonym, visited_at: timestamp}",
        "customer_pseudonym: pseudonym, visited_at: timestamp, page: usage}",
    )
    .replace(
        "      - {name: visits_expired,",
        """      - {name: visits_scrubbed, keep: P10D, after: visited_at, action: anonymise, columns: {page: "null"}}
      - {name: visits_expired,""",
    )
    .replace(
        "tables:\n",
        """tables:
  visit_notes:
    description: Notes on visits, naming no one
    purpose: sales
    legal_basis: contract
    backup: true
    subject: null
    columns: {note_id: identifier, visit_id: identifier}
    retain_indefinitely: "Kept with the visit"
""",
        1,
    )
)

SCRUB = """
ALTER TABLE visits ADD COLUMN page text;
UPDATE visits SET page = '/home';
CREATE TABLE visit_notes (note_id bigint PRIMARY KEY, visit_id bigint NOT NULL REFERENCES visits (visit_id));
INSERT INTO visit_notes VALUES (50, 20);
"""


@pytest.fixture
def scrub_shop(services: tuple[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    url = testing.empty_database(services[0], "lethe_audit_cut_link_scrub")
    with closing(psycopg2.connect(url)) as conn, conn, conn.cursor() as cur:
        for statement in (SCHEMA, SEED, VISITS, CLOCKS, SCRUB):
            cur.execute(statement)
    path = tmp_path / "policy.yaml"
    path.write_text(SCRUB_POLICY)
    own_schema.as_primary(monkeypatch, url, path)
    monkeypatch.setattr("lethe.connections.pseudonym_key", lambda: KEY)
    yield url
    testing.drop_database(url)


def run_together(url: str, *rules: str) -> None:
    """One plan of the rules, executed in policy order, as a night of retention_nightly runs them."""
    from lethe.db import transaction
    from lethe.policy import load_policy
    from lethe.retention.execute import execute_rule
    from lethe.retention.plan import build_plan

    with transaction(url) as cur:
        plan = build_plan(cur, NOW, policy=load_policy(), rules=list(rules))
    for rule in rules:
        execute_rule(url, plan, rule, policy=load_policy())


@pytest.mark.parametrize("cut", [True, False])
def test_her_referenced_visit_a_deleting_event_rule_takes_is_no_alarm_for_the_scrubbing_rule(
    scrub_shop: str, cut: bool
) -> None:
    from lethe.db import migrate

    migrate(scrub_shop)
    if cut:
        run(scrub_shop, "visits_unlinked")
        assert q(scrub_shop, "SELECT count(*) FROM visits WHERE customer IS NOT NULL") == [(0,)]
    run_together(scrub_shop, "visits_after_objection", "visits_after_closing", "visits_scrubbed")
    # her visit 20 stays, a note referencing it; the deleting rules take it, so the scrubbing rule left its page
    assert q(scrub_shop, "SELECT visit_id, page FROM visits ORDER BY 1") == [(20, "/home")]
    check = expired(scrub_shop, "visits_scrubbed")
    assert check["success"] and check["observed"] == 0, check
    # the note goes: the deleting rules' next run takes her visit
    q(scrub_shop, "DELETE FROM visit_notes")
    run(scrub_shop, "visits_after_closing")
    assert q(scrub_shop, "SELECT count(*) FROM visits") == [(0,)]


def test_the_repositorys_policy_reports_her_cut_link_usage_events_after_her_analytics_consent_ended(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """re:Skill's usage_events: the link cut a day after the event, deleted once analytics consent ended. Events of
    user 1 (consent withdrawn five days ago) and user 2 (consent running) are planted with their links already cut,
    each pseudonym the HMAC of `user_id:<id>` computed here; every rule recorded a run as of NOW."""
    import hashlib
    import hmac
    from datetime import timedelta

    from lethe.audit import primary
    from lethe.db import transaction
    from lethe.policy import load_policy
    from test_audit_checks import NOW as AUDIT_NOW
    from test_audit_checks import add_account, ran_retention

    key = b"audit-cut-link-clock-key"
    monkeypatch.setattr("lethe.connections.pseudonym_key", lambda: key)

    def keyed(user_id: int) -> str:
        return hmac.new(key, f"user_id:{user_id}".encode(), hashlib.sha256).hexdigest()

    policy = load_policy()
    with transaction(db_url) as cur:
        for user_id, withdrawn in [(1, AUDIT_NOW - timedelta(days=5)), (2, None)]:
            add_account(cur, user_id)
            cur.execute(
                "INSERT INTO consents (consent_id, user_id, purpose, granted_at, withdrawn_at)"
                " VALUES (%s, %s, 'analytics', %s, %s)",
                (user_id, user_id, AUDIT_NOW - timedelta(days=100), withdrawn),
            )
            for n in range(2):
                cur.execute(
                    "INSERT INTO usage_events (event_id, user_id, occurred_at, feature, duration_ms, subject_pseudonym)"
                    " VALUES (%s, NULL, %s, 'quiz', 100, %s)",
                    (user_id * 10 + n, AUDIT_NOW - timedelta(days=10 + n), keyed(user_id)),
                )
        ran_retention(cur, policy)
    result = primary.check_retention(db_url, policy, AUDIT_NOW)
    checks = {c["name"]: c for c in result.checks}
    # user 1's two cut-link events are past her consent's end; user 2's are not past anything
    objection = checks["expired_rows.usage_after_analytics_objection"]
    assert not objection["success"] and objection["observed"] == 2, objection
    for rule in ("usage_events_unlinked", "usage_without_analytics_consent", "raw_usage_events"):
        assert checks[f"expired_rows.{rule}"]["success"], checks[f"expired_rows.{rule}"]
    # the retention rule agrees: as of NOW it deletes exactly those two
    from lethe.retention.execute import execute_rule
    from lethe.retention.plan import build_plan

    with transaction(db_url) as cur:
        plan = build_plan(cur, AUDIT_NOW, policy=policy, rules=["usage_after_analytics_objection"])
    execute_rule(db_url, plan, "usage_after_analytics_objection", policy=policy)
    assert q(db_url, "SELECT event_id FROM usage_events ORDER BY 1") == [(20,), (21,)]
    result = primary.check_retention(db_url, policy, AUDIT_NOW)
    [after] = [c for c in result.checks if c["name"] == "expired_rows.usage_after_analytics_objection"]
    assert after["success"] and after["observed"] == 0, after
