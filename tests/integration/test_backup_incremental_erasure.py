"""Erasure on incremental backups (`backups.incremental`): propagation, replication and the audit, against a real
PostgreSQL and S3 over HTTP.

What each night held is read from the primary with plain SQL (every row as jsonb), the erasure applied to it
here as the primary's erasure does (tests/integration/test_backup.py erase()); what the store holds is read raw
with boto3 and pyarrow (every version of every object), never from Lethe's own counters alone.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from lethe import testing
from lethe.audit.backups import audit_region, tombstones
from lethe.backup import layout, propagate, store
from lethe.backup.manifest import complete_manifests
from lethe.backup.manifest import write as write_manifest
from lethe.backup.mentions import MentionFinder
from lethe.backup.propagate import (
    RegionResult,
    finish_region,
    plan_region,
    propagate_region,
    propagate_snapshot,
    sweep_versions,
)
from lethe.backup.replicate import replicate_snapshot
from lethe.backup.restore import restore_snapshot
from lethe.backup.snapshot import take_snapshot
from lethe.config import BACKUP_REGIONS, BUCKETS
from lethe.db import transaction
from lethe.policy import Policy, load_policy
from lethe.storage import s3_client
from test_backup import KEY, USERS, erase, every_version, fill_primary, rows_of

pytestmark = pytest.mark.integration

NIGHTS = [f"2026110{d}T020000Z" for d in range(1, 6)]
HER = 5
PEOPLE = 400  # the first test's: a few people a subject bucket (64), as a real table has many
DELETED = ("accounts", "ssh_keys", "comments", "usage_events", "survey_responses", "sessions")
PSEUDONYMISED = {"payments": ("user_id", "card_last4"), "invoices": ("user_id",)}


def incremental_policy() -> Policy:
    policy = load_policy()
    return policy.model_copy(update={"backups": policy.backups.model_copy(update={"incremental": True})})


def tables_of(policy: Policy) -> list[str]:
    return [t for t, rule in policy.tables.items() if rule.backup]


def contents(url: str, tables: list[str]) -> dict[str, Counter[str]]:
    """Every row of every table (plain SQL, a multiset of canonical JSON per table)."""
    found = {}
    with transaction(url) as cur:
        cur.execute("SET LOCAL statement_timeout = '60s'")
        for table in tables:
            cur.execute(f"SELECT to_jsonb(t)::text FROM {table} t")  # noqa: S608 - names from the policy file
            found[table] = Counter(json.dumps(json.loads(r[0]), sort_keys=True) for r in cur.fetchall())
    return found


def without_her(night: dict[str, Counter[str]], pseudonym: str) -> dict[str, Counter[str]]:
    """A night's rows as the primary's erasure of HER leaves them: her rows deleted or pseudonymised."""
    out: dict[str, Counter[str]] = {}
    for table, rows in night.items():
        kept: Counter[str] = Counter()
        for text, n in rows.items():
            row = json.loads(text)
            if row.get("user_id") == HER:
                if table in DELETED:
                    continue
                assert table in PSEUDONYMISED, table
                row.update({c: None for c in PSEUDONYMISED[table]}, subject_pseudonym=pseudonym)
            kept[json.dumps(row, sort_keys=True)] += n
        out[table] = kept
    return out


def more_people(url: str, upto: int) -> None:
    """People USERS+1..upto with fill_primary's rows (set-based SQL): base objects of a realistic few people a
    bucket, not one."""
    with transaction(url) as cur:
        cur.execute("SET LOCAL statement_timeout = '60s'")
        cur.execute(
            "INSERT INTO accounts (user_id, name, username, email, phone, password_hash, interests, created_at)"
            " SELECT u, 'Person ' || u, 'user' || u, 'user' || u || '@example.test', '+91' || lpad(u::text, 9, '0'),"
            " 'x', ARRAY['sql', 'go'], now() FROM generate_series(%(first)s, %(upto)s) u",
            {"first": USERS + 1, "upto": upto},
        )
        for statement in (
            "INSERT INTO ssh_keys SELECT u, u, 'ssh-ed25519 AAAA' || u || ' user' || u || '@host', now()"
            " FROM generate_series(%(first)s, %(upto)s) u",
            "INSERT INTO invoices SELECT u, u, NULL, 'Person ' || u, 'Street 1', 'TAX', 1000, 'INR', now()"
            " FROM generate_series(%(first)s, %(upto)s) u",
            "INSERT INTO payments SELECT u, u, u, NULL, 1000, 'card', '4242', now(), NULL"
            " FROM generate_series(%(first)s, %(upto)s) u",
            "INSERT INTO comments SELECT u * 10 + i, u, 'comment ' || i || ' of ' || u, now()"
            " FROM generate_series(%(first)s, %(upto)s) u, generate_series(0, 2) i",
            "INSERT INTO usage_events SELECT u * 10 + i, u, now() - i * interval '1 day', 'quiz', 100, 0"
            " FROM generate_series(%(first)s, %(upto)s) u, generate_series(0, 2) i",
            "INSERT INTO survey_responses SELECT u, u, 'nps', jsonb_build_object('score', u), now()"
            " FROM generate_series(%(first)s, %(upto)s) u",
        ):
            cur.execute(statement, {"first": USERS + 1, "upto": upto})


def change(url: str, n: int) -> None:
    """Night n's updates, inserts and deletes; on night 3 she changes rows, on night 4 one of hers goes."""
    with transaction(url) as cur:  # the others' changes leave her rows alone
        cur.execute(
            "UPDATE accounts SET name = name || %s WHERE user_id %% 97 = %s AND user_id <> %s", (f" v{n}", n, HER)
        )
        cur.execute(
            "UPDATE comments SET body = body || ' (edited)' WHERE comment_id %% 97 = %s AND user_id <> %s", (n, HER)
        )
        cur.execute(
            "INSERT INTO usage_events SELECT 100000 + %s * 1000 + u, u, now() - interval '1 hour', 'video', 5, 1"
            " FROM generate_series(1, 6) u WHERE u <> %s",
            (n, HER),
        )
        cur.execute(
            "DELETE FROM usage_events WHERE event_id %% 97 = %s AND event_id < 100000 AND user_id <> %s", (n + 2, HER)
        )
        cur.execute("DELETE FROM comments WHERE user_id = %s", (14 + n,))
        if n == 2:  # night 3: she is in the base and in this delta
            cur.execute("UPDATE comments SET body = body || ' (hers, edited)' WHERE comment_id = %s", (HER * 10,))
            cur.execute(
                "INSERT INTO usage_events VALUES (%s, %s, now() - interval '2 hours', 'video', 7, 1)",
                (900000 + HER, HER),
            )
            cur.execute("UPDATE payments SET amount_cents = 2000 WHERE user_id = %s", (HER,))
            cur.execute("UPDATE invoices SET billing_address = 'Street 2' WHERE user_id = %s", (HER,))
        if n == 3:
            cur.execute("DELETE FROM comments WHERE comment_id = %s", (HER * 10 + 1,))


