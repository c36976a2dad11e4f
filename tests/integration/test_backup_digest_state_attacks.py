"""Attacks from outside on the digests an incremental night stores for the next (lethe.backup.digest_state).

Each night's expected rows are read from the primary with plain SQL (every row as jsonb, a multiset per table);
the store is read raw with boto3 and pyarrow (every version of every key, manifests as plain JSON). Nothing here
works a digest out with Lethe's chain or digest-state code: a restore is compared with the primary, a digests
object's rows are counted against the primary's rows, and which objects a night reads is recorded at the S3 call.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow.parquet as pq
import pytest
from lethe import testing
from lethe.backup import digest_state, layout, snapshot, store
from lethe.backup.expiry import expire_region
from lethe.backup.propagate import PropagationInterrupted, propagate_region
from lethe.backup.replicate import replicate_snapshot
from lethe.backup.restore import restore_snapshot
from lethe.backup.snapshot import take_snapshot
from lethe.config import BACKUP_REGIONS, BUCKETS
from lethe.db import transaction
from lethe.policy import Policy, load_policy
from lethe.pseudonym import subject_pseudonym
from lethe.storage import s3_client
from test_backup import KEY, erase, fill_primary
from test_backup_incremental_erasure import more_people

pytestmark = pytest.mark.integration

REGION, SECOND = BACKUP_REGIONS
NIGHTS = [f"2026110{d}T020000Z" for d in range(1, 7)]
PEOPLE = 60
HER = 5  # erased between the second and third nights


def incremental_policy() -> Policy:
    policy = load_policy()
    return policy.model_copy(update={"backups": policy.backups.model_copy(update={"incremental": True})})


def tables_of(policy: Policy) -> list[str]:
    return [t for t, rule in policy.tables.items() if rule.backup]


def without_evidence_key(url: str) -> None:
    """security_evidence without its primary key: rows without a subject that need not be distinct."""
    with transaction(url) as cur:
        cur.execute("ALTER TABLE security_evidence DROP CONSTRAINT security_evidence_pkey")


def fill(url: str) -> None:
    fill_primary(url)
    more_people(url, PEOPLE)
    without_evidence_key(url)
    with transaction(url) as cur:  # rows without a subject (NO_BUCKET), two of them identical
        cur.execute(
            "INSERT INTO security_evidence SELECT g % 3, NULL, '10.1.2.3', 'scan', 'port scan', now()"
            " FROM generate_series(1, 4) g"
        )


def change(url: str, n: int) -> None:
    """Night n's changes: edits, inserts, deletes, and identical rows without a subject, gained and lost."""
    with transaction(url) as cur:
        cur.execute("SET LOCAL statement_timeout = '60s'")
        cur.execute(
            "UPDATE accounts SET name = name || %s WHERE user_id %% 11 = %s AND user_id <> %s", (f" v{n}", n, HER)
        )
        cur.execute(
            "UPDATE comments SET body = body || ' (edited)' WHERE comment_id %% 17 = %s AND user_id <> %s", (n, HER)
        )
        cur.execute(
            "INSERT INTO usage_events SELECT 100000 + %s * 1000 + u, u, now(), 'video', 5, 1"
            " FROM generate_series(1, 8) u WHERE EXISTS (SELECT 1 FROM accounts a WHERE a.user_id = u)",
            (n,),
        )
        cur.execute(
            "DELETE FROM usage_events WHERE event_id %% 23 = %s AND event_id < 100000 AND user_id <> %s", (n, HER)
        )
        # one more copy of an identical subjectless row, and one copy of another one gone
        cur.execute("INSERT INTO security_evidence SELECT 1, NULL, '10.1.2.3', 'scan', 'port scan', observed_at"
                    " FROM security_evidence WHERE evidence_id = 1 LIMIT 1")  # fmt: skip
        cur.execute(
            "DELETE FROM security_evidence WHERE ctid = (SELECT min(ctid) FROM security_evidence WHERE evidence_id = 2)"
        )


