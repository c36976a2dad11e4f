"""Incremental backups (`backups.incremental`) against a real PostgreSQL and S3 over HTTP.

What each night held is read from the primary with plain SQL before its snapshot (every row as jsonb), and
what a restore gives back is read the same way from the restored database: the check shares nothing with
the delta code. Bytes are read from the store with boto3, not from Lethe's manifests.
"""

from __future__ import annotations

import contextlib
import io
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow.parquet as pq
import pytest
from lethe import testing
from lethe.backup import layout, store
from lethe.backup.manifest import read as read_manifest
from lethe.backup.restore import restore_snapshot
from lethe.backup.snapshot import take_snapshot
from lethe.config import BUCKETS
from lethe.db import transaction
from lethe.policy import Policy, load_policy
from lethe.storage import s3_client

pytestmark = pytest.mark.integration

KEY = b"test-pseudonym-key"
REGION = "us-east-1"
NIGHTS = ["20261101T020000Z", "20261102T020000Z", "20261103T020000Z", "20261104T020000Z"]
NOW = datetime(2026, 10, 30, tzinfo=UTC)
USERS = 60


def incremental_policy() -> Policy:
    policy = load_policy()
    return policy.model_copy(update={"backups": policy.backups.model_copy(update={"incremental": True})})


def without_evidence_key(url: str) -> None:
    """security_evidence without its primary key: a table whose rows need not be distinct."""
    with transaction(url) as cur:
        cur.execute("ALTER TABLE security_evidence DROP CONSTRAINT security_evidence_pkey")


def fill(url: str) -> None:
    without_evidence_key(url)
    with transaction(url) as cur:
        for u in range(1, USERS + 1):
            cur.execute(
                "INSERT INTO accounts (user_id, name, username, email, phone, password_hash, interests, created_at)"
                " VALUES (%s, %s, %s, %s, %s, 'x', %s, %s)",
                (u, f"Person {u}", f"user{u}", f"user{u}@example.test", f"+9100000{u:04d}", ["sql"], NOW),
            )
            for i in range(4):
                cur.execute("INSERT INTO comments VALUES (%s, %s, %s, %s)", (u * 10 + i, u, f"comment {i} of {u}", NOW))
                cur.execute(
                    "INSERT INTO usage_events VALUES (%s, %s, %s, 'quiz', 100, 0)",
                    (u * 10 + i, u, NOW - timedelta(days=i)),
                )
        cur.execute("INSERT INTO security_evidence VALUES (1, NULL, '10.1.2.3', 'scan', 'port scan', %s)", (NOW,))


def tables_of(policy: Policy) -> list[str]:
    return [t for t, rule in policy.tables.items() if rule.backup]


def contents(url: str, tables: list[str]) -> dict[str, Counter[str]]:
    """Every row of every table, as jsonb text (plain SQL, a multiset per table)."""
    found = {}
    with transaction(url) as cur:
        for table in tables:
            cur.execute(f"SELECT to_jsonb(t)::text FROM {table} t")  # noqa: S608 - names from the policy file
            found[table] = Counter(r[0] for r in cur.fetchall())
    return found


def change_a_night(url: str, night: int) -> None:
    """Updates, inserts, deletes, a duplicate row, and a person whose every row goes."""
    with transaction(url) as cur:
        cur.execute("UPDATE accounts SET name = name || %s WHERE user_id %% 7 = %s", (f" v{night}", night))
        cur.execute("UPDATE comments SET body = body || ' (edited)' WHERE comment_id %% 13 = %s", (night,))
        cur.execute(
            "INSERT INTO usage_events SELECT 100000 + %s * 1000 + u, u, %s, 'video', 5, 1 FROM generate_series(1, 9) u",
            (night, NOW + timedelta(days=night)),
        )
        # the same row twice (a table's rows need not be distinct): both copies stay in every restore
        cur.execute("INSERT INTO security_evidence SELECT 1, NULL, '10.1.2.3', 'scan', 'port scan', %s", (NOW,))
        cur.execute("DELETE FROM usage_events WHERE event_id %% 10 = %s AND event_id < 100000", (night,))
        gone = 40 + night
        cur.execute("DELETE FROM comments WHERE user_id = %s", (gone,))
        cur.execute("DELETE FROM usage_events WHERE user_id = %s", (gone,))
        cur.execute("DELETE FROM accounts WHERE user_id = %s", (gone,))


def stored(client: Any, bucket: str, prefix: str = layout.SNAPSHOT_PREFIX) -> int:
    return sum(int(v["Size"]) for v in store.versions(client, bucket, prefix) if not v["DeleteMarker"])