def versions(client: Any, bucket: str) -> dict[str, list[dict[str, Any]]]:
    """Key -> its versions (raw list_object_versions), data objects only."""
    found: dict[str, list[dict[str, Any]]] = {}
    for v in store.versions(client, bucket, layout.SNAPSHOT_PREFIX):
        if not v["DeleteMarker"] and v["Key"].endswith(".parquet"):
            found.setdefault(v["Key"], []).append(v)
    return found


def new_versions(before: dict[str, list[dict[str, Any]]], after: dict[str, list[dict[str, Any]]]) -> dict[str, list]:
    old = {v["VersionId"] for vs in before.values() for v in vs}
    return {k: [v for v in vs if v["VersionId"] not in old] for k, vs in after.items() if k in before}


def index_objects(client: Any, bucket: str) -> dict[str, list[dict[str, Any]]]:
    """Every index object's key -> the entries it holds (raw reads: every current object under an index/)."""
    found = {}
    for v in store.versions(client, bucket, layout.SNAPSHOT_PREFIX):
        if v["IsLatest"] and not v["DeleteMarker"] and "/index/" in v["Key"]:
            body = client.get_object(Bucket=bucket, Key=v["Key"])["Body"].read()
            found[v["Key"]] = [o for entries in json.loads(gzip.decompress(body))["tables"].values() for o in entries]
    return found