def contents(url: str, tables: list[str]) -> dict[str, Counter[str]]:
    found = {}
    with transaction(url) as cur:
        cur.execute("SET LOCAL statement_timeout = '60s'")
        for table in tables:
            cur.execute(f"SELECT to_jsonb(t)::text FROM {table} t")  # noqa: S608 - names from the policy file
            found[table] = Counter(json.dumps(json.loads(r[0]), sort_keys=True) for r in cur.fetchall())
    return found


def row_counts(url: str, tables: list[str]) -> dict[str, int]:
    with transaction(url) as cur:
        cur.execute("SET LOCAL statement_timeout = '60s'")
        counts = {}
        for table in tables:
            cur.execute(f"SELECT count(*) FROM {table}")  # noqa: S608 - names from the policy file
            counts[table] = cur.fetchone()[0]
        return counts


def restored(
    services: tuple[str, str], s3: str, region: str, sid: str, tables: list[str], schema: str = ""
) -> dict[str, Counter[str]]:
    target = testing.fresh_database(services[0])
    without_evidence_key(target)
    if schema:
        with transaction(target) as cur:
            cur.execute(schema)
    try:
        report = restore_snapshot(sid, region, target, endpoint_url=s3, key=KEY, out=lambda _: None)
        assert report.verified
        return contents(target, tables)
    finally:
        testing.drop_database(target)


def night(url: str, s3: str, policy: Policy, sid: str, n: int, region: str = REGION) -> dict[str, Counter[str]]:
    if n:
        change(url, n)
    held = contents(url, tables_of(policy))
    take_snapshot(url, region, s3, sid, policy, KEY)
    return held


def client_of(s3: str, region: str = REGION) -> tuple[Any, str]:
    return s3_client(region, s3), BUCKETS.backup(region)


def raw_json(client: Any, bucket: str, key: str) -> Any:
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return json.loads(gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body)


def raw_manifest(client: Any, bucket: str, sid: str) -> dict[str, Any]:
    """The manifest as stored, every entry inline (its index objects read raw)."""
    found = raw_json(client, bucket, layout.manifest_key(sid))
    indexes = [raw_json(client, bucket, ref["key"])["tables"] for ref in found.pop("index_objects", [])]
    for name, table in found["tables"].items():
        table["objects"] = table.get("objects") or [o for index in indexes for o in index.get(name, [])]
    return found


def put_raw_manifest(client: Any, bucket: str, sid: str, edit: Any) -> None:
    """Edit a manifest as someone outside Lethe would: its JSON, nothing else (the index objects stay)."""
    key = layout.manifest_key(sid)
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    raw = json.loads(gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body)
    edit(raw)
    data = json.dumps(raw).encode()
    client.put_object(Bucket=bucket, Key=key, Body=gzip.compress(data) if body[:2] == b"\x1f\x8b" else data)


def digest_versions(client: Any, bucket: str) -> dict[str, list[dict[str, Any]]]:
    """Every version and delete marker of every key under a snapshot's digests/ (raw listing)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=layout.SNAPSHOT_PREFIX):
        for v in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
            if "/digests/" in v["Key"]:
                found.setdefault(v["Key"], []).append(v)
    return found


def state_of(client: Any, bucket: str, key: str) -> Any:
    return pq.read_table(io.BytesIO(client.get_object(Bucket=bucket, Key=key)["Body"].read()))


def assert_only_states_of(client: Any, bucket: str, sid: str, tables: set[str]) -> None:
    """The store holds one version of each of night `sid`'s digests objects, of `tables`, and no other."""
    listed = digest_versions(client, bucket)
    assert set(listed) == {f"{layout.snapshot_prefix(sid)}digests/{t}.parquet" for t in tables}
    assert all(len(vs) == 1 and vs[0].get("VersionId") and "Size" in vs[0] for vs in listed.values()), listed