def restored(services: tuple[str, str], s3_endpoint: str, region: str, sid: str, tables: list[str]) -> dict:
    """What a restore of snapshot `sid` into a fresh database holds (plain SQL)."""
    target = testing.fresh_database(services[0])
    without_evidence_key(target)
    try:
        report = restore_snapshot(sid, region, target, endpoint_url=s3_endpoint, key=KEY, out=lambda _: None)
        assert report.verified
        return contents(target, tables)
    finally:
        testing.drop_database(target)


def test_each_night_of_an_incremental_chain_restores_to_what_the_primary_held(
    db_url: str, s3_endpoint: str, services: tuple[str, str]
) -> None:
    policy = incremental_policy()
    tables = tables_of(policy)
    fill(db_url)
    expected = {}
    for n, sid in enumerate(NIGHTS):
        if n:
            change_a_night(db_url, n)
        expected[sid] = contents(db_url, tables)
        take_snapshot(db_url, REGION, s3_endpoint, sid, policy, KEY)

    client = s3_client(REGION, s3_endpoint)
    bucket = BUCKETS.backup(REGION)
    first = stored(client, bucket, layout.snapshot_prefix(NIGHTS[0]))
    for sid in NIGHTS[1:]:
        # a later night stores its changes only, read from the store: a small part of the first night
        assert 0 < stored(client, bucket, layout.snapshot_prefix(sid)) < first / 3
    last = read_manifest(client, bucket, NIGHTS[-1])
    assert last.incremental
    nights = {o.night for e in last.tables.values() for o in e.objects}
    assert nights == {None, *NIGHTS[1:]}  # the base, then one delta a night
    for sid in NIGHTS:
        assert restored(services, s3_endpoint, REGION, sid, tables) == expected[sid], sid


def test_a_delta_object_holds_the_changed_rows_and_only_digests_of_the_gone(db_url: str, s3_endpoint: str) -> None:
    """Read raw from the store: the second night's objects hold the edited comment as it is now, no unchanged
    comment, and for the deleted person's comments only digests (every other column NULL)."""
    policy = incremental_policy()
    fill(db_url)
    take_snapshot(db_url, REGION, s3_endpoint, NIGHTS[0], policy, KEY)
    change_a_night(db_url, 1)
    take_snapshot(db_url, REGION, s3_endpoint, NIGHTS[1], policy, KEY)
    client = s3_client(REGION, s3_endpoint)
    bucket = BUCKETS.backup(REGION)
    rows = []
    for obj in client.list_objects_v2(Bucket=bucket, Prefix=f"{layout.snapshot_prefix(NIGHTS[1])}data/comments/")[
        "Contents"
    ]:
        body = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
        rows += pq.read_table(io.BytesIO(body)).to_pylist()
    with transaction(db_url) as cur:
        cur.execute("SELECT comment_id, body FROM comments WHERE comment_id % 13 = 1")
        edited = dict(cur.fetchall())
    new = {r["comment_id"]: r["body"] for r in rows if not r["_lethe_gone"]}
    assert new == edited
    gone = [r for r in rows if r["_lethe_gone"]]
    assert len(gone) == 4 + len(edited)  # person 41's four comments, and the old text of each edited one
    assert all(r["body"] is None and r["user_id"] is None and r["_lethe_row"] is not None for r in gone)


def test_a_second_region_that_expired_first_still_restores_every_night(
    db_url: str, s3_endpoint: str, services: tuple[str, str]
) -> None:
    """Found from outside: the second region's expiry ran before the first region's (a mapped task each; the first
    can fail and wait for its rerun). The next copy put shared objects back under prefixes it had expired, without
    a manifest; the copy after removed them as a killed backup's, and every later night there named objects that
    were gone (MissingObject on restore). Such a night is now written there as a base of its own."""
    from lethe.backup.expiry import expire_region
    from lethe.backup.manifest import complete_snapshot_ids
    from lethe.backup.replicate import replicate_snapshot
    from lethe.config import BACKUP_REGIONS

    policy = incremental_policy()
    tables = tables_of(policy)
    source, region = BACKUP_REGIONS
    fill(db_url)
    nights = [*NIGHTS, "20261105T020000Z", "20261106T020000Z"]
    expected = {}
    for n, sid in enumerate(nights):
        if n == 4:  # only the second region expires: nights 1 and 2 go there
            expire_region(db_url, region, s3_endpoint, timedelta(days=2), datetime(2026, 11, 4, 3, tzinfo=UTC), key=KEY)
        if n:
            change_a_night(db_url, n)
        expected[sid] = contents(db_url, tables)
        take_snapshot(db_url, source, s3_endpoint, sid, policy, KEY)
        replicate_snapshot(db_url, sid, source, s3_endpoint, region, s3_endpoint)
    client = s3_client(region, s3_endpoint)
    bucket = BUCKETS.backup(region)
    retained = complete_snapshot_ids(client, bucket)
    assert retained == nights[2:]
    versions = store.versions(client, bucket, layout.SNAPSHOT_PREFIX)
    assert not [v["Key"] for v in versions if v["Key"].split("/")[1] in nights[:2]]  # nothing came back there
    for sid in retained:
        assert restored(services, s3_endpoint, region, sid, tables) == expected[sid], sid