def named_indexes(client: Any, bucket: str, sids: list[str]) -> set[str]:
    """The index objects these snapshots' manifests name (raw reads)."""
    named = set()
    for sid in sids:
        body = client.get_object(Bucket=bucket, Key=layout.manifest_key(sid))["Body"].read()
        named |= {ref["key"] for ref in json.loads(gzip.decompress(body))["index_objects"]}
    return named


def inconsistencies(client: Any, bucket: str) -> list[str]:
    """Every manifest entry whose sha256, size or row count is not what the store serves (read raw)."""
    wrong = []
    served: dict[str, tuple[str, int, int]] = {}
    for m in complete_manifests(client, bucket):
        for entry in m.tables.values():
            for obj in entry.objects:
                if obj.key not in served:
                    body = client.get_object(Bucket=bucket, Key=obj.key)["Body"].read()
                    served[obj.key] = (
                        hashlib.sha256(body).hexdigest(),
                        len(body),
                        pq.read_table(io.BytesIO(body)).num_rows,
                    )
                if served[obj.key] != (obj.sha256, obj.bytes, obj.rows):
                    wrong.append(f"{m.snapshot_id}: {obj.key}")
    return wrong


def applied(db_url: str, region: str) -> dict[str, set[str]]:
    with transaction(db_url) as cur:
        cur.execute(
            "SELECT snapshot_id, subject_pseudonym FROM backup_tombstone_applications WHERE region = %s", (region,)
        )
        found: dict[str, set[str]] = {}
        for sid, p in cur.fetchall():
            found.setdefault(sid, set()).add(p)
        return found


def restores_to(
    services: tuple[str, str], s3: str, region: str, sid: str, primary: str | None, tables: list[str]
) -> dict[str, Counter[str]]:
    target = testing.fresh_database(services[0])
    try:
        report = restore_snapshot(
            sid, region, target, endpoint_url=s3, key=KEY, primary_url=primary, out=lambda _: None
        )
        assert report.verified
        return contents(target, tables)
    finally:
        testing.drop_database(target)


def take_night(
    db_url: str, s3: str, policy: Policy, tables: list[str], sid: str, n: int, region: str, copy_to: str | None = None
) -> dict:
    """Night `n` of the platform (changed by `change`, but the first), snapshot `sid` taken in `region` and copied
    into `copy_to` when given; returns what the primary held (plain SQL)."""
    if n:
        change(db_url, n)
    held = contents(db_url, tables)
    take_snapshot(db_url, region, s3, sid, policy, KEY)
    if copy_to:
        replicate_snapshot(db_url, sid, region, s3, copy_to, s3)
    return held


def nights_of(db_url: str, s3: str, policy: Policy, tables: list[str], nights: list[str], region: str) -> dict:
    return {sid: take_night(db_url, s3, policy, tables, sid, n, region) for n, sid in enumerate(nights)}