def delta_tables(client: Any, bucket: str, sid: str) -> set[str]:
    """The tables night `sid` diffed against a chain (raw manifest): all but those given a base of their own
    tonight (every object tonight's, none a delta); an empty table has no objects either way."""
    own = layout.snapshot_prefix(sid)
    return {
        t
        for t, e in raw_manifest(client, bucket, sid)["tables"].items()
        if not e["objects"] or not all(o["night"] is None and o["key"].startswith(own) for o in e["objects"])
    }


@contextlib.contextmanager
def reads(patch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The keys Lethe GETs meanwhile (whole reads and streamed downloads), recorded at the store's calls."""
    seen: list[str] = []
    get, download = store.get, store.download

    def counted_get(client: Any, bucket: str, key: str) -> bytes:
        seen.append(key)
        return get(client, bucket, key)

    def counted_download(client: Any, bucket: str, key: str, sink: Any) -> str:
        seen.append(key)
        return download(client, bucket, key, sink)

    patch.setattr(store, "get", counted_get)
    patch.setattr(store, "download", counted_download)
    yield seen


def current_versions(client: Any, bucket: str) -> dict[str, str]:
    """Key -> its current VersionId, data objects only (raw listing)."""
    found = {}
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=layout.SNAPSHOT_PREFIX):
        for v in page.get("Versions", []):
            if v["IsLatest"] and "/data/" in v["Key"]:
                found[v["Key"]] = v["VersionId"]
    return found


def span(obj: dict[str, Any]) -> tuple[int, int]:
    first = -1 if obj["bucket"] is None else obj["bucket"]
    return first, first if obj["last_bucket"] is None else obj["last_bucket"]


def in_span(client: Any, bucket: str, sid: str, table: str, keys: set[str], but: set[int]) -> int:
    """Somebody (not `but`) whose subject bucket of `table` one of the objects `keys` covers (raw manifest)."""
    entry = raw_manifest(client, bucket, sid)["tables"][table]
    spans = [span(o) for o in entry["objects"] if o["key"] in keys]
    return next(
        u
        for u in range(1, PEOPLE + 1)
        if u not in but
        and any(a <= layout.bucket_of(subject_pseudonym(KEY, u), entry["buckets"]) <= b for a, b in spans)
    )