def test_an_address_that_changes_owner_within_a_bucket_is_a_change(db_url: str, s3_endpoint: str) -> None:
    """Found from outside: rows whose subject comes from the row pointing at them (an address) were digested
    without it, so an address moving from one person to another of the same bucket was no change: the night kept
    the old owner's pseudonym, and after the new owner's erasure her address outlived it in every night."""
    from lethe.backup import chain
    from lethe.backup.propagate import propagate_region
    from lethe.pseudonym import subject_pseudonym

    policy = incremental_policy()
    owned = policy.tables["security_evidence"].model_copy(
        update={
            "subject": None,
            "columns": {"address_id": "identifier", "line1": "address"},
            "retention": [],
            "free_text": [],
            "description": "addresses",
        }
    )
    policy = policy.model_copy(update={"tables": {**policy.tables, "postal_addresses": owned}})
    fill(db_url)
    with transaction(db_url) as cur:
        cur.execute("CREATE TABLE postal_addresses (address_id bigint PRIMARY KEY, line1 text NOT NULL)")
        cur.execute("ALTER TABLE accounts ADD COLUMN address_id bigint REFERENCES postal_addresses")
        cur.execute("INSERT INTO postal_addresses VALUES (1, 'Her Street 1')")
    take_snapshot(db_url, REGION, s3_endpoint, NIGHTS[0], policy, KEY)
    client = s3_client(REGION, s3_endpoint)
    bucket = BUCKETS.backup(REGION)
    buckets = read_manifest(client, bucket, NIGHTS[0]).tables["postal_addresses"].buckets or 1
    by_bucket: dict[int, list[int]] = {}
    for u in range(1, USERS + 1):
        by_bucket.setdefault(layout.bucket_of(subject_pseudonym(KEY, u), buckets), []).append(u)
    her, old = next(people[:2] for people in by_bucket.values() if len(people) > 1)  # he lived there before her
    with transaction(db_url) as cur:
        cur.execute("UPDATE accounts SET address_id = 1 WHERE user_id = %s", (old,))
    take_snapshot(db_url, REGION, s3_endpoint, NIGHTS[1], policy, KEY)
    with transaction(db_url) as cur:  # she moves in, he moves out: the address row itself does not change
        cur.execute("UPDATE accounts SET address_id = NULL WHERE user_id = %s", (old,))
        cur.execute("UPDATE accounts SET address_id = 1 WHERE user_id = %s", (her,))
    take_snapshot(db_url, REGION, s3_endpoint, NIGHTS[2], policy, KEY)
    with transaction(db_url) as cur:  # her erasure: her address and her account go, the tombstone stays
        cur.execute("UPDATE accounts SET address_id = NULL WHERE user_id = %s", (her,))
        cur.execute("DELETE FROM postal_addresses WHERE address_id = 1")
        cur.execute("DELETE FROM comments WHERE user_id = %s", (her,))
        cur.execute("DELETE FROM usage_events WHERE user_id = %s", (her,))
        cur.execute("DELETE FROM accounts WHERE user_id = %s", (her,))
        cur.execute(
            "INSERT INTO erasure_tombstones (subject_pseudonym, identifier_pseudonyms, request_id)"
            " VALUES (%s, '{}', gen_random_uuid())",
            (subject_pseudonym(KEY, her),),
        )
    propagate_region(db_url, REGION, s3_endpoint, key=KEY)
    entry = read_manifest(client, bucket, NIGHTS[2]).tables["postal_addresses"]
    held = [r for t in chain.table_rows(client, bucket, entry) for r in t.to_pylist() if r["line1"] == "Her Street 1"]
    assert not held  # night 3 held her address as hers: propagation erased it