def test_one_erasure_rewrites_each_shared_object_once_and_every_manifest_naming_it(
    db_url: str, s3_endpoint: str, services: tuple[str, str]
) -> None:
    policy = incremental_policy()
    tables = tables_of(policy)
    fill_primary(db_url)
    more_people(db_url, PEOPLE)
    chain_region, full_region = BACKUP_REGIONS
    expected = nights_of(db_url, s3_endpoint, policy, tables, NIGHTS, chain_region)
    # the same data as the last night, one full (non-incremental) snapshot: what one erasure rewrites there
    take_snapshot(db_url, full_region, s3_endpoint, NIGHTS[-1], load_policy(), KEY)
    client = s3_client(chain_region, s3_endpoint)
    bucket = BUCKETS.backup(chain_region)
    full_client = s3_client(full_region, s3_endpoint)
    full_bucket = BUCKETS.backup(full_region)
    held = rows_of(every_version(s3_endpoint, chain_region), {HER})
    assert held["comments"] and held["payments"]
    later = [k for k, t in every_version(s3_endpoint, chain_region) if rows_of([(k, t)], {HER})]
    assert any(not k.startswith(layout.snapshot_prefix(NIGHTS[0])) for k in later)  # she is in a delta too
    before, full_before = versions(client, bucket), versions(full_client, full_bucket)
    indexes_before = index_objects(client, bucket)

    pseudonym = erase(db_url, HER)
    with pytest.MonkeyPatch.context() as patch:  # old versions kept a while: every put stays countable
        patch.setattr(propagate, "sweep_versions", lambda *args, **kwargs: 0)
        result = propagate_region(db_url, chain_region, s3_endpoint, key=KEY)
        propagate_region(db_url, full_region, s3_endpoint, key=KEY)
    added = new_versions(before, versions(client, bucket))
    full_added = new_versions(full_before, versions(full_client, full_bucket))
    rewritten = {k: vs for k, vs in added.items() if vs}
    assert rewritten and max(len(vs) for vs in rewritten.values()) == 1  # each distinct object once
    assert result.objects_rewritten == len(rewritten)
    shared = [k for k in rewritten if k.startswith(layout.snapshot_prefix(NIGHTS[0]))]
    assert shared  # the base, named by all five manifests, rewritten once
    chain_bytes = sum(int(v["Size"]) for vs in added.values() for v in vs)
    full_bytes = sum(int(v["Size"]) for vs in full_added.values() for v in vs)
    print(f"bytes rewritten: {len(NIGHTS)} incremental snapshots {chain_bytes}, one full snapshot {full_bytes}")
    assert 0 < chain_bytes <= 2 * full_bytes
    # The manifests do not each repeat the entries of the objects they share: each snapshot's objects are named in
    # one index object, a rewrite gave a new one to the snapshots whose objects it rewrote, the old ones went.
    indexes = index_objects(client, bucket)
    assert set(indexes) == named_indexes(client, bucket, NIGHTS)
    keys = Counter(o["key"] for entries in indexes.values() for o in entries)
    assert set(keys.values()) == {1}
    writers = {layout.written_by(k) for k in rewritten}
    assert {layout.written_by(k) for k in set(indexes) - set(indexes_before)} == writers
    assert {layout.written_by(k) for k in set(indexes_before) - set(indexes)} == writers
    for sid in NIGHTS:
        sweep_versions(client, bucket, sid)
    sweep_versions(full_client, full_bucket, NIGHTS[-1])

    for region in BACKUP_REGIONS:
        assert rows_of(every_version(s3_endpoint, region), {HER}) == Counter(), region
    assert inconsistencies(client, bucket) == []
    assert inconsistencies(full_client, full_bucket) == []
    assert all(pseudonym in applied(db_url, chain_region)[sid] for sid in NIGHTS)
    manifests = {m.snapshot_id: m for m in complete_manifests(client, bucket)}
    for sid in NIGHTS:
        after = without_her(expected[sid], pseudonym)
        assert {t: e.rows for t, e in manifests[sid].tables.items()} == {t: sum(after[t].values()) for t in tables}
        assert restores_to(services, s3_endpoint, chain_region, sid, None, tables) == after, sid
        # with the primary, its tombstones are replayed and restored too
        replayed = {**after, "erasure_tombstones": contents(db_url, ["erasure_tombstones"])["erasure_tombstones"]}
        assert restores_to(services, s3_endpoint, chain_region, sid, db_url, tables) == replayed, sid


