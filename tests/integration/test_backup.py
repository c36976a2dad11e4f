"""Backups against a real PostgreSQL and S3 over HTTP: snapshot, propagate, interrupt, restore, Object Lock.

The primary is filled by small SQL fixtures; expected outcomes are computed here
from those rows, independently of the code under test.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow.parquet as pq
import pytest
from lethe import residue, testing
from lethe.backup import layout, store
from lethe.backup.expiry import expire_region
from lethe.backup.locks import object_lock_violations
from lethe.backup.manifest import TableEntry
from lethe.backup.manifest import read as read_manifest
from lethe.backup.manifest import write as write_manifest
from lethe.backup.propagate import PropagationInterrupted, propagate_region
from lethe.backup.replicate import replicate_snapshot
from lethe.backup.restore import restore_snapshot
from lethe.backup.snapshot import take_snapshot
from lethe.backup.term_index import Query, may_mention
from lethe.config import BACKUP_REGIONS, BUCKETS
from lethe.db import transaction
from lethe.policy import Policy, load_policy
from lethe.pseudonym import pseudonym, subject_pseudonym
from lethe.storage import ensure_buckets, s3_client

pytestmark = pytest.mark.integration

KEY = b"test-pseudonym-key"
USERS = 20
NOW = datetime.now(UTC).replace(microsecond=0)


def fill_primary(url: str) -> None:
    """40 people with rows in several backed-up tables, plus rows with no subject."""
    with transaction(url) as cur:
        for u in range(1, USERS + 1):
            cur.execute(
                "INSERT INTO accounts (user_id, name, username, email, phone, password_hash, interests, created_at)"
                " VALUES (%s, %s, %s, %s, %s, 'x', %s, %s)",
                (u, f"Person {u}", f"user{u}", f"user{u}@example.test", f"+9100000{u:04d}", ["sql", "go"], NOW),
            )
            cur.execute(
                "INSERT INTO ssh_keys VALUES (%s, %s, %s, %s)", (u, u, f"ssh-ed25519 AAAA{u} user{u}@host", NOW)
            )
            cur.execute(
                "INSERT INTO invoices VALUES (%s, %s, NULL, %s, 'Street 1', 'TAX', 1000, 'INR', %s)",
                (u, u, f"Person {u}", NOW),
            )
            cur.execute(
                "INSERT INTO payments VALUES (%s, %s, %s, NULL, 1000, 'card', '4242', %s, NULL)", (u, u, u, NOW)
            )
            for i in range(3):
                cur.execute(
                    "INSERT INTO comments VALUES (%s, %s, %s, %s)",
                    (u * 10 + i, u, f'comment {i} with a "quote", a comma\nand a newline', NOW),
                )
                cur.execute(
                    "INSERT INTO usage_events VALUES (%s, %s, %s, 'quiz', 100, 0)",
                    (u * 10 + i, u, NOW - timedelta(days=i)),
                )
            cur.execute(
                "INSERT INTO survey_responses VALUES (%s, %s, 'nps', %s, %s)", (u, u, json.dumps({"score": u}), NOW)
            )
        cur.execute("INSERT INTO security_evidence VALUES (1, NULL, '10.1.2.3', 'scan', 'port scan', %s)", (NOW,))
        cur.execute("INSERT INTO sessions VALUES (1, 1, 'c1', 'temporary', '10.0.0.1', %s, %s)", (NOW, NOW))


def erase(url: str, user_id: int) -> str:
    """What subject_erasure does on the primary: delete, pseudonymise tax records, write the tombstone."""
    p = subject_pseudonym(KEY, user_id)
    with transaction(url) as cur:
        for table in ("ssh_keys", "comments", "usage_events", "survey_responses", "sessions"):
            cur.execute(f"DELETE FROM {table} WHERE user_id = %s", (user_id,))  # noqa: S608 - fixed test names
        cur.execute(
            "UPDATE payments SET user_id = NULL, card_last4 = NULL, subject_pseudonym = %s WHERE user_id = %s",
            (p, user_id),
        )
        cur.execute("UPDATE invoices SET user_id = NULL, subject_pseudonym = %s WHERE user_id = %s", (p, user_id))
        cur.execute("DELETE FROM accounts WHERE user_id = %s", (user_id,))
        cur.execute(
            "INSERT INTO erasure_tombstones (subject_pseudonym, identifier_pseudonyms, request_id) VALUES (%s, %s, %s)",
            (p, [], str(uuid.uuid4())),
        )
    return p


def erase_certify_propagate(primary: str, s3_endpoint: str, region: str, user_id: int) -> tuple[str, str]:
    """What subject_erasure and its propagation do for one person (the certificate as the DAG writes it):
    (their pseudonym, the request id)."""
    from lethe.erasure import certificate

    erased = erase(primary, user_id)
    with transaction(primary) as cur:
        cur.execute("SELECT request_id::text FROM erasure_tombstones WHERE subject_pseudonym = %s", (erased,))
        request_id = cur.fetchone()[0]
    request = {"request_id": request_id, "subject_pseudonym": erased, "detail": {"outcome": "erased"}}
    certificate.write(s3_client("ap-south-1", s3_endpoint), certificate.build(request, "test"))
    propagate_region(primary, region, s3_endpoint, key=KEY)
    return erased, request_id


@pytest.fixture
def primary(db_url: str) -> str:
    fill_primary(db_url)
    return db_url


def snapshot_both(db_url: str, s3: str, sid: str, policy: Policy | None = None) -> None:
    """What backup_nightly does: export into the first region, copy server-side into the others."""
    take_snapshot(db_url, BACKUP_REGIONS[0], s3, sid, policy or load_policy(), KEY)
    for region in BACKUP_REGIONS[1:]:
        replicate_snapshot(db_url, sid, BACKUP_REGIONS[0], s3, region, s3)


def every_version(s3: str, region: str, *, latest_only: bool = False) -> list[tuple[str, Any]]:
    """(key, Arrow table) for every version (or only the current one) of every data object in the region."""
    client = s3_client(region, s3)
    bucket = BUCKETS.backup(region)
    found = []
    for v in store.versions(client, bucket, layout.SNAPSHOT_PREFIX):
        if v["DeleteMarker"] or not v["Key"].endswith(".parquet") or (latest_only and not v["IsLatest"]):
            continue
        body = client.get_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])["Body"].read()
        found.append((v["Key"], pq.read_table(io.BytesIO(body))))
    return found


def rows_of(tables: list[tuple[str, Any]], user_ids: set[int]) -> Counter[str]:
    """Rows per table whose user_id column holds one of these people (raw id check, independent of pseudonyms)."""
    found: Counter[str] = Counter()
    for key, table in tables:
        if "user_id" in table.column_names:
            name = key.split("/data/")[1].split("/")[0]
            hits = sum(1 for v in table.column("user_id").to_pylist() if v in user_ids)
            if hits:
                found[name] += hits
    return found


def bucket_of(key: bytes, user_id: int, entry: TableEntry) -> int:
    """The subject bucket the manifest says a person's rows of one table sit in."""
    assert entry.buckets is not None
    return layout.bucket_of(subject_pseudonym(key, user_id), entry.buckets)