def test_a_table_that_outgrows_its_chains_buckets_gets_a_base_with_tonights(
    db_url: str, s3_endpoint: str, services: tuple[str, str]
) -> None:
    """Bucket counts follow the tables' relative sizes (one person's objects within the policy's share); a chain
    keeps its base's, so a table grown far past the others is given a new base with tonight's count."""
    policy = incremental_policy()
    tables = tables_of(policy)
    fill(db_url)
    take_snapshot(db_url, REGION, s3_endpoint, NIGHTS[0], policy, KEY)
    with transaction(db_url) as cur:
        cur.execute(
            "INSERT INTO usage_events SELECT 200000 + g, 1 + g %% %s, %s, 'video', 5, 1"
            " FROM generate_series(1, 60000) g",
            (USERS, NOW),
        )
        cur.execute("UPDATE accounts SET name = name || ' v2' WHERE user_id = 3")
    expected = contents(db_url, tables)
    take_snapshot(db_url, REGION, s3_endpoint, NIGHTS[1], policy, KEY)

    client, bucket = s3_client(REGION, s3_endpoint), BUCKETS.backup(REGION)
    first, second = (read_manifest(client, bucket, sid) for sid in NIGHTS[:2])
    grown, kept = second.tables["usage_events"], second.tables["accounts"]
    assert grown.buckets > first.tables["usage_events"].buckets * layout.BUCKET_HEADROOM
    assert all(o.night is None and layout.written_by(o.key) == NIGHTS[1] for o in grown.objects)  # a base tonight
    assert {layout.written_by(o.key) for o in kept.objects} == set(NIGHTS[:2])  # the others: a delta
    assert restored(services, s3_endpoint, REGION, NIGHTS[1], tables) == expected


@contextlib.contextmanager
def gets() -> Iterator[list[str]]:
    """The key of every GetObject any boto3 client makes meanwhile (a hook on boto3's default session, which
    every client Lethe makes inherits)."""
    import boto3

    if boto3.DEFAULT_SESSION is None:
        boto3.setup_default_session()
    events = boto3.DEFAULT_SESSION.events  # type: ignore[union-attr]
    keys: list[str] = []

    def asked(params: dict[str, Any], model: Any, **_: Any) -> None:
        if model.name == "GetObject":
            keys.append(params["Key"])

    events.register("provide-client-params.s3.GetObject", asked, unique_id="test-gets")
    try:
        yield keys
    finally:
        events.unregister("provide-client-params.s3.GetObject", unique_id="test-gets")


def raw_digests(client: Any, bucket: str, key: str) -> Counter[int]:
    return Counter(
        pq.read_table(io.BytesIO(client.get_object(Bucket=bucket, Key=key)["Body"].read()))["digest"].to_pylist()
    )


def test_a_night_diffs_against_the_digests_the_night_before_left_not_the_chain(
    db_url: str, s3_endpoint: str, services: tuple[str, str]
) -> None:
    """Nights 3 and 4 read one digests object a table, no object of the chain, and restore to what the primary
    held; the digests each night leaves are its rows' (a base of the same rows, taken apart, says which); only the
    newest night's are kept."""
    from lethe.config import BACKUP_REGIONS

    policy = incremental_policy()
    tables = tables_of(policy)
    fill(db_url)
    expected, asked = {}, {}
    for n, sid in enumerate(NIGHTS):
        if n:
            change_a_night(db_url, n)
        expected[sid] = contents(db_url, tables)
        with gets() as keys:
            take_snapshot(db_url, REGION, s3_endpoint, sid, policy, KEY)
        asked[sid] = keys
    client = s3_client(REGION, s3_endpoint)
    bucket = BUCKETS.backup(REGION)
    last = read_manifest(client, bucket, NIGHTS[-1])
    deltas = sorted(t for t, e in last.tables.items() if e.digests)  # every table, diffed against the night before
    assert deltas == sorted(tables)
    assert [k for k in asked[NIGHTS[1]] if "/data/" in k]  # night 2 has no digests before it: it reads the base
    for sid in NIGHTS[2:]:
        assert not [k for k in asked[sid] if "/data/" in k], sid
        previous = NIGHTS[NIGHTS.index(sid) - 1]
        assert sorted(k for k in asked[sid] if "/digests/" in k) == [
            f"{layout.snapshot_prefix(previous)}digests/{t}.parquet" for t in deltas
        ]
    for sid in NIGHTS[2:]:
        assert restored(services, s3_endpoint, REGION, sid, tables) == expected[sid], sid

    # Only the last night's digests are stored, one version each.
    stored_digests = [v for v in store.versions(client, bucket, layout.SNAPSHOT_PREFIX) if "/digests/" in v["Key"]]
    assert sorted(v["Key"] for v in stored_digests) == [
        f"{layout.snapshot_prefix(NIGHTS[-1])}digests/{t}.parquet" for t in deltas
    ]
    # They are the digests of the rows the primary holds: a base of the same rows, taken in another region (each
    # row's digest computed afresh, read raw from its objects), holds the same multiset for every table.
    other = BACKUP_REGIONS[1]
    take_snapshot(db_url, other, s3_endpoint, NIGHTS[-1], policy, KEY)
    other_client = s3_client(other, s3_endpoint)
    base = read_manifest(other_client, BUCKETS.backup(other), NIGHTS[-1])
    for table in deltas:
        fresh: Counter[int] = Counter()
        for obj in base.tables[table].objects:
            body = other_client.get_object(Bucket=BUCKETS.backup(other), Key=obj.key)["Body"].read()
            fresh.update(pq.read_table(io.BytesIO(body))["_lethe_row"].to_pylist())
        kept = raw_digests(client, bucket, f"{layout.snapshot_prefix(NIGHTS[-1])}digests/{table}.parquet")
        assert kept == fresh, table
        assert sum(kept.values()) == sum(expected[NIGHTS[-1]][table].values()), table


