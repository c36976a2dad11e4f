"""The audit's checks over a real PostgreSQL: each passes on a clean state and fails, by name, on a planted fault."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from lethe import ledger
from lethe.audit import primary, results
from lethe.audit.ledger_checks import check_ledger
from lethe.db import transaction
from lethe.policy import load_policy
from lethe.pseudonym import pseudonym, subject_pseudonym

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
KEY = b"audit-test-key"
CREATED = NOW - timedelta(days=700)


def add_account(cur, user_id: int, *, closed_days_ago: int | None = None) -> None:
    closed = NOW - timedelta(days=closed_days_ago) if closed_days_ago is not None else None
    cur.execute(
        "INSERT INTO accounts (user_id, name, username, email, password_hash, created_at, closed_at)"
        " VALUES (%s, %s, %s, %s, 'x', %s, %s)",
        (
            user_id,
            f"Person {user_id}",
            f"user{user_id}",
            f"user{user_id}@example.com",
            NOW - timedelta(days=700),
            closed,
        ),
    )


def add_session(cur, session_id: int, user_id: int, expires_days_ago: float) -> None:
    cur.execute(
        "INSERT INTO sessions (session_id, user_id, cookie_id, kind, created_at, expires_at)"
        " VALUES (%s, %s, %s, 'persistent', %s, %s)",
        (session_id, user_id, f"c{session_id}", NOW - timedelta(days=40), NOW - timedelta(days=expires_days_ago)),
    )


def add_hold(cur, hold_id: int, user_id: int) -> None:
    cur.execute(
        "INSERT INTO legal_holds (hold_id, subject_key, reason, placed_at) VALUES (%s, %s, 'litigation', %s)",
        (hold_id, str(user_id), NOW - timedelta(days=10)),
    )


def failed(result) -> list[str]:
    return result.failed


def ran_retention(cur, policy, as_of: datetime = NOW) -> None:
    """Record that every rule completed a run as of `as_of` (the ledger entry retention writes)."""
    for table, rule in policy.rules():
        cutoff = as_of - rule.keep.to_timedelta()
        payload = {"rule": rule.name, "table": table, "now": as_of.isoformat(), "cutoff": cutoff.isoformat()}
        ledger.append(cur, "retention", payload | {"dry_run": False})


def test_retention_passes_when_only_live_rows_remain(db_url: str) -> None:
    policy = load_policy()
    with transaction(db_url) as cur:
        add_account(cur, 1)
        add_session(cur, 1, 1, expires_days_ago=-3)  # expires in three days
        ran_retention(cur, policy)
    result = primary.check_retention(db_url, policy, NOW)
    assert result.success, result.failed
    names = {rule.name for _, rule in policy.rules()}
    assert {c["name"] for c in result.checks} == {f"expired_rows.{n}" for n in names} | {f"stale.{n}" for n in names}


def test_a_rule_that_never_ran_or_ran_too_long_ago_is_stale_not_expired(db_url: str) -> None:
    policy = load_policy()
    with transaction(db_url) as cur:
        add_account(cur, 1)
        add_session(cur, 1, 1, expires_days_ago=2)  # expired before any run
    never = primary.check_retention(db_url, policy, NOW)
    with transaction(db_url) as cur:
        ran_retention(cur, policy, NOW - timedelta(hours=30))
    late = primary.check_retention(db_url, policy, NOW)
    on_time = primary.check_retention(db_url, policy, NOW - timedelta(hours=5))
    names = {rule.name for _, rule in policy.rules()}
    # Nothing has run: every rule is stale, and there is no run to judge expired rows against.
    assert set(failed(never)) == {f"stale.{n}" for n in names}
    # The last run is 30 hours old: stale; the row it should have purged is left behind as well.
    assert set(failed(late)) == {f"stale.{n}" for n in names} | {"expired_rows.expired_cookies"}
    stale = next(c for c in late.checks if c["name"] == "stale.expired_cookies")
    assert stale["details"]["last_run_as_of"] == (NOW - timedelta(hours=30)).isoformat()
    assert "table sessions" in stale["where"]
    assert set(failed(on_time)) == {"expired_rows.expired_cookies"}


def test_an_expired_row_fails_its_rule_unless_the_person_is_held(db_url: str) -> None:
    policy = load_policy()
    with transaction(db_url) as cur:
        add_account(cur, 1)
        add_account(cur, 2)
        add_session(cur, 1, 1, expires_days_ago=2)
        add_session(cur, 2, 2, expires_days_ago=2)
        add_hold(cur, 1, 2)
        ran_retention(cur, policy)
    result = primary.check_retention(db_url, policy, NOW)
    assert failed(result) == ["expired_rows.expired_cookies"]
    check = next(c for c in result.checks if c["name"] == "expired_rows.expired_cookies")
    assert check["observed"] == 1  # the held person's session does not count


def test_event_rules_closed_accounts_and_withdrawn_consent(db_url: str) -> None:
    policy = load_policy()
    with transaction(db_url) as cur:
        add_account(cur, 1, closed_days_ago=45)  # past closed_accounts (P30D)
        add_account(cur, 2, closed_days_ago=5)  # still within it
        add_account(cur, 3)
        cur.execute(
            "INSERT INTO consents (consent_id, user_id, purpose, granted_at, withdrawn_at)"
            " VALUES (1, 3, 'marketing', %s, %s)",
            (NOW - timedelta(days=300), NOW - timedelta(days=2)),
        )
        cur.execute(
            "INSERT INTO marketing_contacts (contact_id, user_id, email, list_name, subscribed_at)"
            " VALUES (1, 3, 'user3@example.com', 'news', %s)",
            (NOW - timedelta(days=300),),
        )
        ran_retention(cur, policy)
    result = primary.check_retention(db_url, policy, NOW)
    assert set(failed(result)) == {"expired_rows.closed_accounts", "expired_rows.marketing_after_objection"}


def test_anonymise_rule_checks_the_columns_not_the_row(db_url: str) -> None:
    policy = load_policy()
    with transaction(db_url) as cur:
        add_account(cur, 1)
        # Consented to analytics: the visits may stay (visits_without_analytics_consent), only the columns are judged.
        cur.execute(
            "INSERT INTO consents (consent_id, user_id, purpose, granted_at) VALUES (1, 1, 'analytics', %s)",
            (NOW - timedelta(days=600),),
        )
        rows = [(1, "203.0.113.0/24", None), (2, "203.0.113.77", None), (3, "203.0.113.0/24", "Mozilla")]
        for log_id, ip, agent in rows:
            cur.execute(
                "INSERT INTO visitor_logs (log_id, user_id, visitor_id, occurred_at, ip_address, user_agent)"
                " VALUES (%s, 1, 'v', %s, %s, %s)",
                (log_id, NOW - timedelta(days=10), ip, agent),
            )
        ran_retention(cur, policy)
    result = primary.check_retention(db_url, policy, NOW)
    check = next(c for c in result.checks if c["name"] == "expired_rows.visitor_ip_truncation")
    assert check["observed"] == 2  # a full IP, and a kept user agent; the truncated, nulled row is fine
    # Ten days old and still linked to the account: past visitor_logs_unlinked's 24 h as well.
    assert sorted(failed(result)) == ["expired_rows.visitor_ip_truncation", "expired_rows.visitor_logs_unlinked"]


def test_erasure_residue_names_each_table_still_holding_the_person(db_url: str) -> None:
    policy = load_policy()
    with transaction(db_url) as cur:
        add_account(cur, 1)
        add_account(cur, 2)
        add_session(cur, 1, 2, expires_days_ago=-1)
        cur.execute(
            "INSERT INTO erasure_tombstones (subject_pseudonym, identifier_pseudonyms) VALUES (%s, %s)",
            (subject_pseudonym(KEY, 2), [pseudonym(KEY, "email", "USER2@example.com")]),
        )
    result = primary.check_erasure(db_url, policy, KEY, NOW)
    assert set(failed(result)) == {
        "erased_subject_rows.accounts",
        "erased_subject_rows.sessions",
        "erased_identifiers_left",
    }
    observed = {c["name"]: c["observed"] for c in result.checks}
    assert observed["erased_subject_rows.accounts"] == 1
    assert observed["erased_subject_rows.comments"] == 0
    assert "user2" not in json.dumps(result.as_dict(validations=True))  # names and counts only


def test_erasure_passes_once_the_person_is_gone_and_request_closed(db_url: str) -> None:
    policy = load_policy()
    with transaction(db_url) as cur:
        add_account(cur, 1)
        cur.execute(
            "INSERT INTO erasure_tombstones (subject_pseudonym, identifier_pseudonyms) VALUES (%s, %s)",
            (subject_pseudonym(KEY, 2), [pseudonym(KEY, "email", "user2@example.com")]),
        )
        cur.execute(
            "INSERT INTO erasure_requests (request_id, identifier_kind, identifier, due_at, status)"
            " VALUES (%s, 'email', NULL, %s, 'completed')",
            (str(uuid.uuid4()), NOW + timedelta(days=20)),
        )
    assert primary.check_erasure(db_url, policy, KEY, NOW).success
    with transaction(db_url) as cur:
        cur.execute(
            "INSERT INTO erasure_requests (request_id, identifier_kind, identifier, due_at, status)"
            " VALUES (%s, 'email', 'user9@example.com', %s, 'completed')",
            (str(uuid.uuid4()), NOW + timedelta(days=20)),
        )
    assert failed(primary.check_erasure(db_url, policy, KEY, NOW)) == ["identifier_kept_after_completion"]


def test_overdue_open_requests_fail_the_deadline_check(db_url: str) -> None:
    with transaction(db_url) as cur:
        for status, due in [("pending", 3), ("completed", -10), ("held", -2)]:
            cur.execute(
                "INSERT INTO erasure_requests (request_id, identifier_kind, identifier, due_at, status)"
                " VALUES (%s, 'user_id', '1', %s, %s)",
                (str(uuid.uuid4()), NOW + timedelta(days=due), status),
            )
    assert primary.check_deadlines(db_url, NOW).success
    with transaction(db_url) as cur:
        cur.execute(
            "INSERT INTO erasure_requests (request_id, identifier_kind, identifier, due_at, status)"
            " VALUES (%s, 'user_id', '2', %s, 'pending')",
            (str(uuid.uuid4()), NOW - timedelta(days=1)),
        )
    result = primary.check_deadlines(db_url, NOW)
    assert failed(result) == ["overdue_erasure_requests"]
    details = result.checks[0]["details"]
    assert (details["due_soon"], details["overdue_but_held"]) == (1, 1)


def test_held_rows_may_grow_but_never_shrink(db_url: str) -> None:
    policy = load_policy()
    with transaction(db_url) as cur:
        add_account(cur, 1)
        add_hold(cur, 7, 1)
        add_session(cur, 1, 1, expires_days_ago=5)
        add_session(cur, 2, 1, expires_days_ago=5)
        before = primary.held_rows(cur, policy)
        assert before["7"]["sessions"] == 2
        assert primary.check_holds(before, None).success  # first audit: baseline
        cur.execute("DELETE FROM sessions WHERE session_id = 2")
        after = primary.held_rows(cur, policy)
    result = primary.check_holds(after, before)
    assert failed(result) == ["held_rows_removed"]
    assert result.checks[0]["details"]["tables"] == {"sessions": 1}


def test_ledger_check_fails_on_a_broken_link(db_url: str, s3_endpoint: str) -> None:
    from lethe.config import BUCKETS, PRIMARY_REGION
    from lethe.storage import s3_client

    client = s3_client(PRIMARY_REGION, s3_endpoint)
    with transaction(db_url) as cur:
        for n in range(3):
            ledger.append(cur, "retention", {"rule": "expired_cookies", "table": "sessions", "counts": {"deleted": n}})
        assert check_ledger(cur, client, BUCKETS.evidence).success
        cur.execute("ALTER TABLE ledger DISABLE TRIGGER ledger_append_only")
        cur.execute("UPDATE ledger SET payload = jsonb_set(payload, '{counts,deleted}', '99') WHERE entry_id = 2")
        result = check_ledger(cur, client, BUCKETS.evidence)
    assert failed(result) == ["ledger_chain_broken"]
    assert result.checks[0]["details"]["first_broken_entry"] == 2


def test_results_are_kept_and_the_verdict_names_failed_checks(db_url: str) -> None:
    policy = load_policy()
    with transaction(db_url) as cur:
        add_account(cur, 1)
        add_session(cur, 1, 1, expires_days_ago=1)
        ran_retention(cur, policy)
    outcome = results.outcome("run-1", [primary.check_retention(db_url, policy, NOW).as_dict()])
    with transaction(db_url) as cur:
        results.record(cur, outcome, {"3": {"sessions": 1}})
        assert results.previous_held_rows(cur, "run-2") == {"3": {"sessions": 1}}
        assert results.previous_held_rows(cur, "run-1") is None
        kept = results.latest(cur)
    with pytest.raises(results.AuditFailed, match=r"retention\.expired_rows\.expired_cookies"):
        results.verdict(outcome)
    from lethe.audit.demo import summary

    lines = summary(db_url, "")
    assert lines[-1] == "VERDICT: NOT COMPLIANT: retention.expired_rows.expired_cookies"
    assert any(line.strip().startswith("retention") and "FAILED" in line for line in lines)
    assert kept[0]["run_id"] == "run-1" and kept[0]["failed"] == ["retention.expired_rows.expired_cookies"]
    assert kept[0]["checks_failed"] == 1 and not kept[0]["success"]


def test_erasure_scan_finds_an_erased_person_by_value_in_any_spelling(db_url: str) -> None:
    """Keyed pseudonyms written here with the standard library; the rows with plain SQL."""
    import hashlib
    import hmac

    def keyed(kind: str, value: str) -> str:
        return hmac.new(KEY, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()

    policy = load_policy()
    with transaction(db_url) as cur:
        add_account(cur, 1)
        add_account(cur, 3)
        cur.execute(
            "INSERT INTO erasure_tombstones (subject_pseudonym, identifier_pseudonyms) VALUES (%s, %s)",
            (
                subject_pseudonym(KEY, 2),
                [keyed("email", "asha@example.com"), keyed("phone", "+919876543210"), keyed("name", "asha rao")],
            ),
        )
        assert primary.check_erasure_scan(cur, policy, KEY).success
        cur.execute(
            "INSERT INTO comments VALUES (1, 1, 'ring Asha Rao on 098765 43210', now()), (2, 1, 'nothing here', now())"
        )
        cur.execute("INSERT INTO app_data VALUES (1, 1, 'labs', '{\"contact\": \"ASHA@EXAMPLE.COM\"}', now())")
        cur.execute(
            "INSERT INTO legal_holds (hold_id, subject_key, reason, placed_at)"
            " VALUES (1, '3', 'about asha@example.com', now())"
        )
        result = primary.check_erasure_scan(cur, policy, KEY)
    observed = {c["name"]: c["observed"] for c in result.checks}
    assert observed == {
        "erased_found_by_value": 2,
        "erased_found_by_value.app_data.payload": 1,
        "erased_found_by_value.comments.body": 1,
    }
    # the kept reason of a hold on someone else is allowed and reported, not failed
    details = next(c for c in result.checks if c["name"] == "erased_found_by_value")["details"]
    assert details["kept_or_held"] == {"legal_holds.reason": 1}
    assert "asha" not in json.dumps(result.as_dict()).lower()