def test_nights_after_two_propagations_read_only_the_rewritten_buckets_and_restore_to_the_primary(
    db_url: str, s3_endpoint: str, services: tuple[str, str]
) -> None:
    """An erasure, then a second one, propagated between two nights: the next night reads the chain for the
    buckets the rewritten objects cover, and the digests for the rest; a bucket rewritten and gaining rows
    tonight, identical subjectless rows gained and lost, all restore as the primary held them. The night after
    reads no object of the chain at all."""
    policy = incremental_policy()
    tables = tables_of(policy)
    fill(db_url)
    client, bucket = client_of(s3_endpoint)
    expected = {NIGHTS[0]: night(db_url, s3_endpoint, policy, NIGHTS[0], 0)}
    with transaction(db_url) as cur:  # she is in the second night's delta too, with others' changes
        cur.execute("UPDATE comments SET body = body || ' (hers)' WHERE comment_id = %s", (HER * 10,))
    expected[NIGHTS[1]] = night(db_url, s3_endpoint, policy, NIGHTS[1], 1)
    before = current_versions(client, bucket)
    erase(db_url, HER)
    propagate_region(db_url, REGION, s3_endpoint, key=KEY)
    second = 20  # no change of the nights touches him
    erase(db_url, second)
    propagate_region(db_url, REGION, s3_endpoint, key=KEY)
    after = current_versions(client, bucket)
    rewritten = {k for k in before if after.get(k) != before[k]}
    delta = {k for k in rewritten if k.startswith(layout.snapshot_prefix(NIGHTS[1])) and "/comments/" in k}
    assert delta  # her delta object of comments, rewritten: its buckets are stale
    neighbour = in_span(client, bucket, NIGHTS[1], "comments", delta, {HER, second})
    with transaction(db_url) as cur:  # her bucket, rewritten, gains rows tonight (her neighbour's)
        cur.execute(
            "INSERT INTO comments SELECT 700000 + g, %s, 'new of the neighbour', now() FROM generate_series(1, 3) g",
            (neighbour,),
        )
        cur.execute("UPDATE comments SET body = body || ' (again)' WHERE user_id = %s", (neighbour,))

    with pytest.MonkeyPatch.context() as patch, reads(patch) as seen:
        expected[NIGHTS[2]] = night(db_url, s3_endpoint, policy, NIGHTS[2], 2)
    read_data = {k for k in seen if "/data/" in k}
    states = {k for k in seen if "/digests/" in k}
    previous = raw_manifest(client, bucket, NIGHTS[1])
    assert states == {t["digests"]["key"] for t in previous["tables"].values() if t.get("digests")}
    stale: dict[str, list[tuple[int, int]]] = {}
    for table, entry in previous["tables"].items():
        stale[table] = [span(o) for o in entry["objects"] if o["key"] in rewritten]
    assert read_data, "the rewritten buckets are read from the chain"
    assert rewritten & read_data
    for key in read_data:  # every object read covers a bucket some rewritten object of its table covers
        table = key.split("/data/")[1].split("/")[0]
        obj = next(o for o in previous["tables"][table]["objects"] if o["key"] == key)
        first, last = span(obj)
        assert any(a <= last and first <= b for a, b in stale[table]), key
    every = {o["key"] for t in previous["tables"].values() for o in t["objects"]}
    assert len(read_data) < len(every) / 2

    with pytest.MonkeyPatch.context() as patch, reads(patch) as seen:
        expected[NIGHTS[3]] = night(db_url, s3_endpoint, policy, NIGHTS[3], 3)
    assert not [k for k in seen if "/data/" in k]  # nothing rewritten since: the digests alone
    assert_only_states_of(client, bucket, NIGHTS[3], delta_tables(client, bucket, NIGHTS[3]))
    counts = row_counts(db_url, tables)
    for table in delta_tables(client, bucket, NIGHTS[3]):  # one digest a row, the subjectless ones in bucket -1
        state = state_of(client, bucket, f"{layout.snapshot_prefix(NIGHTS[3])}digests/{table}.parquet")
        assert state.num_rows == counts[table], table
    with transaction(db_url) as cur:
        cur.execute("SELECT count(*) FROM security_evidence WHERE user_id IS NULL")
        subjectless = cur.fetchone()[0]
    evidence = state_of(client, bucket, f"{layout.snapshot_prefix(NIGHTS[3])}digests/security_evidence.parquet")
    assert evidence.column("bucket").to_pylist().count(-1) == subjectless > 4
    for sid in NIGHTS[2:4]:
        assert restored(services, s3_endpoint, REGION, sid, tables) == expected[sid], sid


def test_a_table_given_a_base_for_new_columns_then_deltas_again(
    db_url: str, s3_endpoint: str, services: tuple[str, str]
) -> None:
    policy = incremental_policy()
    tables = tables_of(policy)
    fill(db_url)
    client, bucket = client_of(s3_endpoint)
    expected = {sid: night(db_url, s3_endpoint, policy, sid, n) for n, sid in enumerate(NIGHTS[:2])}
    with transaction(db_url) as cur:
        cur.execute("ALTER TABLE comments ADD COLUMN mood text")
        cur.execute("UPDATE comments SET mood = 'ok' WHERE comment_id % 5 = 0")
    expected[NIGHTS[2]] = night(db_url, s3_endpoint, policy, NIGHTS[2], 2)
    third = raw_manifest(client, bucket, NIGHTS[2])["tables"]["comments"]
    assert all(o["night"] is None for o in third["objects"]) and third.get("digests") is None  # a base
    assert "comments" not in delta_tables(client, bucket, NIGHTS[2])
    assert_only_states_of(client, bucket, NIGHTS[2], delta_tables(client, bucket, NIGHTS[2]))
    with transaction(db_url) as cur:
        cur.execute("UPDATE comments SET mood = 'sad' WHERE comment_id % 7 = 0")
    for n in (3, 4):
        expected[NIGHTS[n]] = night(db_url, s3_endpoint, policy, NIGHTS[n], n)
    assert "comments" in delta_tables(client, bucket, NIGHTS[4])
    assert_only_states_of(client, bucket, NIGHTS[4], delta_tables(client, bucket, NIGHTS[4]))
    for sid in (NIGHTS[2], NIGHTS[4]):
        restore = restored(services, s3_endpoint, REGION, sid, tables, "ALTER TABLE comments ADD COLUMN mood text")
        assert restore == expected[sid], sid


