"""Expiry of incremental snapshots (#20) against a real PostgreSQL and S3 over HTTP.

Expected contents are read from the primary with plain SQL before each night's snapshot; what is stored is
read with boto3 (every version) and raw pyarrow Parquet reads, manifests as plain JSON: the checks share
nothing with the roll's code.
"""

from __future__ import annotations

import gzip
import io
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow.parquet as pq
import pytest
from lethe import testing
from lethe.backup import roll, store
from lethe.backup.expiry import expire_region
from lethe.backup.restore import restore_snapshot
from lethe.backup.snapshot import take_snapshot
from lethe.config import BUCKETS
from lethe.db import transaction
from lethe.policy import Policy, load_policy
from lethe.storage import s3_client
from test_backup_incremental import KEY, REGION, change_a_night, contents, fill, incremental_policy, tables_of

pytestmark = pytest.mark.integration

NIGHTS = ["20261101T020000Z", "20261102T020000Z", "20261103T020000Z", "20261104T020000Z", "20261105T020000Z"]
AFTER = "20261106T020000Z"  # a night after the expiry
EXPIRED, RETAINED = NIGHTS[:2], NIGHTS[2:]
# At this time, with this retention, the first two nights are past it (taken before 2026-11-02T12:00Z).
NOW = datetime(2026, 11, 5, 12, 0, tzinfo=UTC)
RETENTION = timedelta(days=3)
GONE_ON_NIGHT_2 = 41  # change_a_night(_, 1) deletes every row of person 41 on the second night


def versions(client: Any, bucket: str, prefix: str = "snapshots/") -> list[dict[str, Any]]:
    """Every version and delete marker under `prefix`, from boto3."""
    found = []
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        found += [{**v, "Marker": False} for v in page.get("Versions", [])]
        found += [{**m, "Marker": True} for m in page.get("DeleteMarkers", [])]
    return found


def gunzipped_json(client: Any, bucket: str, key: str) -> Any:
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return json.loads(gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body)  # incremental ones: gzipped


def manifest_json(client: Any, bucket: str, sid: str) -> dict[str, Any]:
    """The manifest with every entry inline (as it may also be stored): the index objects it names, read raw."""
    found = gunzipped_json(client, bucket, f"snapshots/{sid}/manifest.json")
    indexes = [gunzipped_json(client, bucket, ref["key"])["tables"] for ref in found.pop("index_objects", [])]
    for name, table in found["tables"].items():
        table["objects"] = table.get("objects") or [o for index in indexes for o in index.get(name, [])]
    return found


def user_ids_in_every_version(client: Any, bucket: str) -> Counter[int]:
    """How many rows of each user_id every version of every Parquet object holds (raw reads)."""
    found: Counter[int] = Counter()
    for v in versions(client, bucket):
        if v["Marker"] or not v["Key"].endswith(".parquet"):
            continue
        body = client.get_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])["Body"].read()
        table = pq.read_table(io.BytesIO(body))
        if "user_id" in table.column_names:
            found.update(u for u in table.column("user_id").to_pylist() if u is not None)
    return found


def take_nights(url: str, endpoint: str, policy: Policy, nights: list[str], first: int = 0) -> dict[str, Any]:
    """Each night's changes (night `first` + i), what the primary held, then the snapshot."""
    expected = {}
    for n, sid in enumerate(nights, start=first):
        if n:
            change_a_night(url, n)
        expected[sid] = contents(url, tables_of(policy))
        take_snapshot(url, REGION, endpoint, sid, policy, KEY)
    return expected


def restores(services: tuple[str, str], endpoint: str, policy: Policy, expected: dict[str, Any]) -> None:
    for sid, rows in expected.items():
        target = testing.fresh_database(services[0])
        with transaction(target) as cur:
            cur.execute("ALTER TABLE security_evidence DROP CONSTRAINT security_evidence_pkey")
        try:
            report = restore_snapshot(sid, REGION, target, endpoint_url=endpoint, key=KEY, out=lambda _: None)
            assert report.verified
            assert contents(target, tables_of(policy)) == rows, sid
        finally:
            testing.drop_database(target)


def expire(url: str, endpoint: str) -> dict[str, Any]:
    return expire_region(url, REGION, endpoint, RETENTION, now=NOW, key=KEY)


