"""Anchors of the ledger's head in the evidence bucket, and the audit that holds the ledger to them.

The faults are planted as the ledger's owner would: its triggers disabled, then TRUNCATE or DELETE.
What is left still chains, so only the anchors can tell.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import psycopg2
import pytest
from lethe import ledger
from lethe.audit.ledger_checks import check_ledger
from lethe.config import BUCKETS, PRIMARY_REGION
from lethe.db import transaction
from lethe.ledger_anchor import anchor_now
from lethe.storage import s3_client

pytestmark = pytest.mark.integration


def append(n: int) -> None:
    with transaction() as cur:
        for i in range(n):
            ledger.append(cur, "retention", {"rule": "expired_cookies", "table": "sessions", "counts": {"deleted": i}})


def as_owner(db_url: str, *statements: str) -> None:
    with transaction(db_url) as cur:
        cur.execute("ALTER TABLE ledger DISABLE TRIGGER USER")
        for statement in statements:
            cur.execute(statement)
        cur.execute("ALTER TABLE ledger ENABLE TRIGGER USER")


def audit(db_url: str, s3_endpoint: str) -> dict[str, dict]:
    with transaction(db_url) as cur:
        result = check_ledger(cur, s3_client(PRIMARY_REGION, s3_endpoint), BUCKETS.evidence)
    return {c["name"]: c for c in result.checks}


def evidence_objects(s3_endpoint: str) -> list[dict]:
    client = s3_client(PRIMARY_REGION, s3_endpoint)
    return client.list_objects_v2(Bucket=BUCKETS.evidence, Prefix="ledger-anchors/").get("Contents", [])


def test_the_head_is_anchored_once_under_object_lock(db_url: str, s3_endpoint: str) -> None:
    append(3)
    anchor_now(db_url, s3_endpoint)
    anchor_now(db_url, s3_endpoint)  # nothing appended since: no second anchor
    with transaction(db_url) as cur:
        cur.execute("SELECT entry_id, entry_hash FROM ledger ORDER BY entry_id DESC LIMIT 1")
        head_id, head_hash = cur.fetchone()
    objects = evidence_objects(s3_endpoint)
    assert len(objects) == 1
    client = s3_client(PRIMARY_REGION, s3_endpoint)
    head = client.head_object(Bucket=BUCKETS.evidence, Key=objects[0]["Key"])
    body = json.loads(client.get_object(Bucket=BUCKETS.evidence, Key=objects[0]["Key"])["Body"].read())
    assert body["seq"] == 3 and body["entry_id"] == head_id and body["entry_hash"] == head_hash
    assert head["ObjectLockMode"] == "GOVERNANCE"  # tests/conftest.py; COMPLIANCE by default
    assert head["ObjectLockRetainUntilDate"] > datetime.now(UTC) + timedelta(days=3000)
    # Locked: a plain delete of that version is refused.
    versions = client.list_object_versions(Bucket=BUCKETS.evidence, Prefix=objects[0]["Key"])["Versions"]
    refused = client.delete_objects(
        Bucket=BUCKETS.evidence, Delete={"Objects": [{"Key": v["Key"], "VersionId": v["VersionId"]} for v in versions]}
    )
    assert refused.get("Errors") and not refused.get("Deleted")


def test_without_object_lock_the_anchor_says_so(db_url: str, s3_endpoint: str) -> None:
    from lethe.ledger_anchor import write

    bucket = f"lethe-nolock-{uuid.uuid4().hex[:8]}"
    client = s3_client(PRIMARY_REGION, s3_endpoint)
    client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": PRIMARY_REGION})
    append(1)
    with transaction(db_url) as cur:
        anchor = write(cur, client, bucket)
    assert anchor is not None
    head = client.head_object(Bucket=bucket, Key=anchor.key)
    assert "ObjectLockMode" not in head
    assert head["Metadata"]["object-lock"].startswith("unavailable")


def test_an_untouched_ledger_passes(db_url: str, s3_endpoint: str) -> None:
    append(3)
    anchor_now(db_url, s3_endpoint)
    append(1)  # entries newer than the newest anchor are fine
    checks = audit(db_url, s3_endpoint)
    assert all(c["success"] for c in checks.values()), checks
    assert checks["ledger_tail_missing"]["details"]["anchors"] == 1


def test_a_truncated_ledger_fails(db_url: str, s3_endpoint: str) -> None:
    append(3)
    anchor_now(db_url, s3_endpoint)
    as_owner(db_url, "TRUNCATE ledger")
    checks = audit(db_url, s3_endpoint)
    assert checks["ledger_chain_broken"]["success"]  # an empty chain verifies: the chain alone cannot tell
    assert not checks["ledger_tail_missing"]["success"]
    assert checks["ledger_tail_missing"]["details"]["entries"] == 0


def test_a_deleted_tail_fails_even_after_the_chain_grows_again(db_url: str, s3_endpoint: str) -> None:
    append(3)
    anchor_now(db_url, s3_endpoint)
    as_owner(db_url, "DELETE FROM ledger WHERE entry_id = (SELECT max(entry_id) FROM ledger)")
    checks = audit(db_url, s3_endpoint)
    assert checks["ledger_chain_broken"]["success"]
    assert not checks["ledger_tail_missing"]["success"]
    assert checks["ledger_tail_missing"]["details"]["lowest_missing_seq"] == 3
    # New entries and a newer anchor do not cover the gap: the old anchor still names the deleted entry.
    append(2)
    anchor_now(db_url, s3_endpoint)
    checks = audit(db_url, s3_endpoint)
    assert not checks["ledger_tail_missing"]["success"]
    assert checks["ledger_tail_missing"]["observed"] == 1


def test_lethes_role_under_the_documented_grants_cannot_rewrite_the_ledger(db_url: str) -> None:
    """The grants of docs/deployment.md ("The ledger's owner"), with per-test role names."""
    owner, app = f"lethe_ledger_owner_{uuid.uuid4().hex[:6]}", f"lethe_app_{uuid.uuid4().hex[:6]}"
    with transaction(db_url) as cur:
        cur.execute(f"CREATE ROLE {owner} NOLOGIN")
        cur.execute(f"CREATE ROLE {app} NOLOGIN")
        cur.execute(f"GRANT USAGE ON SCHEMA lethe TO {app}")
        cur.execute(f"ALTER TABLE lethe.ledger OWNER TO {owner}")
        cur.execute(f"ALTER FUNCTION lethe.ledger_append_only() OWNER TO {owner}")
        cur.execute(f"REVOKE ALL ON lethe.ledger FROM PUBLIC, {app}")
        cur.execute(f"GRANT SELECT, INSERT ON lethe.ledger TO {app}")
        cur.execute(f"GRANT USAGE ON SEQUENCE lethe.ledger_entry_id_seq TO {app}")
    try:
        with transaction(db_url) as cur:
            cur.execute(f"SET ROLE {app}")
            ledger.append(cur, "retention", {"deleted": 1})  # Lethe still writes
            assert ledger.verify_chain(cur).entries == 1
        for statement in (
            "ALTER TABLE ledger DISABLE TRIGGER ledger_append_only",
            "ALTER TABLE ledger DISABLE TRIGGER ledger_no_truncate",
            "TRUNCATE ledger",
            "DELETE FROM ledger",
            "UPDATE ledger SET kind = 'x'",
            "SET session_replication_role = replica",
        ):
            with pytest.raises(psycopg2.errors.InsufficientPrivilege), transaction(db_url) as cur:
                cur.execute(f"SET ROLE {app}")
                cur.execute(statement)
    finally:
        with transaction(db_url) as cur:
            cur.execute("ALTER TABLE ledger OWNER TO CURRENT_USER")
            cur.execute("ALTER FUNCTION ledger_append_only() OWNER TO CURRENT_USER")
            for role in (owner, app):
                cur.execute(f"DROP OWNED BY {role}")
                cur.execute(f"DROP ROLE {role}")
