"""The backups checks against real snapshots in both regions (S3 over HTTP): each fault named by region."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from lethe.audit.backups import check_backups
from lethe.config import BACKUP_REGIONS, BUCKETS
from lethe.db import transaction
from lethe.policy import load_policy
from lethe.pseudonym import pseudonym, subject_pseudonym
from lethe.storage import s3_client

pytestmark = pytest.mark.integration

KEY = b"audit-backup-key"


def seed_people(url: str) -> None:
    now = datetime.now(UTC)
    with transaction(url) as cur:
        for uid in (1, 2, 3):
            cur.execute(
                "INSERT INTO accounts (user_id, name, username, email, password_hash, created_at)"
                " VALUES (%s, 'P', %s, %s, 'x', %s)",
                (uid, f"u{uid}", f"u{uid}@example.com", now - timedelta(days=100)),
            )
            cur.execute(
                "INSERT INTO sessions (session_id, user_id, cookie_id, kind, created_at, expires_at)"
                " VALUES (%s, %s, 'c', 'persistent', %s, %s)",
                (uid, uid, now, now + timedelta(days=5)),
            )
        cur.execute("INSERT INTO comments VALUES (1, 1, 'ask u2@example.com', %s)", (now,))  # 1 names 2


def failed(db_url: str, s3: str, now: datetime | None = None) -> list[str]:
    return check_backups(db_url, s3, KEY, now or datetime.now(UTC)).failed


def test_backup_checks_find_each_fault_in_its_region(db_url: str, s3_endpoint: str) -> None:
    from lethe.backup.propagate import propagate_region
    from lethe.backup.snapshot import new_snapshot_id, take_snapshot

    assert set(failed(db_url, s3_endpoint)) == {f"snapshot_within_rpo.{r}" for r in BACKUP_REGIONS}

    seed_people(db_url)
    sid = new_snapshot_id()
    for region in BACKUP_REGIONS:
        take_snapshot(db_url, region, s3_endpoint, sid, load_policy(), KEY)
    assert failed(db_url, s3_endpoint) == []
    assert set(failed(db_url, s3_endpoint, datetime.now(UTC) + timedelta(hours=30))) == {
        f"snapshot_within_rpo.{r}" for r in BACKUP_REGIONS
    }

    # Person 2 erased on the primary (and person 1's mention of them redacted); the erasure reaches us-east-1 only.
    with transaction(db_url) as cur:
        cur.execute("DELETE FROM sessions WHERE user_id = 2")
        cur.execute("DELETE FROM accounts WHERE user_id = 2")
        cur.execute("UPDATE comments SET body = 'ask [erased]' WHERE comment_id = 1")
        cur.execute(
            "INSERT INTO erasure_tombstones (subject_pseudonym, identifier_pseudonyms) VALUES (%s, %s)",
            (subject_pseudonym(KEY, 2), [pseudonym(KEY, "email", "u2@example.com"), pseudonym(KEY, "username", "u2")]),
        )
    assert set(failed(db_url, s3_endpoint)) == {
        f"{check}.{r}" for r in BACKUP_REGIONS for check in ("tombstones_not_applied", "erased_mentions_left")
    }
    propagate_region(db_url, "us-east-1", s3_endpoint, key=KEY)
    assert failed(db_url, s3_endpoint) == [
        "tombstones_not_applied.ap-southeast-1",
        "erased_mentions_left.ap-southeast-1",
    ]
    propagate_region(db_url, "ap-southeast-1", s3_endpoint, key=KEY)
    assert failed(db_url, s3_endpoint) == []

    # An object changed behind the manifest's back.
    client = s3_client("us-east-1", s3_endpoint)
    bucket = BUCKETS.backup("us-east-1")
    key = next(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"] if o["Key"].endswith(".parquet"))
    client.put_object(Bucket=bucket, Key=key, Body=b"tampered")
    assert failed(db_url, s3_endpoint) == ["manifest_mismatches.us-east-1"]
