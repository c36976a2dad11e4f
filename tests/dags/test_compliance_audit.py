"""compliance_audit end to end with dag.test(): passes on a clean state, fails naming each planted fault."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from lethe import ledger
from lethe.config import BUCKETS, PRIMARY_REGION
from lethe.db import transaction
from lethe.pseudonym import subject_pseudonym
from lethe.storage import s3_client

pytestmark = pytest.mark.dags

NOW = datetime.now(UTC)


def seed_small_state(url: str) -> None:
    """Three people, live rows only, a ledger with two entries: nothing for the audit to object to."""
    with transaction(url) as cur:
        for user_id in (1, 2, 3):
            cur.execute(
                "INSERT INTO accounts (user_id, name, username, email, password_hash, created_at)"
                " VALUES (%s, 'Person', %s, %s, 'x', %s)",
                (user_id, f"user{user_id}", f"user{user_id}@example.com", NOW - timedelta(days=400)),
            )
            cur.execute(
                "INSERT INTO sessions (session_id, user_id, cookie_id, kind, created_at, expires_at)"
                " VALUES (%s, %s, 'c', 'persistent', %s, %s)",
                (user_id, user_id, NOW - timedelta(days=1), NOW + timedelta(days=10)),
            )
        cur.execute(
            "INSERT INTO legal_holds (hold_id, subject_key, reason, placed_at) VALUES (1, '2', 'litigation', %s)",
            (NOW - timedelta(days=3),),
        )
        for n in (3, 4):
            ledger.append(cur, "retention", {"rule": "expired_cookies", "table": "sessions", "counts": {"deleted": n}})


def audit_rows(url: str) -> list[tuple]:
    with transaction(url) as cur:
        cur.execute("SELECT success, failed FROM audit_runs ORDER BY audited_at")
        return cur.fetchall()


def alerts(url: str) -> list[str]:
    with transaction(url) as cur:
        cur.execute("SELECT message FROM audit_alerts ORDER BY alert_id")
        return [m for (m,) in cur.fetchall()]


def failed_check(url: str, suite: str, name: str) -> dict:
    with transaction(url) as cur:
        cur.execute("SELECT results FROM audit_runs ORDER BY audited_at DESC LIMIT 1")
        (suites,) = cur.fetchone()
    return next(c for r in suites if r["suite"] == suite for c in r["checks"] if c["name"] == name)


def pseudonym_key() -> bytes:
    """The key the DAGs use (the lethe_pseudonym_key connection airflow_env set up)."""
    return json.loads(os.environ["AIRFLOW_CONN_LETHE_PSEUDONYM_KEY"])["password"].encode()


def test_audit_passes_clean_then_fails_naming_each_planted_fault(
    db_url: str, s3_endpoint: str, airflow_home: Path
) -> None:
    from lethe.backup.propagate import propagate_region
    from lethe.dagrun import DagRunFailed, run_dag

    seed_small_state(db_url)
    run_dag("retention_nightly", logical_date=NOW)
    run_dag("backup_nightly")
    # Each task's success anchored the ledger's head in the evidence bucket.
    with transaction(db_url) as cur:
        cur.execute("SELECT count(*) FROM ledger")
        entries = cur.fetchone()[0]
        cur.execute("SELECT entry_hash FROM ledger ORDER BY entry_id DESC LIMIT 1")
        head_hash = cur.fetchone()[0]
    evidence = s3_client(PRIMARY_REGION, s3_endpoint).list_objects_v2(Bucket=BUCKETS.evidence, Prefix="ledger-anchors/")
    assert max(o["Key"] for o in evidence["Contents"]).endswith(f"/{entries:012d}-{head_hash}.json")
    run_dag("compliance_audit")
    assert audit_rows(db_url) == [(True, [])]

    with transaction(db_url) as cur:
        # Fault 1: an expired cookie left behind.
        cur.execute("UPDATE sessions SET expires_at = %s WHERE session_id = 1", (NOW - timedelta(days=1),))
        # Fault 2: person 3 erased on the primary, the erasure carried into one backup region only.
        cur.execute("DELETE FROM sessions WHERE user_id = 3")
        cur.execute("DELETE FROM accounts WHERE user_id = 3")
        cur.execute(
            "INSERT INTO erasure_tombstones (subject_pseudonym, identifier_pseudonyms) VALUES (%s, '{}')",
            (subject_pseudonym(pseudonym_key(), 3),),
        )
    propagate_region(db_url, "us-east-1", s3_endpoint, key=pseudonym_key())
    with transaction(db_url) as cur:
        # Fault 3: a broken ledger link (the append-only trigger disabled to plant it).
        cur.execute("ALTER TABLE ledger DISABLE TRIGGER ledger_append_only")
        cur.execute("DELETE FROM ledger WHERE entry_id = (SELECT min(entry_id) FROM ledger)")
        cur.execute("ALTER TABLE ledger ENABLE TRIGGER ledger_append_only")

    with pytest.raises(DagRunFailed, match="verdict"):
        run_dag("compliance_audit")
    success, names = audit_rows(db_url)[-1]
    assert not success
    assert sorted(names) == [
        "backups.tombstones_not_applied.ap-southeast-1",
        "ledger.ledger_chain_broken",
        "retention.expired_rows.expired_cookies",
    ]
    # The failed check says where (table and column) and how many, never which rows.
    expired = failed_check(db_url, "retention", "expired_rows.expired_cookies")
    assert expired["where"] == "table sessions, column expires_at" and expired["observed"] == 1
    # The failure alert names the checks, never a person's data.
    assert any("retention.expired_rows.expired_cookies" in m for m in alerts(db_url))
    assert all("user" not in m and "@" not in m for m in alerts(db_url))


def test_an_audit_hours_after_the_purge_passes_and_a_missed_night_is_stale(
    db_url: str, s3_endpoint: str, airflow_home: Path
) -> None:
    """Rows that cross their limit after the purge are not "left behind"; a rule not run for a day is stale."""
    from lethe.dagrun import DagRunFailed, run_dag
    from lethe.policy import load_policy

    seed_small_state(db_url)
    with transaction(db_url) as cur:
        # A cookie that expires two hours after tonight's purge.
        cur.execute(
            "INSERT INTO sessions (session_id, user_id, cookie_id, kind, created_at, expires_at)"
            " VALUES (4, 1, 'c4', 'persistent', %s, %s)",
            (NOW - timedelta(days=1), NOW + timedelta(hours=2)),
        )
    run_dag("retention_nightly", logical_date=NOW)
    run_dag("backup_nightly")
    later = NOW + timedelta(hours=5)
    run_dag("compliance_audit", {"as_of": later.isoformat()})
    run_dag("compliance_audit", {"as_of": later.isoformat()})
    # The same state, audited twice five hours after the purge: the same verdict, a pass.
    assert audit_rows(db_url) == [(True, []), (True, [])]
    with transaction(db_url) as cur:
        cur.execute("SELECT expires_at < %s FROM sessions WHERE session_id = 4", (later,))
        assert cur.fetchone() == (True,)  # the cookie did cross its limit, and waits for the next purge

    # A day and six hours on, no purge has run since: every rule is stale (a different alarm
    # from rows left behind, which is not raised: the cookie is still within the last run's cutoff).
    with pytest.raises(DagRunFailed, match="verdict"):
        run_dag("compliance_audit", {"as_of": (NOW + timedelta(hours=30)).isoformat(), "rpo_hours": 48})
    success, names = audit_rows(db_url)[-1]
    assert not success
    assert sorted(names) == sorted(f"retention.stale.{rule.name}" for _, rule in load_policy().rules())
    stale = failed_check(db_url, "retention", "stale.expired_cookies")
    assert stale["details"]["stale_after_hours"] == 26