class Killed(RuntimeError):
    pass


def test_a_night_killed_after_some_tables_stored_their_digests_reruns_right_and_leaves_none(
    db_url: str, s3_endpoint: str, services: tuple[str, str]
) -> None:
    policy = incremental_policy()
    tables = tables_of(policy)
    fill(db_url)
    client, bucket = client_of(s3_endpoint)
    expected = {sid: night(db_url, s3_endpoint, policy, sid, n) for n, sid in enumerate(NIGHTS[:2])}
    change(db_url, 2)
    expected[NIGHTS[2]] = contents(db_url, tables)
    real = snapshot._write_delta

    def dies_after_usage_events(table: str, *args: Any) -> Any:
        done = real(table, *args)  # its objects and its digests stored
        if table == "usage_events":
            raise Killed("killed half-way")
        return done

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(snapshot, "_write_delta", dies_after_usage_events)
        with pytest.raises(Killed):
            take_snapshot(db_url, REGION, s3_endpoint, NIGHTS[2], policy, KEY)
    left = {k for k in digest_versions(client, bucket) if k.startswith(layout.snapshot_prefix(NIGHTS[2]))}
    assert f"{layout.snapshot_prefix(NIGHTS[2])}digests/usage_events.parquet" in left  # the kill came after
    # meanwhile the rows change again: the rerun diffs the primary as it is now against the night before
    with transaction(db_url) as cur:
        cur.execute("UPDATE accounts SET name = name || ' (rerun)' WHERE user_id = 3")
    expected[NIGHTS[2]] = contents(db_url, tables)
    take_snapshot(db_url, REGION, s3_endpoint, NIGHTS[2], policy, KEY)
    assert_only_states_of(client, bucket, NIGHTS[2], delta_tables(client, bucket, NIGHTS[2]))
    expected[NIGHTS[3]] = night(db_url, s3_endpoint, policy, NIGHTS[3], 3)
    assert_only_states_of(client, bucket, NIGHTS[3], delta_tables(client, bucket, NIGHTS[3]))
    for sid in NIGHTS[2:4]:
        assert restored(services, s3_endpoint, REGION, sid, tables) == expected[sid], sid


def test_superseded_digests_do_not_outlive_the_next_expiry(db_url: str, s3_endpoint: str) -> None:
    """Digests a later night supersedes without deleting them (killed between its manifest and deleting the night
    before's, whose rerun finds the snapshot complete; a full night between two incremental ones) are named by a
    retained manifest only. No night reads them again (each reads the newest night's): the expiry, which keeps the
    newest night's for the next, deletes them rather than keep them as long as their night is retained."""
    policy = incremental_policy()
    fill(db_url)
    client, bucket = client_of(s3_endpoint)
    for n, sid in enumerate(NIGHTS[:2]):
        night(db_url, s3_endpoint, policy, sid, n)
    with pytest.MonkeyPatch.context() as patch:

        def killed(*args: Any) -> int:
            raise Killed("killed after the manifest")

        patch.setattr(digest_state, "delete_previous", killed)
        with pytest.raises(Killed):
            night(db_url, s3_endpoint, policy, NIGHTS[2], 2)
    take_snapshot(db_url, REGION, s3_endpoint, NIGHTS[2], policy, KEY)  # the rerun: already complete
    night(db_url, s3_endpoint, policy, NIGHTS[3], 3)
    # nothing expires (a long retention): the manifests are all kept, the superseded digests need not be
    retention, at = timedelta(days=365), datetime(2026, 11, 7, tzinfo=UTC)
    expire_region(db_url, REGION, s3_endpoint, retention, now=at, key=KEY)
    assert_only_states_of(client, bucket, NIGHTS[3], delta_tables(client, bucket, NIGHTS[3]))

    night(db_url, s3_endpoint, load_policy(), NIGHTS[4], 4)  # a full night: night 4's digests stay
    night(db_url, s3_endpoint, policy, NIGHTS[5], 5)  # after a full night, a base: no digests
    assert set(digest_versions(client, bucket)) == {
        f"{layout.snapshot_prefix(NIGHTS[3])}digests/{t}.parquet" for t in delta_tables(client, bucket, NIGHTS[3])
    }
    expire_region(db_url, REGION, s3_endpoint, retention, now=at, key=KEY)
    assert digest_versions(client, bucket) == {}