def test_a_night_exported_after_an_erasure_honours_her_only_once_propagation_ran(
    db_url: str, s3_endpoint: str, services: tuple[str, str]
) -> None:
    policy = incremental_policy()
    tables = tables_of(policy)
    fill_primary(db_url)
    region = BACKUP_REGIONS[0]
    client, bucket = s3_client(region, s3_endpoint), BUCKETS.backup(region)
    expected = nights_of(db_url, s3_endpoint, policy, tables, NIGHTS[:3], region)
    pseudonym = erase(db_url, HER)  # recorded before the fourth night's export, propagated to none
    change(db_url, 3)
    expected[NIGHTS[3]] = contents(db_url, tables)
    take_snapshot(db_url, region, s3_endpoint, NIGHTS[3], policy, KEY)
    # the fourth night names the base and the deltas that hold her: not recorded as honouring her
    assert pseudonym not in applied(db_url, region).get(NIGHTS[3], set())
    latest = every_version(s3_endpoint, region, latest_only=True)
    assert rows_of(latest, {HER})
    before = versions(client, bucket)
    with pytest.MonkeyPatch.context() as patch:  # old versions kept a while: every put stays countable
        patch.setattr(propagate, "sweep_versions", lambda *args, **kwargs: 0)
        # as the DAG runs it: a task a snapshot, all at once
        snapshots, _ = plan_region(db_url, region, s3_endpoint)
        with ThreadPoolExecutor(len(snapshots)) as pool:
            parts = list(pool.map(lambda sid: propagate_snapshot(db_url, region, s3_endpoint, sid, key=KEY), snapshots))
    total = RegionResult(region=region)
    for part in parts:
        total.add(part.as_dict())
    finish_region(db_url, region, s3_endpoint, total)
    added = {k: vs for k, vs in new_versions(before, versions(client, bucket)).items() if vs}
    assert added and max(len(vs) for vs in added.values()) == 1  # each distinct object once, however many tasks
    for sid in NIGHTS[:4]:
        sweep_versions(client, bucket, sid)
    assert all(pseudonym in applied(db_url, region)[sid] for sid in NIGHTS[:4])
    with transaction(db_url) as cur:
        cur.execute(
            "SELECT status FROM backup_propagation_status WHERE subject_pseudonym = %s AND region = %s",
            (pseudonym, region),
        )
        assert cur.fetchone()[0] == "applied"
    assert rows_of(every_version(s3_endpoint, region), {HER}) == Counter()
    assert inconsistencies(client, bucket) == []
    manifests = {m.snapshot_id: m for m in complete_manifests(client, bucket)}
    for sid in NIGHTS[:4]:
        after = without_her(expected[sid], pseudonym)
        assert {t: e.rows for t, e in manifests[sid].tables.items()} == {t: sum(after[t].values()) for t in tables}
    assert restores_to(services, s3_endpoint, region, NIGHTS[3], None, tables) == expected[NIGHTS[3]]


def test_replicated_chains_stay_what_each_region_serves_through_an_erasure(db_url: str, s3_endpoint: str) -> None:
    policy = incremental_policy()
    tables = tables_of(policy)
    fill_primary(db_url)
    source, target = BACKUP_REGIONS
    clients = {r: (s3_client(r, s3_endpoint), BUCKETS.backup(r)) for r in BACKUP_REGIONS}

    expected = {}

    def night(n: int) -> None:
        expected[NIGHTS[n]] = take_night(db_url, s3_endpoint, policy, tables, NIGHTS[n], n, source, target)

    for n in range(3):
        night(n)
    before = versions(*clients[target])
    pseudonym = erase(db_url, HER)
    propagate_region(db_url, source, s3_endpoint, key=KEY)  # the source is rewritten, the target not yet
    night(3)  # names the source's rewritten shared objects: the target takes them, and so do its older manifests
    for region in BACKUP_REGIONS:
        assert inconsistencies(*clients[region]) == [], region
    copied = new_versions(before, versions(*clients[target]))
    assert any(copied.values())  # the shared objects the source rewrote were copied over
    assert pseudonym not in applied(db_url, target).get(NIGHTS[0], set())
    night(4)
    propagate_region(db_url, target, s3_endpoint, key=KEY)
    propagate_region(db_url, source, s3_endpoint, key=KEY)
    for region in BACKUP_REGIONS:
        assert inconsistencies(*clients[region]) == [], region
        assert rows_of(every_version(s3_endpoint, region), {HER}) == Counter(), region
        assert all(pseudonym in applied(db_url, region)[sid] for sid in NIGHTS), region
    shas = {
        r: {m.snapshot_id: sorted((o.key, o.sha256) for o in m.objects) for m in complete_manifests(*clients[r])}
        for r in BACKUP_REGIONS
    }
    assert shas[source] == shas[target]
    rows = {r: {m.snapshot_id: {t: e.rows for t, e in m.tables.items()} for m in complete_manifests(*clients[r])}
            for r in BACKUP_REGIONS}  # fmt: skip
    assert rows[source] == rows[target]
    for sid in NIGHTS:
        after = without_her(expected[sid], pseudonym)
        assert rows[target][sid] == {t: sum(after[t].values()) for t in tables}, sid
    assert set(shas[source]) == set(NIGHTS)


