"""Synthetic data: deterministic, two years of history, and the cases the policy needs."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from lethe.db import transaction
from lethe.seed import seed

pytestmark = pytest.mark.integration
NOW = datetime(2026, 11, 1, tzinfo=UTC)


def fingerprint() -> tuple[object, ...]:
    with transaction() as cur:
        cur.execute(
            "SELECT md5(string_agg(email || coalesce(closed_at::text, ''), ',' ORDER BY user_id)) FROM accounts"
        )
        accounts = cur.fetchone()[0]
        cur.execute("SELECT count(*), sum(duration_ms) FROM usage_events")
        events = cur.fetchone()
    return accounts, events


def test_seed_is_deterministic_and_covers_the_policy_cases(
    services: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from lethe import testing

    results = []
    for _ in range(2):
        url = testing.fresh_database(services[0])
        monkeypatch.setenv("LETHE_DATABASE_URL", url)
        counts = seed(url, 400, random_seed=7, now=NOW)
        results.append((counts, fingerprint()))
        with transaction() as cur:
            cur.execute("SELECT min(occurred_at), max(occurred_at) FROM usage_events")
            oldest, newest = cur.fetchone()
            cur.execute("SELECT count(*) FROM accounts WHERE closed_at IS NOT NULL")
            closed = cur.fetchone()[0]
            cur.execute("SELECT count(*) FROM legal_holds WHERE released_at IS NULL")
            held = cur.fetchone()[0]
            cur.execute("SELECT count(*) FROM consents WHERE withdrawn_at IS NOT NULL OR objected_at IS NOT NULL")
            withdrawn = cur.fetchone()[0]
            cur.execute(
                "SELECT count(*) FROM comments c JOIN accounts a ON c.body LIKE '%' || a.email || '%' "
                "WHERE a.user_id <> c.user_id"
            )
            mentions = cur.fetchone()[0]
            cur.execute("SELECT count(*) FROM sessions WHERE expires_at < %s", (NOW,))
            expired_sessions = cur.fetchone()[0]
        testing.drop_database(url)
        assert counts["accounts"] == 400 and counts["usage_events"] == 400 * 20
        assert (NOW - oldest).days > 600 and newest <= NOW
        assert closed > 0 and held > 0 and withdrawn > 0 and mentions > 0 and expired_sessions > 0
    assert results[0] == results[1]


def test_seed_refuses_a_populated_database(db_url: str) -> None:
    seed(db_url, 20, now=NOW)
    with pytest.raises(ValueError, match="already has accounts"):
        seed(db_url, 20, now=NOW)
