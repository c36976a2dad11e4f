# ruff: noqa: S608 - the SQL here is built from the test's own constants, never from input
"""retention_nightly end to end with dag.test() on seeded data.

The expected outcome is computed here with the test's own SQL, written from
the policy's words (not from lethe.retention's predicate builder).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from lethe.db import transaction
from lethe.seed import seed

pytestmark = pytest.mark.dags

NOW = datetime(2026, 11, 20, 1, 15, tzinfo=UTC)
UNHELD = "NOT EXISTS (SELECT 1 FROM legal_holds h WHERE h.subject_key = t.user_id::text AND h.released_at IS NULL)"


def closed_before(days: int) -> str:
    return (
        "EXISTS (SELECT 1 FROM accounts a WHERE a.user_id = t.user_id"
        f" AND a.closed_at < %(now)s - interval '{days} days')"
    )


def consent_ended(purpose: str) -> str:
    return (
        "EXISTS (SELECT 1 FROM consents c WHERE c.user_id = t.user_id AND c.purpose = "
        f"'{purpose}' AND least(c.withdrawn_at, c.objected_at) < %(now)s)"
    )


# Clause 3, "collection of the data is done only if you permit the same": a signed-in person's row
# from a moment their analytics consent did not cover (not yet granted, or already withdrawn or objected to).
UNPERMITTED = (
    "t.user_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM consents c WHERE c.user_id = t.user_id"
    " AND c.purpose = 'analytics' AND c.granted_at <= t.occurred_at"
    " AND (c.withdrawn_at IS NULL OR c.withdrawn_at > t.occurred_at)"
    " AND (c.objected_at IS NULL OR c.objected_at > t.occurred_at))"
)

# table -> (primary key expression, condition for rows the night must delete), from reskill.yaml.
EXPECTED_DELETED = {
    "ssh_keys": ("key_id", closed_before(0)),
    "consents": ("consent_id", closed_before(365)),
    "marketing_contacts": ("contact_id", f"({consent_ended('marketing')} OR {closed_before(0)})"),
    "sessions": ("session_id", "t.expires_at < %(now)s"),
    "usage_events": (
        "event_id",
        f"(t.occurred_at < %(now)s - interval '90 days' OR {consent_ended('analytics')} OR {UNPERMITTED})",
    ),
    "visitor_logs": ("log_id", f"(t.occurred_at < %(now)s - interval '30 days' OR {UNPERMITTED})"),
    "comments": ("comment_id", closed_before(30)),
    "feedback": (
        "feedback_id",
        f"(t.created_at < %(now)s - interval '730 days' OR {consent_ended('quotes')} OR {consent_ended('marketing')})",
    ),
    "survey_responses": (
        "response_id",
        f"(t.created_at < %(now)s - interval '365 days' OR {consent_ended('marketing')})",
    ),
    "app_data": ("app_data_id", closed_before(30)),
    "issue_reports": ("report_id", "t.resolved_at < %(now)s - interval '730 days'"),
    "security_evidence": (
        "evidence_id",
        "(t.observed_at < %(now)s - interval '365 days' OR EXISTS (SELECT 1 FROM consents c"
        " WHERE c.user_id = t.user_id AND c.purpose = 'security' AND c.objected_at < %(now)s - interval '90 days'))",
    ),
    "subscriptions": ("subscription_id", "t.ended_at < %(now)s - interval '1095 days'"),
}


def _rows(cur, query: str, **params: object) -> list[tuple]:
    cur.execute(query, {"now": NOW, **params})
    return cur.fetchall()


def keys(cur, table: str, key: str, where: str = "true") -> set[int]:
    cur.execute(f"SELECT t.{key} FROM {table} t WHERE {where}", {"now": NOW})
    return {k for (k,) in cur.fetchall()}


def held_rows(cur) -> dict[str, int]:
    counts = {}
    for table in EXPECTED_DELETED:
        cur.execute(f"SELECT count(*) FROM {table} t WHERE NOT ({UNHELD})")
        counts[table] = cur.fetchone()[0]
    return counts


def test_night_deletes_exactly_what_the_policy_says_and_keeps_held_rows(
    db_url: str, s3_endpoint: str, airflow_home: Path
) -> None:
    from lethe.dagrun import run_dag

    seed(db_url, 150, now=NOW)
    with transaction(db_url) as cur:
        cur.execute("DELETE FROM aggregation_watermarks")  # no clamp: raw usage counts as aggregated
        before = {t: keys(cur, t, k) for t, (k, _) in EXPECTED_DELETED.items()}
        expected = {t: keys(cur, t, k, f"{cond} AND {UNHELD}") for t, (k, cond) in EXPECTED_DELETED.items()}
        held_before = held_rows(cur)
        # Kept visitor log lines older than a week, or of a person who objected to analytics since:
        # the IP truncated to its network, the user agent dropped.
        ip_due = keys(
            cur,
            "visitor_logs",
            "log_id",
            f"(t.occurred_at < %(now)s - interval '7 days' OR {consent_ended('analytics')})"
            f" AND t.occurred_at >= %(now)s - interval '30 days' AND NOT ({UNPERMITTED})"
            f" AND {UNHELD} AND (t.ip_address IS NOT NULL OR t.user_agent IS NOT NULL)",
        )
        cur.execute(
            "SELECT a.user_id, a.email, a.username FROM accounts a WHERE a.closed_at < %(now)s - interval '30 days'"
            " AND NOT EXISTS (SELECT 1 FROM legal_holds h WHERE h.subject_key = a.user_id::text"
            " AND h.released_at IS NULL)",
            {"now": NOW},
        )
        closed = cur.fetchall()
        cur.execute("SELECT email FROM accounts")
        emails = [e for (e,) in cur.fetchall()]
        # Clause 3, "we do not associate this data with your name": usage and visitor rows of unheld people
        # older than a day, with the account each belonged to.
        linked = {
            table: dict(
                _rows(
                    cur,
                    f"SELECT t.{key}, t.user_id FROM {table} t WHERE t.user_id IS NOT NULL AND {UNHELD}"
                    f" AND t.occurred_at < %(now)s - interval '24 hours'",
                )
            )
            for table, key in (("usage_events", "event_id"), ("visitor_logs", "log_id"))
        }
    assert sum(map(len, expected.values())) > 100, "the seed should give the night real work"
    assert sum(held_before.values()) > 0, "the seed should hold some people"

    run = run_dag("retention_nightly", logical_date=NOW)
    assert str(getattr(run.state, "value", run.state)) == "success"

    with transaction(db_url) as cur:
        for table, (key, _) in EXPECTED_DELETED.items():
            gone = before[table] - keys(cur, table, key)
            assert gone == expected[table], f"{table}: deleted rows differ from the policy"
        assert held_rows(cur) == held_before, "rows of held people were removed"
        # IPs between 7 and 30 days old are truncated to their network, user agents dropped.
        cur.execute(
            "SELECT count(*) FROM visitor_logs WHERE log_id = ANY(%s)"
            " AND (user_agent IS NOT NULL OR (ip_address IS NOT NULL AND masklen(ip_address) NOT IN (24, 48)))",
            (list(ip_due),),
        )
        assert cur.fetchone()[0] == 0
        cur.execute("SELECT count(*) FROM visitor_logs WHERE log_id = ANY(%s)", (list(ip_due),))
        assert cur.fetchone()[0] == len(ip_due)
        # Closed, unheld accounts past 30 days go only once nothing else refers to them.
        children = [*EXPECTED_DELETED, "invoices", "payments", "disputes"]
        unreferenced = " AND ".join(f"NOT EXISTS (SELECT 1 FROM {c} c WHERE c.user_id = t.user_id)" for c in children)
        cur.execute(
            f"SELECT count(*) FROM accounts t WHERE t.closed_at < %(now)s - interval '30 days'"
            f" AND {UNHELD} AND {unreferenced}",
            {"now": NOW},
        )
        assert cur.fetchone()[0] == 0
        # The policy's promises, each counted the morning after (issue 17's "done when"):
        # no usage or visitor row of a signed-in person from a time they had not permitted analytics,
        for table in ("usage_events", "visitor_logs"):
            cur.execute(f"SELECT count(*) FROM {table} t WHERE {UNPERMITTED} AND {UNHELD}")
            assert cur.fetchone()[0] == 0, f"{table}: rows collected without analytics consent"
        # no row used only for a purpose the person objected to,
        for table, purpose in (
            ("marketing_contacts", "marketing"),
            ("feedback", "marketing"),
            ("survey_responses", "marketing"),
            ("feedback", "quotes"),
            ("usage_events", "analytics"),
        ):
            cur.execute(f"SELECT count(*) FROM {table} t WHERE {consent_ended(purpose)} AND {UNHELD}", {"now": NOW})
            assert cur.fetchone()[0] == 0, f"{table}: rows of people who objected to {purpose}"
        cur.execute(
            f"SELECT count(*) FROM visitor_logs t WHERE {consent_ended('analytics')} AND {UNHELD}"
            " AND (t.user_agent IS NOT NULL OR masklen(t.ip_address) NOT IN (24, 48))",
            {"now": NOW},
        )
        assert cur.fetchone()[0] == 0, "visitor_logs: full IPs or user agents of people who objected to analytics"
        # and no account closed more than 30 days ago still holding its email or username.
        assert closed, "the seed should close some accounts more than 30 days before the night"
        cur.execute("SELECT email, username FROM accounts")
        left = {v for row in cur.fetchall() for v in row}
        assert not [u for u, email, username in closed if email in left or username in left], (
            "closed accounts past 30 days still hold their email or username"
        )
        # and no usage or visitor row older than a day joinable to a name: the rows kept have no user id
        # and only the keyed pseudonym (HMAC-SHA256 of `user_id:<id>`) of the account they belonged to.
        key = json.loads(os.environ["AIRFLOW_CONN_LETHE_PSEUDONYM_KEY"])["password"].encode()
        for table, key_column in (("usage_events", "event_id"), ("visitor_logs", "log_id")):
            cur.execute(
                f"SELECT count(*) FROM {table} t JOIN accounts a ON a.user_id = t.user_id"
                f" WHERE t.occurred_at < %(now)s - interval '24 hours' AND {UNHELD}",
                {"now": NOW},
            )
            assert cur.fetchone()[0] == 0, f"{table}: rows older than a day joinable to an account"
            kept = dict(
                _rows(
                    cur,
                    f"SELECT {key_column}, subject_pseudonym FROM {table} WHERE {key_column} = ANY(%(ids)s)",
                    ids=list(linked[table]),
                )
            )
            assert len(kept) > 20, f"{table}: the seed should keep some rows older than a day"
            want = {k: hmac.new(key, f"user_id:{linked[table][k]}".encode(), hashlib.sha256).hexdigest() for k in kept}
            assert kept == want, f"{table}: a row older than a day does not keep its person's keyed pseudonym"
            cur.execute(
                f"SELECT count(*) FROM {table} WHERE user_id IS NULL AND subject_pseudonym IS NOT NULL"
                " AND occurred_at >= %(now)s - interval '24 hours'",
                {"now": NOW},
            )
            assert cur.fetchone()[0] == 0, f"{table}: a row younger than a day lost its user id"
        cur.execute("SELECT payload FROM ledger WHERE kind = 'retention' ORDER BY entry_id")
        entries = [p for (p,) in cur.fetchall()]
        cur.execute("SELECT count(*) FROM retention_progress WHERE step = 'ledger'")
        assert cur.fetchone()[0] == len(entries)
    from lethe.policy import load_policy

    assert sorted(e["rule"] for e in entries) == sorted(r.name for _, r in load_policy().rules())
    by_rule = {e["rule"]: e for e in entries}
    assert by_rule["expired_cookies"]["counts"]["done"] == len(expected["sessions"])
    assert all(e["counts"]["done"] == e["counts"]["planned"] and not e["dry_run"] for e in entries)
    text = json.dumps(entries)
    assert not any(email in text for email in emails), "a ledger entry names a person"

    from airflow.models.asset import AssetEvent
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        uris = {e.uri for e in session.query(AssetEvent).filter(AssetEvent.source_run_id == run.run_id)}
        purges = (
            session.query(TaskInstance.task_id, TaskInstance.rendered_map_index)
            .filter(TaskInstance.run_id == run.run_id, TaskInstance.task_id.like("purge_stage_%"))
            .filter(TaskInstance.map_index >= 0)  # a stage with no table leaves one skipped, unmapped instance
            .all()
        )
    # One purge task per table and stage, named by its table: two rules of a table never run at once.
    assert len(purges) == len(set(purges))
    assert {table for _, table in purges} == {t for t, _ in load_policy().rules()}
    assert "lethe://primary/sessions" in uris and "lethe://primary/usage_events" in uris
    assert "lethe://primary/accounts" not in uris or by_rule["closed_accounts"]["counts"]["done"] > 0


def test_dry_run_changes_nothing_and_records_the_plan(db_url: str, s3_endpoint: str, airflow_home: Path) -> None:
    from lethe.dagrun import run_dag

    seed(db_url, 60, now=NOW)
    with transaction(db_url) as cur:
        before = {t: keys(cur, t, k) for t, (k, _) in EXPECTED_DELETED.items()}
    run_dag("retention_nightly", conf={"dry_run": True, "rule": "expired_cookies"}, logical_date=NOW)
    with transaction(db_url) as cur:
        assert {t: keys(cur, t, k) for t, (k, _) in EXPECTED_DELETED.items()} == before
        cur.execute("SELECT payload FROM ledger WHERE kind = 'retention'")
        entries = [p for (p,) in cur.fetchall()]
        expired = keys(cur, "sessions", "session_id", f"t.expires_at < %(now)s AND {UNHELD}")
    assert [e["rule"] for e in entries] == ["expired_cookies"]
    assert entries[0]["dry_run"] is True and entries[0]["counts"]["planned"] == len(expired) > 0
    assert entries[0]["counts"]["done"] == 0