def current_counts(s3: str, region: str, sid: str) -> dict[str, int]:
    manifest = read_manifest(s3_client(region, s3), BUCKETS.backup(region), sid)
    return {t: e.rows for t, e in manifest.tables.items()}


def test_snapshot_writes_bucketed_objects_and_a_manifest_last(primary: str, s3_endpoint: str) -> None:
    sid = "20261101T020000Z"
    snapshot_both(primary, s3_endpoint, sid)
    policy = load_policy()
    with transaction(primary) as cur:
        expected = {}
        for table, rule in policy.tables.items():
            if rule.backup:
                cur.execute(f"SELECT count(*) FROM {table}")  # noqa: S608 - names from the policy file
                expected[table] = cur.fetchone()[0]
    for region in BACKUP_REGIONS:
        client = s3_client(region, s3_endpoint)
        bucket = BUCKETS.backup(region)
        manifest = read_manifest(client, bucket, sid)
        assert manifest.policy_version == policy.version and manifest.buckets == 64
        assert {t: e.rows for t, e in manifest.tables.items()} == expected
        # every table that erasure rewrites is split into subject buckets; retained ones are not
        assert all(e.buckets and e.buckets > 1 for e in manifest.tables.values() if e.rewritable)
        assert manifest.tables["legal_holds"].buckets == 1
        for entry in manifest.tables.values():
            for obj in entry.objects:
                head = client.head_object(Bucket=bucket, Key=obj.key)
                assert head["ServerSideEncryption"] == "AES256"
                body = client.get_object(Bucket=bucket, Key=obj.key)["Body"].read()
                assert hashlib.sha256(body).hexdigest() == obj.sha256 and len(body) == obj.bytes
                table = pq.read_table(io.BytesIO(body))
                assert table.num_rows == obj.rows
                # every row sits in the bucket its subject's pseudonym names; rows without a subject are unbucketed
                for user_id in set(table.column("user_id").to_pylist()) if "user_id" in table.column_names else set():
                    want = None if user_id is None else bucket_of(KEY, user_id, entry)
                    assert obj.bucket == want
        # free text with quotes, commas and newlines and jsonb/arrays survive as written
        comments = [t for k, t in every_version(s3_endpoint, region) if "/comments/" in k]
        assert any('"quote", a comma\nand a newline' in b for t in comments for b in t.column("body").to_pylist())
    # one person's rows live in one object per table: a computable, small set
    tables = read_manifest(s3_client("us-east-1", s3_endpoint), BUCKETS.backup("us-east-1"), sid).tables
    holding = {k for k, t in every_version(s3_endpoint, "us-east-1") if rows_of([(k, t)], {7})}
    assert holding
    for k in holding:
        table = k.split("/data/")[1].split("/")[0]
        assert k.endswith(f"b{bucket_of(KEY, 7, tables[table]):04d}.parquet")
    # a rerun of the same snapshot id leaves the complete snapshot alone
    assert take_snapshot(primary, "us-east-1", s3_endpoint, sid, policy, KEY)["status"] == "already complete"


