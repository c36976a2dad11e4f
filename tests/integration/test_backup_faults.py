"""Backups that survive kills and restore with intact links, checked by reading S3 and Parquet here.

- Propagation is killed (os._exit in a subprocess, tests/backup_kill.py) right after each of its
  steps in turn, and backup_nightly's export midway; after the rerun no version of any object in
  the bucket holds an erased person.
- The snapshot taken before the erasure of a person with a kept (released) legal hold, and a reply
  of someone else pointing at one of her comments, restores with every foreign key intact, the
  person absent and the hold and the reply cut exactly as the primary cut them.

The erasure on the primary is written out in SQL here (what subject_erasure does to these tables),
so expected outcomes do not come from the code under test.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from lethe import testing
from lethe.backup import propagate
from lethe.backup.propagate import propagate_region
from lethe.backup.restore import restore_snapshot
from lethe.backup.snapshot import take_snapshot
from lethe.config import BUCKETS
from lethe.db import ConfigurationError, transaction
from lethe.policy import load_policy
from lethe.pseudonym import subject_pseudonym

pytestmark = pytest.mark.integration

KEY = b"test-pseudonym-key"
REGION = "us-east-1"
PEOPLE = 8
NOW = datetime.now(UTC).replace(microsecond=0)
KILL_SCRIPT = Path(__file__).parents[1] / "backup_kill.py"
KILLED = 97
# The reply column the tests add: someone else's comment answering one of the person's.
REPLY_FK = "ALTER TABLE comments ADD COLUMN reply_to bigint REFERENCES comments (comment_id) ON DELETE SET NULL"


def fill(url: str) -> None:
    with transaction(url) as cur:
        cur.execute(REPLY_FK)
        for u in range(1, PEOPLE + 1):
            cur.execute(
                "INSERT INTO accounts (user_id, name, username, email, password_hash, created_at)"
                " VALUES (%s, %s, %s, %s, 'x', %s)",
                (u, f"Person {u}", f"user{u}", f"user{u}@example.test", NOW),
            )
            cur.execute("INSERT INTO ssh_keys VALUES (%s, %s, %s, %s)", (u, u, f"ssh-ed25519 K{u}", NOW))
            cur.execute(
                "INSERT INTO invoices VALUES (%s, %s, NULL, %s, 'Street 1', 'TAX', 1000, 'INR', %s)",
                (u, u, f"Person {u}", NOW),
            )
            cur.execute(
                "INSERT INTO payments VALUES (%s, %s, %s, NULL, 1000, 'card', '4242', %s, NULL)", (u, u, u, NOW)
            )
            for i in range(2):
                cur.execute("INSERT INTO comments VALUES (%s, %s, %s, %s)", (u * 10 + i, u, f"comment {i}", NOW))
            # A released hold on each person, kept as the record of a legal obligation.
            cur.execute(
                "INSERT INTO legal_holds (hold_id, subject_key, reference, reason, placed_at, released_at)"
                " VALUES (%s, %s, %s, 'old dispute', %s, %s)",
                (u, str(u), f"case {u}", NOW, NOW),
            )
        # Person 2 replies to person 1's first comment.
        cur.execute(
            "INSERT INTO comments (comment_id, user_id, body, created_at, reply_to) VALUES (900, 2, 're', %s, 10)",
            (NOW,),
        )


def erase(url: str, user_id: int) -> str:
    """What subject_erasure does to these tables, in plain SQL: rows deleted, tax records pseudonymised,
    the hold kept but naming the person by pseudonym only, a reply to a deleted comment unlinked."""
    p = subject_pseudonym(KEY, user_id)
    with transaction(url) as cur:
        cur.execute("DELETE FROM ssh_keys WHERE user_id = %s", (user_id,))
        cur.execute("DELETE FROM comments WHERE user_id = %s", (user_id,))  # ON DELETE SET NULL cuts replies
        cur.execute(
            "UPDATE payments SET user_id = NULL, card_last4 = NULL, subject_pseudonym = %s WHERE user_id = %s",
            (p, user_id),
        )
        cur.execute("UPDATE invoices SET user_id = NULL, subject_pseudonym = %s WHERE user_id = %s", (p, user_id))
        cur.execute("DELETE FROM accounts WHERE user_id = %s", (user_id,))
        cur.execute(
            "UPDATE legal_holds SET subject_key = NULL, reference = NULL, subject_pseudonym = %s"
            " WHERE subject_key = %s",
            (p, str(user_id)),
        )
        cur.execute(
            "INSERT INTO erasure_tombstones (subject_pseudonym, identifier_pseudonyms, request_id) VALUES (%s, %s, %s)",
            (p, [], str(uuid.uuid4())),
        )
    return p


def s3(endpoint: str) -> Any:
    from lethe.storage import local_s3_credentials

    key_id, secret = local_s3_credentials()  # the local server's credentials; the client is plain boto3
    return boto3.client(
        "s3", endpoint_url=endpoint, region_name=REGION, aws_access_key_id=key_id, aws_secret_access_key=secret
    )


def every_version(endpoint: str) -> list[tuple[str, bool, Any]]:
    """(key, is latest, Arrow table or None) for every object version in the backup bucket, read here."""
    client = s3(endpoint)
    bucket = BUCKETS.backup(REGION)
    found = []
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for v in page.get("Versions", []):
            body = client.get_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])["Body"].read()
            table = pq.read_table(io.BytesIO(body)) if v["Key"].endswith(".parquet") else None
            found.append((v["Key"], v["IsLatest"], table))
    return found


def traces(versions: list[tuple[str, bool, Any]], erased: set[int]) -> list[str]:
    """'key: column' for each object version holding an erased person by id or in a hold's subject key."""
    found = []
    for key, _, table in versions:
        if table is None:
            continue
        for column in ("user_id", "subject_key"):
            if column in table.column_names:
                values = {int(v) for v in table.column(column).to_pylist() if v is not None}
                if values & erased:
                    found.append(f"{key}: {column}")
    return found