def test_a_night_between_an_interrupted_propagation_and_its_rerun(
    db_url: str, s3_endpoint: str, services: tuple[str, str]
) -> None:
    """Propagation killed after rewriting an object, before any manifest names its new checksum: the next night's
    digests vouch for the object's old one. Once the rerun has repaired the manifests, the night after reads the
    rewritten buckets from the chain; both nights restore as the primary held them."""
    policy = incremental_policy()
    tables = tables_of(policy)
    fill(db_url)
    client, bucket = client_of(s3_endpoint)
    expected = {NIGHTS[0]: night(db_url, s3_endpoint, policy, NIGHTS[0], 0)}
    with transaction(db_url) as cur:
        cur.execute("UPDATE comments SET body = body || ' (hers)' WHERE comment_id = %s", (HER * 10,))
    expected[NIGHTS[1]] = night(db_url, s3_endpoint, policy, NIGHTS[1], 1)
    erase(db_url, HER)
    before = current_versions(client, bucket)
    with pytest.raises(PropagationInterrupted):
        propagate_region(db_url, REGION, s3_endpoint, key=KEY, interrupt_after_puts=1)
    assert [k for k, v in current_versions(client, bucket).items() if before.get(k) != v]  # rewritten, unnamed
    expected[NIGHTS[2]] = night(db_url, s3_endpoint, policy, NIGHTS[2], 2)
    propagate_region(db_url, REGION, s3_endpoint, key=KEY)
    with pytest.MonkeyPatch.context() as patch, reads(patch) as seen:
        expected[NIGHTS[3]] = night(db_url, s3_endpoint, policy, NIGHTS[3], 3)
    assert [k for k in seen if "/data/" in k]  # the buckets rewritten since night 3's digests: from the chain
    for sid in NIGHTS[2:4]:
        assert restored(services, s3_endpoint, REGION, sid, tables) == expected[sid], sid


def test_expiry_rolling_the_chain_between_nights(db_url: str, s3_endpoint: str, services: tuple[str, str]) -> None:
    policy = incremental_policy()
    tables = tables_of(policy)
    fill(db_url)
    client, bucket = client_of(s3_endpoint)
    expected = {sid: night(db_url, s3_endpoint, policy, sid, n) for n, sid in enumerate(NIGHTS[:4])}
    # nights 1 and 2 go: night 3's chain is rolled into a base of its own, night 4's starts with it
    expire_region(db_url, REGION, s3_endpoint, timedelta(days=2), now=datetime(2026, 11, 4, 12, tzinfo=UTC), key=KEY)
    assert_only_states_of(client, bucket, NIGHTS[3], delta_tables(client, bucket, NIGHTS[3]))
    expected[NIGHTS[4]] = night(db_url, s3_endpoint, policy, NIGHTS[4], 4)
    expected[NIGHTS[5]] = night(db_url, s3_endpoint, policy, NIGHTS[5], 5)
    assert_only_states_of(client, bucket, NIGHTS[5], delta_tables(client, bucket, NIGHTS[5]))
    for sid in NIGHTS[4:]:
        assert restored(services, s3_endpoint, REGION, sid, tables) == expected[sid], sid