def assert_rolled(client: Any, bucket: str) -> None:
    """The final state, however it was reached: nothing of the expired nights; the oldest retained night's
    tables are each a base of its own, which the later nights' chains start with; every stored object is named
    by a retained manifest and has one version."""
    for sid in EXPIRED:
        assert versions(client, bucket, f"snapshots/{sid}/") == [], sid
    first = manifest_json(client, bucket, RETAINED[0])
    named: set[str] = set()
    for table, entry in first["tables"].items():
        assert all(o["night"] is None and o["key"].startswith(f"snapshots/{RETAINED[0]}/") for o in entry["objects"])
        assert entry["rows"] == sum(o["rows"] for o in entry["objects"]), table
    for sid in RETAINED:
        m = manifest_json(client, bucket, sid)
        for table, entry in m["tables"].items():
            base = first["tables"][table]["objects"]
            assert entry["objects"][: len(base)] == base, (sid, table)
            assert all(o["night"] not in (None, *NIGHTS[:3]) for o in entry["objects"][len(base) :]), (sid, table)
            named |= {o["key"] for o in entry["objects"]}
        raw = gunzipped_json(client, bucket, f"snapshots/{sid}/manifest.json")
        named |= {ref["key"] for ref in raw.get("index_objects", [])}  # the entries' index objects
    # the newest night's digests, for the next night (each night deletes the one before's)
    named |= {f"snapshots/{RETAINED[-1]}/digests/{table}.parquet" for table in first["tables"]}
    listed = versions(client, bucket)
    assert not [v for v in listed if v["Marker"]]
    data = Counter(v["Key"] for v in listed if not v["Key"].endswith("manifest.json"))
    assert set(data) == named
    assert set(data.values()) == {1}


def test_expiry_rolls_the_oldest_retained_night_into_a_base_and_deletes_what_nothing_names(
    db_url: str, s3_endpoint: str, services: tuple[str, str]
) -> None:
    policy = incremental_policy()
    policy = policy.model_copy(update={"backups": policy.backups.model_copy(update={"term_index": True})})
    fill(db_url)
    expected = take_nights(db_url, s3_endpoint, policy, NIGHTS)
    client, bucket = s3_client(REGION, s3_endpoint), BUCKETS.backup(REGION)
    # the later nights name the first night's base: it holds person 41, whose rows went on night 2
    assert any(
        o["key"].startswith(f"snapshots/{NIGHTS[0]}/")
        for o in manifest_json(client, bucket, RETAINED[0])["tables"]["accounts"]["objects"]
    )
    assert user_ids_in_every_version(client, bucket)[GONE_ON_NIGHT_2] > 0
    applications = applications_of(db_url)
    indexed = {
        t: {o["term_index"] is not None for o in e["objects"]}
        for t, e in manifest_json(client, bucket, RETAINED[0])["tables"].items()
    }
    assert indexed["comments"] == {True}

    summary = expire(db_url, s3_endpoint)

    assert summary["expired_snapshots"] == 2 and summary["snapshots_rolled"] == 1
    assert summary["objects_rolled_into_bases"] > 0 and summary["unreferenced_versions_deleted"] > 0
    assert summary["manifests_rewritten"] == len(RETAINED)
    assert_rolled(client, bucket)
    assert user_ids_in_every_version(client, bucket)[GONE_ON_NIGHT_2] == 0  # in no version of any object
    # a table's new bases are indexed when its objects were (the comments' are)
    rolled = manifest_json(client, bucket, RETAINED[0])["tables"]
    assert {t: {o["term_index"] is not None for o in e["objects"]} for t, e in rolled.items()} == indexed
    assert all(o["term_index"]["terms"] > 0 for o in rolled["comments"]["objects"])
    restores(services, s3_endpoint, policy, {sid: expected[sid] for sid in RETAINED})
    with transaction(db_url) as cur:
        cur.execute("SELECT snapshot_id, status FROM backup_snapshots WHERE region = %s ORDER BY 1", (REGION,))
        assert cur.fetchall() == [(s, "expired") for s in EXPIRED] + [(s, "complete") for s in RETAINED]
        cur.execute("SELECT payload FROM ledger WHERE kind = %s ORDER BY entry_id DESC LIMIT 1", ("backup_expiry",))
        entry = cur.fetchone()[0]
    assert entry["objects_rolled_into_bases"] == summary["objects_rolled_into_bases"]
    assert applications_of(db_url) == {s: n for s, n in applications.items() if s in RETAINED}

    before = sorted((v["Key"], v["VersionId"]) for v in versions(client, bucket))
    again = expire(db_url, s3_endpoint)  # nothing left to do
    assert again["expired_snapshots"] == again["snapshots_rolled"] == again["manifests_rewritten"] == 0
    assert again["versions_deleted"] == again["unreferenced_versions_deleted"] == 0
    assert sorted((v["Key"], v["VersionId"]) for v in versions(client, bucket)) == before

    # a night after the expiry is a delta against the rolled chain, and every retained night still restores
    expected.update(take_nights(db_url, s3_endpoint, policy, [AFTER], first=len(NIGHTS)))
    last = manifest_json(client, bucket, AFTER)
    assert {o["night"] for e in last["tables"].values() for o in e["objects"]} == {None, *NIGHTS[3:], AFTER}
    restores(services, s3_endpoint, policy, {sid: expected[sid] for sid in [*RETAINED, AFTER]})