def audit_left(db_url: str, endpoint: str) -> dict[str, int]:
    """The nightly audit's backup counts for the region (it reads old versions and incomplete snapshots too)."""
    from lethe.audit.backups import DEFAULT_RPO, audit_region, tombstones
    from lethe.backup.mentions import MentionFinder

    found = tombstones(db_url)
    finder = MentionFinder(KEY, frozenset(found.identifiers_at))
    return audit_region(REGION, endpoint, found, datetime.now(UTC), DEFAULT_RPO, finder)[0]


def kill(job: str, arg: str, endpoint: str, *extra: str) -> int:
    done = subprocess.run(
        [sys.executable, str(KILL_SCRIPT), job, arg, REGION, endpoint, KEY.decode(), *extra],
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode in (0, KILLED), done.stderr[-2000:]
    return done.returncode


def test_killed_after_any_step_a_rerun_leaves_no_version_of_the_erased(db_url: str, s3_endpoint: str) -> None:
    fill(db_url)
    policy = load_policy()
    take_snapshot(db_url, REGION, s3_endpoint, "20261101T020000Z", policy, KEY)
    # backup_nightly killed mid-export: a snapshot without a manifest, holding everyone's rows.
    assert kill("snapshot", "3", s3_endpoint, "20261102T020000Z") == KILLED
    incomplete = [k for k, _, _ in every_version(s3_endpoint) if k.startswith("snapshots/20261102T020000Z/")]
    assert incomplete and not any(k.endswith("manifest.json") for k in incomplete)
    assert traces(every_version(s3_endpoint), set(range(1, PEOPLE + 1)))  # the people are in the backups

    erased: set[int] = set()
    for person, step in enumerate(propagate.STEPS, start=1):
        erase(db_url, person)
        erased.add(person)
        assert kill("propagate", step, s3_endpoint) == KILLED, step  # the run reached the step and died there
        if step in ("remove_incomplete", "put_object", "write_manifest"):  # old versions still hold the person
            assert audit_left(db_url, s3_endpoint)["tombstones_not_applied"] > 0, step
        propagate_region(db_url, REGION, s3_endpoint, key=KEY)  # the next run
        assert audit_left(db_url, s3_endpoint)["tombstones_not_applied"] == 0, step
        versions = every_version(s3_endpoint)
        assert traces(versions, erased) == [], step
        assert not [k for k, _, _ in versions if k.startswith("snapshots/20261102T020000Z/")], step
        assert all(latest for _, latest, _ in versions), step  # no old version outlives a rewrite
        others = set(range(1, PEOPLE + 1)) - erased
        assert set(traces(versions, others)), step  # everyone else is still backed up
    with transaction(db_url) as cur:
        cur.execute("SELECT count(*) FROM backup_tombstone_applications WHERE snapshot_id = '20261101T020000Z'")
        assert cur.fetchone()[0] == len(erased)


def _fk_orphans(url: str) -> dict[str, int]:
    """Rows pointing at no parent, for each link of these tables, with queries written here."""
    checks = {
        "comments.reply_to": "SELECT count(*) FROM comments c WHERE reply_to IS NOT NULL"
        " AND NOT EXISTS (SELECT 1 FROM comments p WHERE p.comment_id = c.reply_to)",
        "comments.user_id": "SELECT count(*) FROM comments c WHERE NOT EXISTS"
        " (SELECT 1 FROM accounts a WHERE a.user_id = c.user_id)",
        "invoices.user_id": "SELECT count(*) FROM invoices i WHERE user_id IS NOT NULL AND NOT EXISTS"
        " (SELECT 1 FROM accounts a WHERE a.user_id = i.user_id)",
        "payments.invoice_id": "SELECT count(*) FROM payments p WHERE NOT EXISTS"
        " (SELECT 1 FROM invoices i WHERE i.invoice_id = p.invoice_id)",
    }
    out = {}
    with transaction(url) as cur:
        for name, query in checks.items():
            cur.execute(query)
            out[name] = cur.fetchone()[0]
    return out


def _kept_links(url: str) -> dict[str, Any]:
    with transaction(url) as cur:
        cur.execute("SELECT hold_id, subject_key, reference, subject_pseudonym, reason FROM legal_holds ORDER BY 1")
        holds = cur.fetchall()
        cur.execute("SELECT comment_id, reply_to FROM comments WHERE comment_id = 900")
        reply = cur.fetchall()
        cur.execute("SELECT invoice_id, user_id, subject_pseudonym FROM invoices ORDER BY 1")
        invoices = cur.fetchall()
    return {"holds": holds, "reply": reply, "invoices": invoices}


def test_the_snapshot_before_an_erasure_restores_with_intact_links_and_the_person_absent(
    db_url: str, s3_endpoint: str, services: tuple[str, str]
) -> None:
    fill(db_url)
    sid = "20261101T020000Z"
    take_snapshot(db_url, REGION, s3_endpoint, sid, load_policy(), KEY)
    p = erase(db_url, 1)  # person 1: a kept (released) hold, kept invoices, a comment someone replied to
    propagate_region(db_url, REGION, s3_endpoint, key=KEY)
    # The backup's hold no longer names her by key, as on the primary.
    holds = [t for k, latest, t in every_version(s3_endpoint) if "/data/legal_holds/" in k]
    assert holds and all("1" not in t.column("subject_key").to_pylist() for t in holds)
    assert any(p in t.column("subject_pseudonym").to_pylist() for t in holds)

    target = testing.fresh_database(services[0])
    lines: list[str] = []
    try:
        with transaction(target) as cur:
            cur.execute(REPLY_FK)
        report = restore_snapshot(
            sid, REGION, target, endpoint_url=s3_endpoint, key=KEY, primary_url=db_url, out=lines.append
        )
        assert report.verified
        with transaction(target) as cur:
            cur.execute("SELECT count(*) FROM accounts WHERE user_id = 1")
            assert cur.fetchone()[0] == 0
            cur.execute("SELECT count(*) FROM accounts")
            assert cur.fetchone()[0] == PEOPLE - 1
            cur.execute("SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND NOT convalidated")
            assert cur.fetchone()[0] == 0
        assert _fk_orphans(target) == dict.fromkeys(_fk_orphans(db_url), 0)
        # Kept rows carry exactly the links the primary left them: hold, reply and invoices alike.
        assert _kept_links(target) == _kept_links(db_url)
        assert any(line.startswith("verified:") and line.endswith("(ok)") for line in lines)
        assert not any("example.test" in line or "Person" in line for line in lines)
    finally:
        testing.drop_database(target)

    # A target whose foreign key was dropped is not a verified restore, whatever was loaded.
    target = testing.fresh_database(services[0])
    lines = []
    try:
        with transaction(target) as cur:
            cur.execute(REPLY_FK)
            cur.execute("ALTER TABLE payments DROP CONSTRAINT payments_invoice_id_fkey")
        with pytest.raises(ConfigurationError, match="foreign keys are not intact"):
            restore_snapshot(
                sid, REGION, target, endpoint_url=s3_endpoint, key=KEY, primary_url=db_url, out=lines.append
            )
        assert not any(line.endswith("(ok)") for line in lines)
        assert any("payments(invoice_id) -> invoices(invoice_id)" in line for line in lines)
    finally:
        testing.drop_database(target)


def test_an_object_deleted_outside_lethe_is_named_and_once_restored_the_erasure_goes_through(
    db_url: str, s3_endpoint: str
) -> None:
    """Found from outside: one data object plainly deleted (a delete marker) made every propagation of its snapshot
    fail with a bare NoSuchKey naming nothing, so no erasure reached 'applied' in the region."""
    from lethe.backup.manifest import read as read_manifest
    from lethe.backup.store import MissingObject

    fill(db_url)
    sid = "20261101T020000Z"
    take_snapshot(db_url, REGION, s3_endpoint, sid, load_policy(), KEY)
    client, bucket = s3(s3_endpoint), BUCKETS.backup(REGION)
    person = erase(db_url, 1)
    [(_, _, gone, _)] = [h for h in read_manifest(client, bucket, sid).holding({person}) if h[0] == "accounts"]
    marker = client.delete_object(Bucket=bucket, Key=gone.key)["VersionId"]  # an operator's plain delete

    with pytest.raises(MissingObject) as err:
        propagate_region(db_url, REGION, s3_endpoint, key=KEY)
    assert f"s3://{bucket}/{gone.key} is missing" in str(err.value) and "delete marker" in str(err.value)
    assert traces(every_version(s3_endpoint), {1})  # she is still in the snapshot

    client.delete_object(Bucket=bucket, Key=gone.key, VersionId=marker)  # what the message says to do
    propagate_region(db_url, REGION, s3_endpoint, key=KEY)
    assert traces(every_version(s3_endpoint), {1}) == []


def test_a_snapshot_whose_manifest_is_deleted_while_a_backup_runs_is_removed_before_the_erasure_is_applied(
    db_url: str, s3_endpoint: str
) -> None:
    """Found from outside: a manifest plainly deleted while backup_nightly held the region's writer lock hid its
    snapshot from propagation, which marked the erasure applied while that snapshot's objects held the person."""
    from lethe.backup import writer

    fill(db_url)
    old, live = "20261101T020000Z", "20261102T020000Z"
    take_snapshot(db_url, REGION, s3_endpoint, old, load_policy(), KEY)
    client, bucket = s3(s3_endpoint), BUCKETS.backup(REGION)
    client.delete_object(Bucket=bucket, Key=f"snapshots/{old}/manifest.json")  # an operator's plain delete
    person = erase(db_url, 1)
    # A backup being written: its catalogue row, an object of its own, and the region's writer lock held.
    in_flight, body = f"snapshots/{live}/data/comments/b0000.parquet", io.BytesIO()
    pq.write_table(pa.table({"comment_id": [900]}), body)
    with transaction(db_url) as cur:
        cur.execute(
            "INSERT INTO backup_snapshots (snapshot_id, region, status, policy_version)"
            " VALUES (%s, %s, 'writing', 'x')",
            (live, REGION),
        )
    client.put_object(Bucket=bucket, Key=in_flight, Body=body.getvalue())
    with writer.region_lock(db_url, REGION, wait=True):
        propagate_region(db_url, REGION, s3_endpoint, key=KEY)

    assert traces(every_version(s3_endpoint), {1}) == []  # no version of the old snapshot holds her
    assert client.get_object(Bucket=bucket, Key=in_flight)["Body"].read() == body.getvalue()  # the writer's own
    with transaction(db_url) as cur:
        cur.execute("SELECT status FROM backup_snapshots WHERE snapshot_id = %s AND region = %s", (old, REGION))
        assert cur.fetchone()[0] == "expired"
        cur.execute(
            "SELECT status FROM backup_propagation_status WHERE subject_pseudonym = %s AND region = %s",
            (person, REGION),
        )
        assert cur.fetchone()[0] == "applied"