def test_digests_deleted_overwritten_or_swapped_outside_lethe(
    db_url: str, s3_endpoint: str, services: tuple[str, str]
) -> None:
    """Overwritten (the manifest's checksum no longer matches), deleted (a delete marker), and swapped for an
    older night's digests with the manifest edited to match: each next night still restores as the primary held
    it, and the night after leaves no version of the digests it replaced."""
    policy = incremental_policy()
    tables = tables_of(policy)
    fill(db_url)
    client, bucket = client_of(s3_endpoint)
    expected = {sid: night(db_url, s3_endpoint, policy, sid, n) for n, sid in enumerate(NIGHTS[:2])}
    prefix = layout.snapshot_prefix(NIGHTS[1])
    older = client.get_object(Bucket=bucket, Key=f"{prefix}digests/comments.parquet")["Body"].read()
    client.put_object(Bucket=bucket, Key=f"{prefix}digests/comments.parquet", Body=b"not parquet")
    client.delete_object(Bucket=bucket, Key=f"{prefix}digests/usage_events.parquet")  # a marker
    expected[NIGHTS[2]] = night(db_url, s3_endpoint, policy, NIGHTS[2], 2)
    assert_only_states_of(client, bucket, NIGHTS[2], delta_tables(client, bucket, NIGHTS[2]))

    # night 2's digests of comments swapped for night 1's, the manifest edited to vouch for them
    key = f"{layout.snapshot_prefix(NIGHTS[2])}digests/comments.parquet"
    client.put_object(Bucket=bucket, Key=key, Body=older)

    def vouch(raw: dict[str, Any]) -> None:
        import hashlib

        raw["tables"]["comments"]["digests"]["sha256"] = hashlib.sha256(older).hexdigest()

    put_raw_manifest(client, bucket, NIGHTS[2], vouch)
    for n in (3, 4):
        expected[NIGHTS[n]] = night(db_url, s3_endpoint, policy, NIGHTS[n], n)
    assert_only_states_of(client, bucket, NIGHTS[4], delta_tables(client, bucket, NIGHTS[4]))
    for sid in NIGHTS[2:4]:  # the nights that read the digests altered
        assert restored(services, s3_endpoint, REGION, sid, tables) == expected[sid], sid


def test_a_second_region_taking_over_diffs_against_its_own_chain(
    db_url: str, s3_endpoint: str, services: tuple[str, str]
) -> None:
    policy = incremental_policy()
    tables = tables_of(policy)
    fill(db_url)
    client, bucket = client_of(s3_endpoint, SECOND)
    expected = {}
    for n, sid in enumerate(NIGHTS[:3]):
        expected[sid] = night(db_url, s3_endpoint, policy, sid, n)
        replicate_snapshot(db_url, sid, REGION, s3_endpoint, SECOND, s3_endpoint)
    assert digest_versions(client, bucket) == {}  # none copied, none named
    assert not [t for t in raw_manifest(client, bucket, NIGHTS[2])["tables"].values() if t.get("digests")]
    erase(db_url, HER)  # the first region is lost before propagating it: the second propagates, then takes over
    propagate_region(db_url, SECOND, s3_endpoint, key=KEY)
    expected[NIGHTS[3]] = night(db_url, s3_endpoint, policy, NIGHTS[3], 3, region=SECOND)
    assert restored(services, s3_endpoint, SECOND, NIGHTS[3], tables) == expected[NIGHTS[3]]
    erase(db_url, 20)  # and one there between its own nights: its next diffs against its digests and the chain
    propagate_region(db_url, SECOND, s3_endpoint, key=KEY)
    expected[NIGHTS[4]] = night(db_url, s3_endpoint, policy, NIGHTS[4], 4, region=SECOND)
    assert_only_states_of(client, bucket, NIGHTS[4], delta_tables(client, bucket, NIGHTS[4]))
    assert restored(services, s3_endpoint, SECOND, NIGHTS[4], tables) == expected[NIGHTS[4]]