def applications_of(url: str) -> dict[str, int]:
    with transaction(url) as cur:
        cur.execute("SET LOCAL statement_timeout = '30s'")
        cur.execute(
            "SELECT snapshot_id, count(*) FROM backup_tombstone_applications WHERE region = %s GROUP BY 1", (REGION,)
        )
        return dict(cur.fetchall())


class Killed(RuntimeError):
    pass


@pytest.mark.parametrize(("step", "after"), [("base", 2), ("manifest", 1), ("manifest", 2)])
def test_an_expiry_killed_mid_roll_converges_when_run_again(
    db_url: str, s3_endpoint: str, services: tuple[str, str], monkeypatch: pytest.MonkeyPatch, step: str, after: int
) -> None:
    policy = incremental_policy()
    fill(db_url)
    expected = take_nights(db_url, s3_endpoint, policy, NIGHTS)
    client, bucket = s3_client(REGION, s3_endpoint), BUCKETS.backup(REGION)
    calls = {"n": 0}
    real = store.put_file if step == "base" else roll.write_manifest

    def dies(*args: Any, **kwargs: Any) -> Any:
        if calls["n"] == after:
            raise Killed(f"killed after {after} {step} write(s)")
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(store if step == "base" else roll, "put_file" if step == "base" else "write_manifest", dies)
    with pytest.raises(Killed):
        expire(db_url, s3_endpoint)
    assert calls["n"] == after
    monkeypatch.undo()
    # killed: nothing deleted yet, every snapshot still whole
    assert all(versions(client, bucket, f"snapshots/{sid}/") for sid in EXPIRED)
    restores(services, s3_endpoint, policy, {NIGHTS[3]: expected[NIGHTS[3]]})

    summary = expire(db_url, s3_endpoint)

    assert summary["expired_snapshots"] == 2
    assert_rolled(client, bucket)
    assert user_ids_in_every_version(client, bucket)[GONE_ON_NIGHT_2] == 0
    restores(services, s3_endpoint, policy, {sid: expected[sid] for sid in RETAINED})
    again = expire(db_url, s3_endpoint)
    assert again["snapshots_rolled"] == again["unreferenced_versions_deleted"] == again["versions_deleted"] == 0


def test_full_snapshots_expire_as_before(db_url: str, s3_endpoint: str, services: tuple[str, str]) -> None:
    """Without `backups.incremental`: the expired snapshots go, every version; the others are not touched."""
    policy = load_policy()
    assert not policy.backups.incremental
    fill(db_url)
    expected = take_nights(db_url, s3_endpoint, policy, NIGHTS[:3])
    client, bucket = s3_client(REGION, s3_endpoint), BUCKETS.backup(REGION)
    kept = sorted((v["Key"], v["VersionId"]) for v in versions(client, bucket, f"snapshots/{NIGHTS[2]}/"))

    summary = expire(db_url, s3_endpoint)

    assert summary["expired_snapshots"] == 2 and summary["versions_deleted"] > 0
    assert (
        summary["snapshots_rolled"] == summary["manifests_rewritten"] == summary["unreferenced_versions_deleted"] == 0
    )
    assert (
        versions(client, bucket, f"snapshots/{NIGHTS[0]}/") == versions(client, bucket, f"snapshots/{NIGHTS[1]}/") == []
    )
    assert sorted((v["Key"], v["VersionId"]) for v in versions(client, bucket)) == kept
    restores(services, s3_endpoint, policy, {NIGHTS[2]: expected[NIGHTS[2]]})


def without_event(client: Any, bucket: str, event_id: int) -> tuple[str, str, int, int]:
    """Rewrite the first night's usage_events base object holding `event_id` without that row, as a propagation
    would; (key, sha256, rows, bytes) of the new version."""
    import hashlib

    import pyarrow.compute as pc

    for v in versions(client, bucket, f"snapshots/{NIGHTS[0]}/data/usage_events/"):
        body = client.get_object(Bucket=bucket, Key=v["Key"])["Body"].read()
        table = pq.read_table(io.BytesIO(body))
        if event_id in table.column("event_id").to_pylist():
            out = io.BytesIO()
            pq.write_table(table.filter(pc.not_equal(table.column("event_id"), event_id)), out)
            data = out.getvalue()
            client.put_object(Bucket=bucket, Key=v["Key"], Body=data)
            return v["Key"], hashlib.sha256(data).hexdigest(), table.num_rows - 1, len(data)
    raise AssertionError(f"no object holds event {event_id}")