def test_propagation_rewrites_only_affected_objects_in_both_regions(primary: str, s3_endpoint: str) -> None:
    sids = ["20261101T020000Z", "20261102T020000Z"]
    for sid in sids:
        snapshot_both(primary, s3_endpoint, sid)
    before = {r: current_counts(s3_endpoint, r, sids[0]) for r in BACKUP_REGIONS}
    erased_ids = {3, 11}
    pseudonyms = {erase(primary, u) for u in erased_ids}
    manifest = read_manifest(s3_client("us-east-1", s3_endpoint), BUCKETS.backup("us-east-1"), sids[0])
    holding_tables = ["accounts", "ssh_keys", "invoices", "payments", "comments", "usage_events", "survey_responses"]
    affected = sum(len({bucket_of(KEY, u, manifest.tables[t]) for u in erased_ids}) for t in holding_tables)
    total_objects = len(manifest.objects)

    results = {r: propagate_region(primary, r, s3_endpoint, key=KEY) for r in BACKUP_REGIONS}

    for region, result in results.items():
        # per snapshot: the object of each table holding them, in the bucket each of them falls in, and nothing else
        assert result.objects_rewritten == 2 * affected
        assert result.objects_rewritten < total_objects
        assert max(Counter(result.rewrites_per_object).values()) == 1
        # each of the two people applied to each of the two snapshots, and now to the whole region
        assert (result.applications, result.tombstones, result.tombstones_newly_applied) == (4, 2, 2)
        assert result.rows_deleted == 2 * len(erased_ids) * (1 + 1 + 3 + 3 + 1)
        assert result.rows_pseudonymised == 2 * len(erased_ids) * 2
        versions = every_version(s3_endpoint, region)
        assert sum(rows_of(versions, erased_ids).values()) == 0, "an erased person survives in some object version"
        for _, table in versions:
            assert not set(table.column(layout.SUBJECT_COLUMN).to_pylist()) & pseudonyms
        # tax records stay, unlinked and pseudonymised, as on the primary
        invoices = [t for k, t in versions if "/invoices/" in k]
        linked = [p for t in invoices for p in t.column("subject_pseudonym").to_pylist() if p in pseudonyms]
        assert len(linked) == 2 * len(erased_ids)
        for sid in sids:
            after = current_counts(s3_endpoint, region, sid)
            for table, n in before[region].items():
                removed = {"accounts": 1, "ssh_keys": 1, "comments": 3, "usage_events": 3, "survey_responses": 1}
                assert after[table] == n - removed.get(table, 0) * len(erased_ids), table
    with transaction(primary) as cur:
        cur.execute("SELECT region, status, snapshots FROM backup_propagation_status ORDER BY region")
        assert cur.fetchall() == [("ap-southeast-1", "applied", 2)] * 2 + [("us-east-1", "applied", 2)] * 2
        cur.execute("SELECT payload FROM ledger WHERE kind = 'backup_propagation'")
        payloads = [r[0] for r in cur.fetchall()]
        assert len(payloads) == 2 and all("user" not in json.dumps(p) for p in payloads)
    # nothing pending: a second run reads and rewrites nothing
    again = propagate_region(primary, "us-east-1", s3_endpoint, key=KEY)
    assert again.objects_read == 0 and again.objects_rewritten == 0
    assert (again.applications, again.tombstones, again.tombstones_newly_applied) == (0, 2, 0)


def test_interrupted_propagation_loses_nobody_and_a_rerun_finishes(primary: str, s3_endpoint: str) -> None:
    sid = "20261101T020000Z"
    snapshot_both(primary, s3_endpoint, sid)
    before = current_counts(s3_endpoint, "us-east-1", sid)
    others = rows_of(every_version(s3_endpoint, "us-east-1"), set(range(1, USERS + 1)) - {5})
    p = erase(primary, 5)
    with pytest.raises(PropagationInterrupted):
        propagate_region(primary, "us-east-1", s3_endpoint, key=KEY, interrupt_after_puts=3)
    # half done: nobody else lost a row in the current objects
    current = every_version(s3_endpoint, "us-east-1", latest_only=True)
    assert rows_of(current, set(range(1, USERS + 1)) - {5}) == others

    result = propagate_region(primary, "us-east-1", s3_endpoint, key=KEY)
    assert result.manifest_entries_repaired >= 1  # the objects rewritten before the kill, taken as they are
    versions = every_version(s3_endpoint, "us-east-1")
    assert sum(rows_of(versions, {5}).values()) == 0
    assert rows_of(versions, set(range(1, USERS + 1)) - {5}) == others
    client = s3_client("us-east-1", s3_endpoint)
    manifest = read_manifest(client, BUCKETS.backup("us-east-1"), sid)
    for obj in manifest.objects:  # the manifest matches what is stored, object by object
        body = client.get_object(Bucket=BUCKETS.backup("us-east-1"), Key=obj.key)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == obj.sha256
    assert manifest.tables["comments"].rows == before["comments"] - 3
    assert not any(p in t.column(layout.SUBJECT_COLUMN).to_pylist() for _, t in versions)