@pytest.mark.parametrize("damage", ["deleted", "overwritten", "forged", "garbled"])
def test_a_night_whose_digests_are_gone_or_altered_reads_the_chain_and_is_right(
    db_url: str, s3_endpoint: str, services: tuple[str, str], damage: str
) -> None:
    """The digests a night left, deleted outside Lethe (every version) or overwritten with other rows (`forged`:
    and the manifest edited to vouch for them; `garbled`: not Parquet at all, vouched for alike): the next night
    reads the chain instead, and restores to what the primary held."""
    import gzip
    import hashlib
    import json

    import pyarrow as pa

    policy = incremental_policy()
    tables = tables_of(policy)
    client = s3_client(REGION, s3_endpoint)
    bucket = BUCKETS.backup(REGION)
    fill(db_url)
    for n, sid in enumerate(NIGHTS[:2]):
        if n:
            change_a_night(db_url, n)
        take_snapshot(db_url, REGION, s3_endpoint, sid, policy, KEY)
    damaged = f"{layout.snapshot_prefix(NIGHTS[1])}digests/comments.parquet"
    if damage == "deleted":
        for v in store.versions(client, bucket, damaged):
            client.delete_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])
    else:  # a night of no comments at all, naming the same chain: trusted, it would make every comment new
        was = pq.read_metadata(io.BytesIO(client.get_object(Bucket=bucket, Key=damaged)["Body"].read())).metadata
        body = io.BytesIO()
        empty = pa.table({"bucket": pa.array([], pa.int32()), "digest": pa.array([], pa.uint64())})
        pq.write_table(empty.replace_schema_metadata({b"lethe.chain": was[b"lethe.chain"]}), body)
        if damage == "garbled":
            body = io.BytesIO(b"PAR1 not a Parquet file")
        client.put_object(Bucket=bucket, Key=damaged, Body=body.getvalue())
        if damage in ("forged", "garbled"):
            key = layout.manifest_key(NIGHTS[1])
            raw = json.loads(gzip.decompress(client.get_object(Bucket=bucket, Key=key)["Body"].read()))
            raw["tables"]["comments"]["digests"]["sha256"] = hashlib.sha256(body.getvalue()).hexdigest()
            client.put_object(Bucket=bucket, Key=key, Body=gzip.compress(json.dumps(raw).encode()))
    change_a_night(db_url, 2)
    expected = contents(db_url, tables)
    with gets() as keys:
        take_snapshot(db_url, REGION, s3_endpoint, NIGHTS[2], policy, KEY)
    assert [k for k in keys if "/data/comments/" in k]  # the chain of comments read instead
    assert not [k for k in keys if "/data/" in k and "/data/comments/" not in k]  # the other tables' digests used
    comments = read_manifest(client, bucket, NIGHTS[2]).tables["comments"]
    tonight = [o for o in comments.objects if o.night == NIGHTS[2]]
    assert sum(o.rows for o in tonight) < sum(expected["comments"].values())  # a delta, not every comment again
    assert restored(services, s3_endpoint, REGION, NIGHTS[2], tables) == expected