def test_an_object_rewritten_through_a_later_manifest_is_taken_as_it_now_is(
    db_url: str, s3_endpoint: str, services: tuple[str, str]
) -> None:
    """A propagation rewrote a shared object and wrote only the last night's manifest: the others' entries are
    stale. The last manifest vouches for the object's current version: the roll reads it."""
    policy = incremental_policy()
    fill(db_url)
    expected = take_nights(db_url, s3_endpoint, policy, NIGHTS)
    client, bucket = s3_client(REGION, s3_endpoint), BUCKETS.backup(REGION)
    key, sha256, rows, size = without_event(client, bucket, 10)
    last = manifest_json(client, bucket, NIGHTS[-1])
    (entry,) = [o for o in last["tables"]["usage_events"]["objects"] if o["key"] == key]
    entry.update(sha256=sha256, rows=rows, bytes=size)
    client.put_object(Bucket=bucket, Key=f"snapshots/{NIGHTS[-1]}/manifest.json", Body=json.dumps(last).encode())

    expire(db_url, s3_endpoint)

    assert_rolled(client, bucket)
    for sid in RETAINED:  # event 10 was never deleted from the primary: only the rewrite took it out
        gone = [r for r in expected[sid]["usage_events"] if json.loads(r)["event_id"] == 10]
        assert len(gone) == 1
        del expected[sid]["usage_events"][gone[0]]
    restores(services, s3_endpoint, policy, {sid: expected[sid] for sid in RETAINED})


def test_an_object_no_retained_manifest_vouches_for_stops_the_expiry_before_any_deletion(
    db_url: str, s3_endpoint: str
) -> None:
    policy = incremental_policy()
    fill(db_url)
    take_nights(db_url, s3_endpoint, policy, NIGHTS)
    client, bucket = s3_client(REGION, s3_endpoint), BUCKETS.backup(REGION)
    key, _, _, _ = without_event(client, bucket, 10)  # changed outside Lethe: no manifest names these bytes
    listed = {(v["Key"], v["VersionId"]) for v in versions(client, bucket)}
    manifests = {sid: manifest_json(client, bucket, sid) for sid in NIGHTS}

    with pytest.raises(roll.StaleEntry) as err:
        expire(db_url, s3_endpoint)

    assert f"snapshot {RETAINED[0]}: s3://{bucket}/{key} matches the checksum of no retained manifest" in str(err.value)
    # nothing deleted and no manifest changed (new base objects, named by none, may have been put)
    assert listed <= {(v["Key"], v["VersionId"]) for v in versions(client, bucket)}
    assert {sid: manifest_json(client, bucket, sid) for sid in NIGHTS} == manifests


def test_a_manifest_written_by_someone_else_during_the_roll_stops_it_and_a_rerun_converges(
    db_url: str, s3_endpoint: str, services: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A propagation (it does not hold the writer lock) writes a later night's manifest while the roll writes
    the new base objects: the roll's rewrite of that manifest would lose it, so the roll stops before writing it
    (the later manifest it wrote first names stored objects) and deletes nothing; a rerun finishes the job."""
    policy = incremental_policy()
    fill(db_url)
    expected = take_nights(db_url, s3_endpoint, policy, NIGHTS)
    client, bucket = s3_client(REGION, s3_endpoint), BUCKETS.backup(REGION)
    listed = {(v["Key"], v["VersionId"]) for v in versions(client, bucket)}
    meanwhile = manifest_json(client, bucket, NIGHTS[3])
    meanwhile["rewrites"].append({"at": "2026-11-05T12:00:00+00:00", "tombstones": 0, "objects_rewritten": 0})
    real = roll._current_sha256

    def propagation_writes(*args: Any) -> Any:
        body = gzip.compress(json.dumps(meanwhile).encode())  # as an incremental manifest is stored
        client.put_object(Bucket=bucket, Key=f"snapshots/{NIGHTS[3]}/manifest.json", Body=body)
        return real(*args)

    monkeypatch.setattr(roll, "_current_sha256", propagation_writes)
    with pytest.raises(roll.ManifestChanged, match=f"snapshot {NIGHTS[3]}: its manifest changed"):
        expire(db_url, s3_endpoint)
    monkeypatch.undo()
    assert listed <= {(v["Key"], v["VersionId"]) for v in versions(client, bucket)}  # nothing deleted
    assert manifest_json(client, bucket, NIGHTS[3]) == meanwhile  # the propagation's write stands

    expire(db_url, s3_endpoint)

    assert_rolled(client, bucket)
    assert manifest_json(client, bucket, NIGHTS[3])["rewrites"] == meanwhile["rewrites"]
    restores(services, s3_endpoint, policy, {sid: expected[sid] for sid in RETAINED})