def test_a_snapshot_written_while_a_person_was_erased_keeps_them_pending_until_it_is_rewritten(
    primary: str, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Propagation no longer holds the region for its whole run: a backup written beside it can complete
    holding a person erased (and propagated) after its export began. That person must not stay 'applied',
    neither in the status table nor in their erasure certificate."""
    from lethe.erasure import certificate

    region = BACKUP_REGIONS[0]
    take_snapshot(primary, region, s3_endpoint, "20261101T020000Z", load_policy(), KEY)
    status = "SELECT status, snapshots FROM backup_propagation_status WHERE subject_pseudonym = %s AND region = %s"
    evidence = s3_client("ap-south-1", s3_endpoint)
    erased: dict[str, str] = {}

    def certified() -> dict[str, Any]:
        """The region's entry of her certificate, as the auditor reads it from the evidence bucket."""
        entry = certificate.read(evidence, erased["request"])["backup_propagation"][region]
        body = evidence.get_object(Bucket=BUCKETS.evidence, Key=certificate.markdown_key(erased["request"]))
        page = body["Body"].read().decode()
        assert f"| {region} | {entry['status']} |" in page  # the page says what the JSON says
        return dict(entry)

    real_put = store.put_file
    once = threading.Lock()  # the export's writer threads put at once

    def erase_and_propagate_mid_export(*args: Any, **kwargs: Any) -> str:
        with once:
            first = not erased
            erased.setdefault("p", "")
        if first:  # the second night's export has read its tombstones and rows: now person 7 is erased
            erased["p"], erased["request"] = erase_certify_propagate(primary, s3_endpoint, region, 7)
            with transaction(primary) as cur:
                cur.execute(status, (erased["p"], region))
                assert cur.fetchone() == ("applied", 1)  # the only complete snapshot is rewritten
            assert certified()["status"] == "applied"
        return real_put(*args, **kwargs)

    monkeypatch.setattr(store, "put_file", erase_and_propagate_mid_export)
    take_snapshot(primary, region, s3_endpoint, "20261102T020000Z", load_policy(), KEY)
    monkeypatch.undo()
    second = [(k, t) for k, t in every_version(s3_endpoint, region) if "/20261102T020000Z/" in k]
    assert rows_of(second, {7})["accounts"] == 1  # the new snapshot holds her, as of its export
    with transaction(primary) as cur:
        cur.execute(status, (erased["p"], region))
        assert cur.fetchone() == ("pending", 1)
    assert certified()["status"] == "pending"  # not "applied" while a snapshot holds her
    assert certified()["reason"]

    propagate_region(primary, region, s3_endpoint, key=KEY)
    assert sum(rows_of(every_version(s3_endpoint, region), {7}).values()) == 0
    with transaction(primary) as cur:
        cur.execute(status, (erased["p"], region))
        assert cur.fetchone() == ("applied", 2)
    assert certified()["status"] == "applied" and certified()["snapshots"] == 2


def test_a_backup_killed_between_its_manifest_and_its_catalogue_is_completed_by_the_retry(
    primary: str, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found from outside: a snapshot whose run died after writing its manifest, before recording it, holding a
    person erased (and propagated) meanwhile. The retry found the manifest and only marked it complete: she
    stayed 'applied' in the status table and her certificate while the snapshot held her rows."""
    from lethe.backup import snapshot
    from lethe.erasure import certificate

    region = BACKUP_REGIONS[0]
    take_snapshot(primary, region, s3_endpoint, "20261101T020000Z", load_policy(), KEY)
    evidence = s3_client("ap-south-1", s3_endpoint)
    erased: dict[str, str] = {}
    real_put = store.put_file
    once = threading.Lock()

    def erase_and_propagate_mid_export(*args: Any, **kwargs: Any) -> str:
        if once.acquire(blocking=False):
            erased["p"], erased["request"] = erase_certify_propagate(primary, s3_endpoint, region, 7)
        return real_put(*args, **kwargs)

    def killed(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise KeyboardInterrupt("killed after the manifest")

    sid = "20261102T020000Z"
    with monkeypatch.context() as patched:
        patched.setattr(store, "put_file", erase_and_propagate_mid_export)
        patched.setattr(snapshot, "record_complete", killed)
        with pytest.raises(KeyboardInterrupt):
            take_snapshot(primary, region, s3_endpoint, sid, load_policy(), KEY)
    assert store.exists(s3_client(region, s3_endpoint), BUCKETS.backup(region), layout.manifest_key(sid))
    status = "SELECT status FROM backup_propagation_status WHERE subject_pseudonym = %s AND region = %s"
    with transaction(primary) as cur:
        cur.execute(status, (erased["p"], region))
        assert cur.fetchone() == ("applied",)  # as the run died: the only snapshot it knew was rewritten

    summary = take_snapshot(primary, region, s3_endpoint, sid, load_policy(), KEY)  # the task's retry
    assert summary["status"] == "complete" and summary["erasures_pending_again"] == 1
    assert rows_of([(k, t) for k, t in every_version(s3_endpoint, region) if f"/{sid}/" in k], {7})["accounts"] == 1
    with transaction(primary) as cur:
        cur.execute(status, (erased["p"], region))
        assert cur.fetchone() == ("pending",)
        cur.execute("SELECT status FROM backup_snapshots WHERE snapshot_id = %s AND region = %s", (sid, region))
        assert cur.fetchone() == ("complete",)
        cur.execute(
            "SELECT count(*) FROM ledger WHERE kind = 'backup_snapshot' AND payload->>'snapshot_id' = %s", (sid,)
        )
        assert cur.fetchone() == (1,)
    assert certificate.read(evidence, erased["request"])["backup_propagation"][region]["status"] == "pending"
    assert take_snapshot(primary, region, s3_endpoint, sid, load_policy(), KEY)["status"] == "already complete"

    propagate_region(primary, region, s3_endpoint, key=KEY)
    assert sum(rows_of(every_version(s3_endpoint, region), {7}).values()) == 0
    assert certificate.read(evidence, erased["request"])["backup_propagation"][region]["status"] == "applied"


def test_restore_replays_every_tombstone(primary: str, s3_endpoint: str, services: tuple[str, str]) -> None:
    early = erase(primary, 2)  # erased before the snapshot: its tombstone is inside it
    sid = "20261101T020000Z"
    snapshot_both(primary, s3_endpoint, sid)
    late = erase(primary, 9)  # erased after, not yet propagated: only the primary knows
    target = testing.fresh_database(services[0])
    lines: list[str] = []
    try:
        report = restore_snapshot(
            sid, "ap-southeast-1", target, endpoint_url=s3_endpoint, key=KEY, primary_url=primary, out=lines.append
        )
        assert report.tombstones_in_snapshot == 1 and report.tombstones_from_primary == 1
        assert report.rows_removed["comments"] == 3 and report.rows_pseudonymised["invoices"] == 1
        with transaction(target) as cur:
            cur.execute("SELECT user_id FROM accounts ORDER BY 1")
            assert [r[0] for r in cur.fetchall()] == [u for u in range(1, USERS + 1) if u not in (2, 9)]
            cur.execute("SELECT count(*) FROM comments WHERE user_id IN (2, 9)")
            assert cur.fetchone()[0] == 0
            cur.execute("SELECT count(*), count(DISTINCT user_id) FROM comments")
            assert cur.fetchone() == (3 * (USERS - 2), USERS - 2)
            cur.execute("SELECT subject_pseudonym FROM invoices WHERE user_id IS NULL ORDER BY 1")
            assert [r[0] for r in cur.fetchall()] == sorted([early, late])
            cur.execute("SELECT subject_pseudonym FROM erasure_tombstones ORDER BY 1")
            assert [r[0] for r in cur.fetchall()] == sorted([early, late])
            cur.execute("SELECT interests, ip_address::text FROM accounts, security_evidence LIMIT 1")
            assert cur.fetchone() == (["sql", "go"], "10.1.2.3/32")
        assert any("replayed 2 tombstones" in line for line in lines)
        assert any(line.startswith("verified: 0 rows") for line in lines)
        assert not any("example.test" in line or "Person" in line for line in lines)
    finally:
        testing.drop_database(target)


def test_mentions_of_an_erased_person_leave_every_backup_version_and_every_restore(
    primary: str, s3_endpoint: str, services: tuple[str, str]
) -> None:
    """Person 6 wrote about person 4 by email, handle and phone; person 4 is erased after the snapshot."""
    text = "ask USER4@example.test or @user4, call +91 00000 0004; user40 is someone else"
    redacted = "ask [erased] or @[erased], call [erased]; user40 is someone else"
    with transaction(primary) as cur:
        cur.execute("INSERT INTO comments VALUES (9001, 6, %s, %s)", (text, NOW))
    sid = "20261101T020000Z"
    snapshot_both(primary, s3_endpoint, sid)
    erase(primary, 4)
    with transaction(primary) as cur:  # what subject_erasure leaves: the mention redacted, identifiers pseudonymised
        cur.execute("UPDATE comments SET body = %s WHERE comment_id = 9001", (redacted,))
        ids = [pseudonym(KEY, k, v) for k, v in (("email", "user4@example.test"), ("username", "user4"))]
        ids.append(pseudonym(KEY, "phone", "+91000000004"))
        cur.execute("UPDATE erasure_tombstones SET identifier_pseudonyms = %s", (ids,))

    # a restore before propagation: the mention never reaches the target
    target = testing.fresh_database(services[0])
    lines: list[str] = []
    try:
        report = restore_snapshot(
            sid, "us-east-1", target, endpoint_url=s3_endpoint, key=KEY, primary_url=primary, out=lines.append
        )
        assert report.mentions_redacted == {"comments": 3}
        with transaction(target) as cur:
            cur.execute("SELECT body FROM comments WHERE comment_id = 9001")
            assert cur.fetchone() == (redacted,)
            cur.execute(r"SELECT count(*) FROM comments WHERE body ~* '(user4@|@user4\M|0004)'")
            assert cur.fetchone() == (0,)
        assert not any("user4" in line for line in lines)
    finally:
        testing.drop_database(target)

    others_before = every_version(s3_endpoint, "us-east-1", latest_only=True)
    for region in BACKUP_REGIONS:
        result = propagate_region(primary, region, s3_endpoint, key=KEY)
        assert result.mentions_redacted == 3 and result.mentions_left == 0
        bodies = [b for k, t in every_version(s3_endpoint, region) if "/comments/" in k for b in t["body"].to_pylist()]
        assert redacted in bodies and text not in bodies
        assert not any(re.search(r"user4@|@user4\b|0004", b or "", re.IGNORECASE) for b in bodies)
    # everyone else's comments are as they were
    after = every_version(s3_endpoint, "us-east-1", latest_only=True)
    assert _comments(after, exclude={4, 9001}) == _comments(others_before, exclude={4, 9001})


def _comments(tables: list[tuple[str, Any]], exclude: set[int]) -> list[tuple[Any, ...]]:
    rows = [
        r
        for k, t in tables
        if "/comments/" in k
        for r in zip(*(t[c].to_pylist() for c in ("comment_id", "user_id", "body")), strict=True)
    ]
    return sorted(r for r in rows if r[0] not in exclude and r[1] not in exclude)


def test_expiry_deletes_every_version_of_old_snapshots(primary: str, s3_endpoint: str) -> None:
    old, new = "20260101T020000Z", "20261101T020000Z"
    snapshot_both(primary, s3_endpoint, old)
    snapshot_both(primary, s3_endpoint, new)
    client = s3_client("us-east-1", s3_endpoint)
    bucket = BUCKETS.backup("us-east-1")
    client.delete_object(Bucket=bucket, Key=layout.manifest_key(old))  # only a delete marker: bytes remain
    client.put_object(Bucket=bucket, Key=layout.manifest_key(old), Body=b"{}")
    summary = expire_region(
        primary, "us-east-1", s3_endpoint, timedelta(days=35), now=datetime(2026, 11, 2, tzinfo=UTC)
    )
    assert summary["expired_snapshots"] == 1
    assert list(store.versions(client, bucket, layout.snapshot_prefix(old))) == []
    assert store.exists(client, bucket, layout.manifest_key(new))


def test_object_lock_in_compliance_mode_longer_than_the_deadline_is_a_violation(
    primary: str, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LETHE_BUCKET_PREFIX", f"lock{uuid.uuid4().hex[:8]}")
    locked = BUCKETS.backup("ap-southeast-1")
    client = s3_client("ap-southeast-1", s3_endpoint)
    client.create_bucket(
        Bucket=locked,
        CreateBucketConfiguration={"LocationConstraint": "ap-southeast-1"},
        ObjectLockEnabledForBucket=True,
    )
    client.put_object_lock_configuration(
        Bucket=locked,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 365}},
        },
    )
    governed = BUCKETS.backup("us-east-1")
    s3_client("us-east-1", s3_endpoint).create_bucket(Bucket=governed, ObjectLockEnabledForBucket=True)
    s3_client("us-east-1", s3_endpoint).put_object_lock_configuration(
        Bucket=governed,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 365}},
        },
    )
    ensure_buckets(s3_endpoint)
    violations = object_lock_violations(s3_endpoint, erasure_deadline_days=30)
    assert len(violations) == 1 and locked in violations[0] and "COMPLIANCE" in violations[0]
    assert object_lock_violations(s3_endpoint, erasure_deadline_days=400) == []
    with pytest.raises(RuntimeError, match=locked):
        take_snapshot(primary, "ap-southeast-1", s3_endpoint, "20261101T020000Z", load_policy(), KEY)


def test_an_unreachable_region_fails_with_its_name_and_endpoint(primary: str, s3_endpoint: str) -> None:
    import socket

    from lethe.backup.store import RegionUnreachable

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(RegionUnreachable, match=f"ap-southeast-1.*{dead}"):
        propagate_region(primary, "ap-southeast-1", dead, key=KEY)


def test_restore_command(
    primary: str, s3_endpoint: str, services: tuple[str, str], monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from lethe.cli import main

    sid = "20261101T020000Z"
    snapshot_both(primary, s3_endpoint, sid)
    erase(primary, 4)
    monkeypatch.setenv("LETHE_PSEUDONYM_KEY", KEY.decode())
    target = testing.fresh_database(services[0])
    try:
        assert main(["restore", "--snapshot", "yesterday", "--region", "us-east-1", "--target", target]) == 2
        assert "YYYYMMDDTHHMMSSZ" in capsys.readouterr().err
        assert main(["restore", "--snapshot", "20200101T000000Z", "--region", "us-east-1", "--target", target]) == 2
        assert "no complete snapshot 20200101T000000Z in region us-east-1" in capsys.readouterr().err
        assert main(["restore", "--snapshot", sid, "--region", "us-east-1", "--target", target]) == 0
        out = capsys.readouterr().out
        assert "replayed 1 tombstones (0 in the snapshot, 1 more from the primary)" in out
        with transaction(target) as cur:
            cur.execute("SELECT count(*) FROM accounts WHERE user_id = 4")
            assert cur.fetchone()[0] == 0
            cur.execute("SELECT count(*) FROM accounts")
            assert cur.fetchone()[0] == USERS - 1
        # a second restore into the now non-empty target is refused, naming the tables
        assert main(["restore", "--snapshot", sid, "--region", "us-east-1", "--target", target]) == 2
        assert "target database is not empty" in capsys.readouterr().err
    finally:
        testing.drop_database(target)


def test_the_export_transaction_is_bounded_in_statement_and_idle_time(db_url: str) -> None:
    import time

    import psycopg2
    from lethe.backup.snapshot import export_transaction

    with export_transaction(db_url) as cur:  # the export's own settings: neither is left unbounded ("0")
        cur.execute("SHOW statement_timeout")
        bounds = [cur.fetchone()[0]]
        cur.execute("SHOW idle_in_transaction_session_timeout")
        bounds.append(cur.fetchone()[0])
        assert "0" not in bounds
        cur.execute("SELECT current_setting('transaction_isolation'), current_setting('transaction_read_only')")
        assert cur.fetchone() == ("repeatable read", "on")
    with pytest.raises(psycopg2.errors.QueryCanceled), export_transaction(db_url, statement_timeout="100ms") as cur:
        cur.execute("SELECT pg_sleep(5)")
    # An export stalled between statements (a hung upload) loses its session, and so its snapshot.
    with pytest.raises(psycopg2.OperationalError), export_transaction(db_url, idle_timeout="200ms") as cur:
        cur.execute("SELECT 1")
        time.sleep(1.5)
        cur.execute("SELECT 1")


def test_indexed_propagation_redacts_exactly_what_a_full_read_does_and_reads_less(
    primary: str, s3_endpoint: str
) -> None:
    """The same two snapshots in both regions: us-east-1 propagated with the term index (its older snapshot's
    manifest stripped of indexes, as written before them), ap-southeast-1 by reading every free-text object."""
    mentions = {
        9001: (6, "ask USER4@example.test or @user4, call +91 00000 0004; user40 is someone else"),
        9002: (7, "Person 5 helped; person 50 did not"),
        9003: (8, "nobody in particular"),
    }
    with transaction(primary) as cur:
        for comment_id, (user_id, body) in mentions.items():
            cur.execute("INSERT INTO comments VALUES (%s, %s, %s, %s)", (comment_id, user_id, body, NOW))
    old, new = "20261101T020000Z", "20261102T020000Z"
    policy = load_policy()
    policy = policy.model_copy(update={"backups": policy.backups.model_copy(update={"term_index": True})})
    for sid in (old, new):
        snapshot_both(primary, s3_endpoint, sid, policy)
    indexed, full = BACKUP_REGIONS
    client, bucket = s3_client(indexed, s3_endpoint), BUCKETS.backup(indexed)
    manifest = read_manifest(client, bucket, new)
    free_text = [o for e in manifest.tables.values() if e.free_text for o in e.objects]
    assert free_text and all(o.term_index for o in free_text)
    assert not re.search(r"example\.test|user\d|person", manifest.to_json().decode(), re.IGNORECASE)
    stripped = read_manifest(client, bucket, old)
    for obj in stripped.objects:
        obj.term_index = None
    write_manifest(client, bucket, stripped)

    for user_id in (4, 5):
        erase(primary, user_id)
    identifiers = {}
    with transaction(primary) as cur:  # the tombstones keep the keyed pseudonyms of every identifier
        for user_id in (4, 5):
            person = residue.Footprint(user_id)
            person.add("email", f"user{user_id}@example.test")
            person.add("username", f"user{user_id}")
            person.add("phone", f"+9100000{user_id:04d}")
            person.add("name", f"Person {user_id}")
            identifiers[user_id] = person.pseudonyms(KEY)
            cur.execute(
                "UPDATE erasure_tombstones SET identifier_pseudonyms = %s WHERE subject_pseudonym = %s",
                (identifiers[user_id], subject_pseudonym(KEY, user_id)),
            )
    with_index = propagate_region(primary, indexed, s3_endpoint, key=KEY)
    without = propagate_region(primary, full, s3_endpoint, key=KEY, use_term_index=False)

    # identical contents, object by object, read back with pyarrow
    def contents(region: str) -> dict[str, list[tuple[Any, ...]]]:
        found = {}
        for key, table in every_version(s3_endpoint, region):
            rows = zip(*(table[c].to_pylist() for c in table.column_names if c != layout.SUBJECT_COLUMN), strict=True)
            found[key] = sorted(rows, key=repr)
        return found

    ours, theirs = contents(indexed), contents(full)
    assert ours == theirs and len(ours) == len(manifest.objects) * 2  # and no old version left on either side
    bodies = [b for k, rows in ours.items() if "/comments/" in k for r in rows for b in r if isinstance(b, str)]
    assert "ask [erased] or @[erased], call [erased]; user40 is someone else" in bodies
    assert "[erased] helped; person 50 did not" in bodies and "nobody in particular" in bodies
    # per snapshot: 3 of person 4 and 1 of person 5 in comments; their names on the invoices kept for tax stay as
    # issued (`erasure.keep`), as on the primary
    invoices = [v for k, rows in ours.items() if "/invoices/" in k for r in rows for v in r]
    assert sum(1 for v in invoices if v in ("Person 4", "Person 5")) == 2 * 2 and "[erased]" not in invoices
    assert with_index.mentions_redacted == without.mentions_redacted == 2 * (3 + 1)
    assert with_index.mentions_left == without.mentions_left == 0
    # fewer objects read: the indexed snapshot's free-text objects are searched only where the filter may hold a term
    assert without.free_text_objects == with_index.free_text_objects == 2 * len(free_text)
    assert without.free_text_objects_searched == 2 * len(free_text)
    searched_new = with_index.free_text_objects_searched - len(free_text)  # the stripped snapshot: every object
    assert 0 < searched_new < len(free_text) / 2
    assert with_index.objects_read < without.objects_read
    assert with_index.free_text_objects_read < without.free_text_objects_read
    # a rewritten object's index describes its new content: the redacted comments no longer hold the erased terms
    erased_terms = Query.of(i for ids in identifiers.values() for i in ids)
    comments = read_manifest(client, bucket, new).tables["comments"]
    assert not any(may_mention(o.term_index, erased_terms) for o in comments.objects)
    # objects without an index (the stripped snapshot's, as term indexes off leaves them) are rewritten without one
    assert all(o.term_index is None for o in read_manifest(client, bucket, old).objects)


def test_propagation_rewrites_an_object_a_row_group_at_a_time(
    primary: str, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Objects of many row groups (2 rows each here, 65,536 in use), read a row at a time (16,384 in use): the
    erased person's rows and a mention of them in a later row group go, every other row of the object stays as
    it was, and what is written back is gathered again into full row groups of that size (a worker never holds
    a whole object, and reading in smaller batches does not make the rewritten object larger)."""
    from lethe.backup import frames

    monkeypatch.setattr(frames, "ROW_GROUP_ROWS", 2)
    monkeypatch.setattr(frames, "READ_ROWS", 1)
    text = "ask USER4@example.test or @user4"
    with transaction(primary) as cur:
        cur.execute("INSERT INTO comments VALUES (9001, 6, %s, %s)", (text, NOW))
    sid = "20261101T020000Z"
    take_snapshot(primary, "us-east-1", s3_endpoint, sid, load_policy(), KEY)
    before = every_version(s3_endpoint, "us-east-1")
    assert any(pq.ParquetFile(io.BytesIO(_body(s3_endpoint, k))).num_row_groups > 2 for k, _ in before)
    p = erase(primary, 4)
    with transaction(primary) as cur:
        ids = [pseudonym(KEY, "email", "user4@example.test"), pseudonym(KEY, "username", "user4")]
        cur.execute("UPDATE erasure_tombstones SET identifier_pseudonyms = %s", (ids,))

    result = propagate_region(primary, "us-east-1", s3_endpoint, key=KEY)

    assert result.mentions_redacted == 2 and result.mentions_left == 0 and result.tombstoned_rows_left == 0
    after = every_version(s3_endpoint, "us-east-1")
    assert {k for k, _ in after} == {k for k, _ in before} and len(after) == len(before)  # old versions swept
    assert sum(rows_of(after, {4}).values()) == 0
    bodies = [b for k, t in after if "/comments/" in k for b in t["body"].to_pylist()]
    assert "ask [erased] or @[erased]" in bodies and not any("user4" in (b or "").lower() for b in bodies)
    for key, _ in after:
        meta = pq.ParquetFile(io.BytesIO(_body(s3_endpoint, key))).metadata
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        assert all(n == 2 for n in sizes[:-1]) and 0 < sizes[-1] <= 2, (key, sizes)  # full groups, the last may not be

    def others(tables: list[tuple[str, Any]]) -> list[str]:
        """Every row but person 4's (deleted or pseudonymised) and the comment that mentioned them, per table."""
        rows = []
        for key, table in tables:
            for row in table.drop_columns([layout.SUBJECT_COLUMN]).to_pylist():
                if row.get("user_id") == 4 or row.get("comment_id") == 9001 or row.get("subject_pseudonym") == p:
                    continue
                rows.append(f"{key.split('/data/')[1].split('/')[0]} {sorted(row.items())}")
        return sorted(rows)

    assert others(after) == others(before)
    manifest = read_manifest(s3_client("us-east-1", s3_endpoint), BUCKETS.backup("us-east-1"), sid)
    assert {o.key: o.rows for o in manifest.objects} == {k: t.num_rows for k, t in after}


def _body(s3: str, key: str) -> bytes:
    return bytes(s3_client("us-east-1", s3).get_object(Bucket=BUCKETS.backup("us-east-1"), Key=key)["Body"].read())


@pytest.mark.parametrize("failing", ["upload", "block"])
def test_a_failing_upload_or_block_fails_the_export_plainly_and_leaves_nothing_running(
    primary: str, failing: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The export's blocks, spill files and writer threads: a bucket that refuses an object, or a block that
    cannot be parsed, fails the export with that error (no hang, no thread left behind, no spill file kept)."""
    import os
    import threading

    from lethe.backup import frames
    from lethe.backup.snapshot import backed_up_tables, export_tables, export_transaction

    monkeypatch.setattr(frames, "COPY_BLOCK_BYTES", 512)  # many blocks a table
    calls = {"sink": 0, "parse": 0}

    def sink(table: str, bucket_no: int | None, body: Any) -> tuple[str, str]:
        calls["sink"] += 1
        if failing == "upload" and calls["sink"] == 5:
            raise RuntimeError("the bucket refused the object")
        return f"{table}/{bucket_no}", hashlib.sha256(body.read()).hexdigest()

    parse = frames.parse_csv

    def parse_or_fail(block: Any, columns: Any) -> Any:
        calls["parse"] += 1
        if failing == "block" and calls["parse"] == 7:
            raise ValueError("a block that does not parse")
        return parse(block, columns)

    monkeypatch.setattr(frames, "parse_csv", parse_or_fail)
    threads, fds = threading.active_count(), len(os.listdir("/proc/self/fd"))
    policy = load_policy()
    expected = "the bucket refused the object" if failing == "upload" else "a block that does not parse"
    with export_transaction(primary) as cur, pytest.raises((RuntimeError, ValueError), match=expected):
        export_tables(cur, backed_up_tables(policy), policy, KEY, set(), sink)
    assert threading.active_count() == threads
    assert len(os.listdir("/proc/self/fd")) <= fds  # every spill file closed (an unnamed file lives by its fd)


@pytest.mark.parametrize("block_bytes", [300, 4 << 20], ids=["tiny-blocks", "default-blocks"])
def test_the_objects_hold_exactly_the_tables_rows_whatever_the_block_size(
    primary: str, s3_endpoint: str, block_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows longer than a block, quotes, commas and newlines: every table's rows read back from the raw Parquet of
    the stored objects equal a plain SELECT of the table, whether a block holds a row or thousands."""
    from lethe.backup import frames

    with transaction(primary) as cur:  # a comment of 5 MiB, longer than any block, with newlines and quotes in it
        huge = ('a "long" line, with a comma\n' * 200_000)[: 5 << 20]
        cur.execute("INSERT INTO comments VALUES (9001, 1, %s, %s), (9002, 2, '', %s)", (huge, NOW, NOW))
    monkeypatch.setattr(frames, "COPY_BLOCK_BYTES", block_bytes)
    sid = "20261101T020000Z"
    take_snapshot(primary, "us-east-1", s3_endpoint, sid, load_policy(), KEY)

    stored: dict[str, list[tuple[Any, ...]]] = {}
    for key, table in every_version(s3_endpoint, "us-east-1"):
        name = key.split("/data/")[1].split("/")[0]
        columns = [c for c in table.column_names if c != layout.SUBJECT_COLUMN]
        stored.setdefault(name, []).extend(zip(*(table.column(c).to_pylist() for c in columns), strict=True))
    with transaction(primary) as cur:
        for name in ("accounts", "comments", "invoices", "payments", "survey_responses", "ssh_keys"):
            cur.execute(f"SELECT * FROM {name}")  # noqa: S608 - fixed test names
            expected = cur.fetchall()
            held = {row[0]: row for row in stored[name]}  # the first column is each table's own id
            assert len(held) == len(stored[name]) == len(expected), name
            for row in expected:
                for mine, theirs in zip(held[row[0]], row, strict=True):
                    if not isinstance(theirs, (dict, list)):  # jsonb and arrays are kept in PostgreSQL's text form
                        assert mine == theirs, (name, row[0])
    comments = dict((r[0], r[2]) for r in stored["comments"])
    assert comments[9001] == huge and comments[9002] == ""  # an empty text stays empty, not NULL


def test_a_snapshot_hidden_behind_delete_markers_is_found_and_every_version_removed(
    primary: str, s3_endpoint: str
) -> None:
    """A plain delete of a snapshot's objects (an operator's `aws s3 rm --recursive` on a versioned bucket) leaves
    every byte behind delete markers. The next run must still find that prefix and delete every version of it."""
    region = BACKUP_REGIONS[0]
    hidden, kept = "20261101T020000Z", "20261102T020000Z"
    for sid in (hidden, kept):
        take_snapshot(primary, region, s3_endpoint, sid, load_policy(), KEY)
    client = s3_client(region, s3_endpoint)
    bucket = BUCKETS.backup(region)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=layout.snapshot_prefix(hidden)):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=obj["Key"])  # no version id: a delete marker on top
    behind = [v for v in store.versions(client, bucket, layout.snapshot_prefix(hidden)) if not v["DeleteMarker"]]
    assert behind, "the bytes stay behind the markers"

    propagate_region(primary, region, s3_endpoint, key=KEY)  # its plan removes what has no manifest

    assert list(store.versions(client, bucket, layout.snapshot_prefix(hidden))) == []
    assert store.exists(client, bucket, layout.manifest_key(kept))