def test_nights_in_a_bucket_under_object_lock_within_the_erasure_deadline(
    db_url: str, s3_endpoint: str, services: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backup bucket whose Object Lock keeps every version a while, within the erasure deadline (allowed: only a
    COMPLIANCE retention past the deadline refuses the export). The night before's digests cannot be deleted
    yet: each night still completes, restores as the primary held it, and the next nights diff as before."""
    import uuid

    monkeypatch.setenv("LETHE_BUCKET_PREFIX", f"dlock{uuid.uuid4().hex[:8]}")
    client, bucket = client_of(s3_endpoint)
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    client.put_object_lock_configuration(
        Bucket=bucket,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 7}},
        },
    )
    from lethe.storage import ensure_buckets

    ensure_buckets(s3_endpoint)
    policy = incremental_policy()
    tables = tables_of(policy)
    fill(db_url)
    expected = {sid: night(db_url, s3_endpoint, policy, sid, n) for n, sid in enumerate(NIGHTS[:3])}
    with transaction(db_url) as cur:
        cur.execute("SELECT snapshot_id, status FROM backup_snapshots WHERE region = %s", (REGION,))
        assert dict(cur.fetchall()) == dict.fromkeys(NIGHTS[:3], "complete")
    assert restored(services, s3_endpoint, REGION, NIGHTS[2], tables) == expected[NIGHTS[2]]
    # the expiry too: the superseded digests the lock still keeps are left for a later one, the rest done
    summary = expire_region(
        db_url, REGION, s3_endpoint, timedelta(days=365), now=datetime(2026, 11, 3, 12, tzinfo=UTC), key=KEY
    )
    assert summary["expired_snapshots"] == 0
    with transaction(db_url) as cur:  # the expiry's ledger entry: it ran to its end
        cur.execute("SELECT count(*) FROM ledger WHERE kind = 'backup_expiry'")
        assert cur.fetchone()[0] == 1
    expected[NIGHTS[3]] = night(db_url, s3_endpoint, policy, NIGHTS[3], 3)
    assert restored(services, s3_endpoint, REGION, NIGHTS[3], tables) == expected[NIGHTS[3]]


def test_digests_written_and_read_a_few_at_a_time_split_buckets_across_batches(
    db_url: str, s3_endpoint: str, services: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The digests are written and decoded ROWS_AT_ONCE at a time (262,144): here 7, so that a bucket's digests
    run over several batches, a batch ends at a bucket's end or in its middle, and the subjectless ones (bucket
    -1) fill batches of their own. The nights read no object of the chain and restore as the primary held them."""
    monkeypatch.setattr(digest_state, "ROWS_AT_ONCE", 7)
    policy = incremental_policy()
    tables = tables_of(policy)
    fill(db_url)
    with transaction(db_url) as cur:  # a bucket of many rows: person 1's
        cur.execute("INSERT INTO comments SELECT 800000 + g, 1, 'many of one', now() FROM generate_series(1, 40) g")
        cur.execute(
            "INSERT INTO security_evidence SELECT 100 + g, NULL, '10.9.9.9', 'scan', 'sweep', now()"
            " FROM generate_series(1, 20) g"
        )
    client, bucket = client_of(s3_endpoint)
    expected = {sid: night(db_url, s3_endpoint, policy, sid, n) for n, sid in enumerate(NIGHTS[:2])}
    state = pq.ParquetFile(
        io.BytesIO(
            client.get_object(Bucket=bucket, Key=f"{layout.snapshot_prefix(NIGHTS[1])}digests/comments.parquet")[
                "Body"
            ].read()
        )
    )
    assert state.metadata.num_row_groups > 10  # written a few at a time
    for n in (2, 3):
        with pytest.MonkeyPatch.context() as patch, reads(patch) as seen:
            expected[NIGHTS[n]] = night(db_url, s3_endpoint, policy, NIGHTS[n], n)
        assert not [k for k in seen if "/data/" in k], NIGHTS[n]
    for sid in NIGHTS[2:4]:
        assert restored(services, s3_endpoint, REGION, sid, tables) == expected[sid], sid