def _audit(db_url: str, region: str, s3: str) -> tuple[dict[str, int], dict[str, Any]]:
    found = tombstones(db_url)
    finder = MentionFinder(KEY, frozenset(found.identifiers_at), found.prefilter)
    return audit_region(region, s3, found, datetime.now(UTC), timedelta(days=3650), finder, None, 8)


def test_the_audit_reads_shared_objects_once_and_fails_on_her_rows_planted_back(db_url: str, s3_endpoint: str) -> None:
    policy = incremental_policy()
    tables = tables_of(policy)
    fill_primary(db_url)
    region = BACKUP_REGIONS[0]
    client, bucket = s3_client(region, s3_endpoint), BUCKETS.backup(region)
    nights_of(db_url, s3_endpoint, policy, tables, NIGHTS, region)
    hers = {k: t.filter(pa.compute.equal(t.column("user_id"), HER)) for k, t in every_version(s3_endpoint, region)
            if "/comments/" in k}  # fmt: skip
    base_key = next(k for k, t in hers.items() if t.num_rows and k.startswith(layout.snapshot_prefix(NIGHTS[0])))
    erase(db_url, HER)
    propagate_region(db_url, region, s3_endpoint, key=KEY)
    counts, details = _audit(db_url, region, s3_endpoint)
    assert counts["tombstones_not_applied"] == 0 and counts["manifest_mismatches"] == 0, counts
    manifests = complete_manifests(client, bucket)
    keys = {o.key for m in manifests for o in m.objects}
    assert details["objects_read"] == len(keys) < details["objects"]  # each shared object read once

    # the oldest manifest naming the shared base with another checksum (its size right): found, though every
    # later manifest names the object as it is
    oldest = next(o for o in manifests[0].objects if o.key == base_key)
    oldest.sha256, right = "0" * 64, oldest.sha256
    write_manifest(client, bucket, manifests[0])
    assert _audit(db_url, region, s3_endpoint)[0]["manifest_mismatches"] == 1
    oldest.sha256 = right
    write_manifest(client, bucket, manifests[0])

    # her rows planted back into the shared base object, as a new version every manifest vouches for
    body = client.get_object(Bucket=bucket, Key=base_key)["Body"].read()
    now = pq.read_table(io.BytesIO(body))
    planted = pa.concat_tables([now, hers[base_key].select(now.column_names).cast(now.schema)])
    sink = io.BytesIO()
    pq.write_table(planted, sink, compression="zstd")
    data = sink.getvalue()
    client.put_object(Bucket=bucket, Key=base_key, Body=data)
    old = [v for v in store.versions(client, bucket, base_key) if not v["IsLatest"]]
    for v in old:
        client.delete_object(Bucket=bucket, Key=base_key, VersionId=v["VersionId"])
    for m in manifests:
        for obj in m.objects:
            if obj.key == base_key:
                obj.sha256, obj.bytes, obj.rows = hashlib.sha256(data).hexdigest(), len(data), planted.num_rows
        write_manifest(client, bucket, m)
    assert inconsistencies(client, bucket) == []
    counts, _ = _audit(db_url, region, s3_endpoint)
    assert counts["tombstones_not_applied"] == 1, counts
    assert counts["manifest_mismatches"] == 0, counts

    # an index object deleted outside Lethe: the manifests naming it are mismatches, named; the region is audited
    base_index = next(k for k in named_indexes(client, bucket, NIGHTS) if layout.written_by(k) == NIGHTS[0])
    client.delete_object(Bucket=bucket, Key=base_index)
    counts, details = _audit(db_url, region, s3_endpoint)
    assert counts["manifest_mismatches"] == len(NIGHTS), counts
    assert set(details["unreadable_manifests"]) == set(NIGHTS)
    assert f"s3://{bucket}/{base_index} is missing" in details["unreadable_manifests"][NIGHTS[-1]]
    assert counts["bucket_in_region"] == 0 and counts["snapshot_within_rpo"] == 1, counts  # none left to restore
