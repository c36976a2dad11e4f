"""Incremental manifests' index objects (lethe.backup.manifest), attacked from outside: kills between an index and
the manifests naming it, indexes deleted or changed outside Lethe, manifests from before index objects mixed into
a chain, a second region. What is stored is read raw with boto3 (every version), what a restore gives with plain
SQL; Lethe's counters are not trusted.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from lethe import testing
from lethe.backup import layout, manifest, store
from lethe.backup.expiry import expire_region
from lethe.backup.propagate import propagate_region
from lethe.backup.restore import restore_snapshot
from lethe.backup.snapshot import take_snapshot
from lethe.config import BACKUP_REGIONS, BUCKETS
from lethe.storage import s3_client
from test_backup import KEY, erase, every_version, fill_primary, rows_of
from test_backup_incremental_erasure import (
    HER,
    NIGHTS,
    _audit,
    change,
    inconsistencies,
    incremental_policy,
    nights_of,
    restores_to,
    tables_of,
    take_night,
    without_her,
)

pytestmark = pytest.mark.integration

REGION = BACKUP_REGIONS[0]


def every_key_version(client: Any, bucket: str) -> set[tuple[str, str, bool]]:
    """(key, version id, delete marker) of everything under snapshots/ (raw list_object_versions)."""
    found = set()
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix="snapshots/"):
        found |= {(v["Key"], v["VersionId"], False) for v in page.get("Versions", [])}
        found |= {(m["Key"], m["VersionId"], True) for m in page.get("DeleteMarkers", [])}
    return found


def leftovers(client: Any, bucket: str) -> list[str]:
    """What the store holds beyond the current version of what a current manifest names: noncurrent versions,
    delete markers, index objects no manifest names (raw reads; manifests and indexes parsed here)."""
    found = []
    named: set[str] = set()
    current: set[str] = set()
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix="snapshots/"):
        for v in page.get("Versions", []):
            if not v["IsLatest"]:
                found.append(f"noncurrent {v['Key']}")
            else:
                current.add(v["Key"])
        found += [f"marker {m['Key']}" for m in page.get("DeleteMarkers", [])]
    for key in current:
        if key.endswith("/manifest.json"):
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            raw = json.loads(gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body)
            named |= {ref["key"] for ref in raw.get("index_objects", [])}
    found += [f"unnamed index {k}" for k in sorted(current) if "/index/" in k and k not in named]
    return found


def after_roll(client: Any, bucket: str) -> list[str]:
    """leftovers() but the noncurrent manifest versions a roll leaves (entries only; the next propagation run
    sweeps them, as for any manifest it rewrites)."""
    return [x for x in leftovers(client, bucket) if not (x.startswith("noncurrent") and x.endswith("manifest.json"))]


def index_refs(client: Any, bucket: str, sid: str) -> list[str]:
    body = client.get_object(Bucket=bucket, Key=layout.manifest_key(sid))["Body"].read()
    return [ref["key"] for ref in json.loads(gzip.decompress(body)).get("index_objects", [])]


def test_a_changed_or_deleted_index_is_named_by_the_audit_and_every_reader_and_nothing_goes(
    db_url: str, s3_endpoint: str, services: tuple[str, str]
) -> None:
    policy = incremental_policy()
    tables = tables_of(policy)
    fill_primary(db_url)
    client, bucket = s3_client(REGION, s3_endpoint), BUCKETS.backup(REGION)
    nights_of(db_url, s3_endpoint, policy, tables, NIGHTS[:3], REGION)
    erase(db_url, HER)  # pending: propagation has work to do
    base_index = next(k for k in index_refs(client, bucket, NIGHTS[2]) if layout.written_by(k) == NIGHTS[0])
    other = json.dumps({"format": manifest.INDEX_FORMAT, "tables": {}}).encode()

    def attempts() -> None:
        before = every_key_version(client, bucket)
        counts, details = _audit(db_url, REGION, s3_endpoint)
        assert counts["manifest_mismatches"] >= 1, counts
        assert base_index in json.dumps(details), details  # not just "unreachable"
        assert "unreachable" not in details, details
        with pytest.raises(Exception, match=base_index):
            propagate_region(db_url, REGION, s3_endpoint, key=KEY)
        with pytest.raises(Exception, match=base_index):  # night 0 past its retention
            expire_region(db_url, REGION, s3_endpoint, timedelta(days=1), now=datetime(2026, 11, 2, 12, tzinfo=UTC))
        target = testing.fresh_database(services[0])
        try:
            with pytest.raises(Exception, match=base_index):
                restore_snapshot(NIGHTS[2], REGION, target, endpoint_url=s3_endpoint, key=KEY, out=lambda _: None)
            # a snapshot that is not there: the error says so, whatever another snapshot's index
            with pytest.raises(Exception, match="no complete snapshot 20261130T020000Z"):
                restore_snapshot("20261130T020000Z", REGION, target, endpoint_url=s3_endpoint, key=KEY,
                                 out=lambda _: None)  # fmt: skip
        finally:
            testing.drop_database(target)
        assert every_key_version(client, bucket) == before  # nothing deleted, nothing written

    # changed outside Lethe: a new version over it
    client.put_object(Bucket=bucket, Key=base_index, Body=gzip.compress(other))
    attempts()
    changed = [v for v in store.versions(client, bucket, base_index) if v["IsLatest"]]
    client.delete_object(Bucket=bucket, Key=base_index, VersionId=changed[0]["VersionId"])
    # deleted outside Lethe: a plain delete (a marker over it)
    client.delete_object(Bucket=bucket, Key=base_index)
    attempts()


def test_a_propagation_killed_between_an_index_and_its_manifests_converges(
    db_url: str, s3_endpoint: str, services: tuple[str, str]
) -> None:
    policy = incremental_policy()
    tables = tables_of(policy)
    fill_primary(db_url)
    client, bucket = s3_client(REGION, s3_endpoint), BUCKETS.backup(REGION)
    expected = nights_of(db_url, s3_endpoint, policy, tables, NIGHTS[:4], REGION)
    pseudonym = erase(db_url, HER)
    real_put = store.put
    manifests_put = []

    def put_dying_at(n: int) -> Any:
        def put(client: Any, bucket: str, key: str, body: bytes, content_type: str = "x") -> str:
            if key.endswith("/manifest.json"):
                if len(manifests_put) + 1 >= n:
                    raise RuntimeError("killed (test)")
                manifests_put.append(key)
            return real_put(client, bucket, key, body, content_type)

        return put

    for dying in (1, 2):  # after the new index, before any manifest; then after the first manifest
        manifests_put.clear()
        with pytest.MonkeyPatch.context() as patch, pytest.raises(RuntimeError, match="killed"):
            patch.setattr(store, "put", put_dying_at(dying))
            propagate_region(db_url, REGION, s3_endpoint, key=KEY)
    propagate_region(db_url, REGION, s3_endpoint, key=KEY)
    propagate_region(db_url, REGION, s3_endpoint, key=KEY)  # nothing pending: changes nothing

    assert rows_of(every_version(s3_endpoint, REGION), {HER}) == Counter()
    assert leftovers(client, bucket) == []
    assert inconsistencies(client, bucket) == []
    for sid in (NIGHTS[0], NIGHTS[3]):
        assert restores_to(services, s3_endpoint, REGION, sid, None, tables) == without_her(expected[sid], pseudonym)


def test_manifests_from_before_index_objects_mixed_into_a_chain_propagate_expire_and_restore(
    db_url: str, s3_endpoint: str, services: tuple[str, str]
) -> None:
    policy = incremental_policy()
    tables = tables_of(policy)
    fill_primary(db_url)
    client, bucket = s3_client(REGION, s3_endpoint), BUCKETS.backup(REGION)
    with pytest.MonkeyPatch.context() as patch:  # the first two nights written as before: every entry inline
        patch.setattr(manifest, "_split", lambda m: None)
        expected = nights_of(db_url, s3_endpoint, policy, tables, NIGHTS[:2], REGION)
    for n, sid in enumerate(NIGHTS[2:4], start=2):
        expected[sid] = take_night(db_url, s3_endpoint, policy, tables, sid, n, REGION)
    assert index_refs(client, bucket, NIGHTS[0]) == [] and index_refs(client, bucket, NIGHTS[3])
    pseudonym = erase(db_url, HER)
    propagate_region(db_url, REGION, s3_endpoint, key=KEY)

    assert rows_of(every_version(s3_endpoint, REGION), {HER}) == Counter()
    assert leftovers(client, bucket) == []
    assert inconsistencies(client, bucket) == []
    for sid in (NIGHTS[1], NIGHTS[3]):
        assert restores_to(services, s3_endpoint, REGION, sid, None, tables) == without_her(expected[sid], pseudonym)

    # night 0 past its retention: night 1 rolled onto a base of its own
    expire_region(db_url, REGION, s3_endpoint, timedelta(days=3), now=datetime(2026, 11, 4, 12, tzinfo=UTC), key=KEY)
    assert every_key_version(client, bucket) and not [
        k for k, _, _ in every_key_version(client, bucket) if k.startswith(layout.snapshot_prefix(NIGHTS[0]))
    ]
    assert after_roll(client, bucket) == []
    assert inconsistencies(client, bucket) == []
    propagate_region(db_url, REGION, s3_endpoint, key=KEY)
    assert leftovers(client, bucket) == []
    for sid in (NIGHTS[1], NIGHTS[3]):
        assert restores_to(services, s3_endpoint, REGION, sid, None, tables) == without_her(expected[sid], pseudonym)


def test_a_second_region_holds_no_superseded_index_after_copies_propagation_and_expiry(
    db_url: str, s3_endpoint: str, services: tuple[str, str]
) -> None:
    policy = incremental_policy()
    tables = tables_of(policy)
    fill_primary(db_url)
    source, target = BACKUP_REGIONS
    clients = {r: (s3_client(r, s3_endpoint), BUCKETS.backup(r)) for r in BACKUP_REGIONS}
    expected = {}
    nights = [*NIGHTS, "20261106T020000Z"]

    def night(n: int) -> None:
        expected[nights[n]] = take_night(db_url, s3_endpoint, policy, tables, nights[n], n, source, target)

    for n in range(3):
        night(n)
    pseudonym = erase(db_url, HER)
    propagate_region(db_url, source, s3_endpoint, key=KEY)
    night(3)  # the target takes the source's rewritten shared objects, and its older manifests new indexes
    unnamed = [x for x in leftovers(*clients[target]) if x.startswith("unnamed")]
    print("unnamed indexes in the target after the copy, before its propagation:", unnamed)
    propagate_region(db_url, target, s3_endpoint, key=KEY)
    propagate_region(db_url, source, s3_endpoint, key=KEY)
    for region in BACKUP_REGIONS:
        assert rows_of(every_version(s3_endpoint, region), {HER}) == Counter(), region
        assert leftovers(*clients[region]) == [], region
        assert inconsistencies(*clients[region]) == [], region
    # the target expires night 0 first, then takes night 4 (its chain reaching night 0, gone there)
    expire_region(db_url, target, s3_endpoint, timedelta(days=3), now=datetime(2026, 11, 4, 12, tzinfo=UTC), key=KEY)
    night(4)
    for region in BACKUP_REGIONS:
        assert after_roll(*clients[region]) == [], region
        assert inconsistencies(*clients[region]) == [], region
    assert restores_to(services, s3_endpoint, target, nights[4], None, tables) == expected[nights[4]]
    assert restores_to(services, s3_endpoint, target, nights[1], None, tables) == without_her(
        expected[nights[1]], pseudonym
    )


def test_an_index_under_a_snapshot_with_an_inline_manifest_changed_or_deleted_outside_lethe_is_kept_for_repair(
    db_url: str, s3_endpoint: str
) -> None:
    """Found from outside: a chain from before index objects (nights 0 and 1, every entry inline) and a night
    after (its entries of night 0's objects in an index under night 0's prefix). An operator's plain delete of
    that index, or a new version over it, and the next nightly propagation (nothing pending) swept night 0's
    prefix, whose manifest reads fine without it: the marker and the one version holding the entries went
    for good, and night 2 with them."""
    policy = incremental_policy()
    tables = tables_of(policy)
    fill_primary(db_url)
    client, bucket = s3_client(REGION, s3_endpoint), BUCKETS.backup(REGION)
    with pytest.MonkeyPatch.context() as patch:  # written as before index objects: every entry inline
        patch.setattr(manifest, "_split", lambda m: None)
        nights_of(db_url, s3_endpoint, policy, tables, NIGHTS[:2], REGION)
    change(db_url, 2)
    take_snapshot(db_url, REGION, s3_endpoint, NIGHTS[2], policy, KEY)
    index = next(k for k in index_refs(client, bucket, NIGHTS[2]) if layout.written_by(k) == NIGHTS[0])
    good = client.get_object(Bucket=bucket, Key=index)["Body"].read()

    def bodies() -> list[bytes]:
        return [
            client.get_object(Bucket=bucket, Key=index, VersionId=v["VersionId"])["Body"].read()
            for v in store.versions(client, bucket, index)
            if not v["DeleteMarker"]
        ]

    other = gzip.compress(json.dumps({"format": manifest.INDEX_FORMAT, "tables": {}}).encode())
    client.put_object(Bucket=bucket, Key=index, Body=other)  # changed outside Lethe
    with pytest.raises(Exception, match=index):
        propagate_region(db_url, REGION, s3_endpoint, key=KEY)
    assert good in bodies()  # what the manifest vouches for is still there to put back
    [changed] = [v for v in store.versions(client, bucket, index) if v["IsLatest"]]
    client.delete_object(Bucket=bucket, Key=index, VersionId=changed["VersionId"])
    assert manifest.read(client, bucket, NIGHTS[2]).snapshot_id == NIGHTS[2]

    marker = client.delete_object(Bucket=bucket, Key=index)["VersionId"]  # deleted outside Lethe
    with pytest.raises(Exception, match=index):
        propagate_region(db_url, REGION, s3_endpoint, key=KEY)
    assert bodies() == [good]
    client.delete_object(Bucket=bucket, Key=index, VersionId=marker)  # what the message says to do
    propagate_region(db_url, REGION, s3_endpoint, key=KEY)
    assert manifest.read(client, bucket, NIGHTS[2]).snapshot_id == NIGHTS[2]
    assert leftovers(client, bucket) == []


def test_a_table_given_a_base_of_its_own_later_does_not_put_every_entry_back_inline(s3_endpoint: str) -> None:
    """Found from outside: a table whose chain starts at a later night (its columns changed: a new base) named
    before a table still on the first base (tables are stored sorted: `accounts` first) made the writers' order
    one no table but the first could be rebuilt from, so every manifest of the chain went back to every entry
    inline, 35 copies of the base's entries rewritten by each erasure, until the first base expired."""
    from test_backup_manifest_index import BASE, LAST, NIGHT, chain, entry, raw

    client, bucket = s3_client(REGION, s3_endpoint), BUCKETS.backup(REGION)
    written = chain([entry(BASE, 0), entry(NIGHT, 0, night=True), entry(LAST, 0, night=True)])
    accounts = written.tables["events"]
    own = [manifest.ObjectEntry(key=layout.object_key(LAST, "accounts", 0), bucket=0, rows=1, bytes=1, sha256="0" * 64)]
    written.tables = {"events": accounts, "accounts": manifest.TableEntry(**{**accounts.__dict__, "objects": own})}
    manifest.write(client, bucket, written)

    stored = raw(client, bucket, layout.manifest_key(LAST))
    assert [layout.written_by(r["key"]) for r in stored.get("index_objects", [])] == [BASE, NIGHT, LAST]
    assert manifest.read(client, bucket, LAST) == written


def test_a_data_object_plainly_deleted_outside_lethe_survives_a_propagation_with_nothing_pending(
    db_url: str, s3_endpoint: str
) -> None:
    """What store.MissingObject tells the operator to do (delete the marker) needs the version behind it: the
    next nightly propagation, with nothing pending, sweeps the snapshot's prefix and deletes both."""
    policy = incremental_policy()
    tables = tables_of(policy)
    fill_primary(db_url)
    client, bucket = s3_client(REGION, s3_endpoint), BUCKETS.backup(REGION)
    nights_of(db_url, s3_endpoint, policy, tables, NIGHTS[:2], REGION)
    gone = manifest.read(client, bucket, NIGHTS[1]).tables["comments"].objects[0].key
    client.delete_object(Bucket=bucket, Key=gone)  # an operator's plain delete
    propagate_region(db_url, REGION, s3_endpoint, key=KEY)  # nothing pending: the nightly run
    assert [v for v in store.versions(client, bucket, gone) if not v["DeleteMarker"]]


def test_the_restore_drill_of_a_region_with_an_unreadable_manifest_still_drills_and_reports(
    db_url: str, s3_endpoint: str
) -> None:
    """Found from outside: the drill listed the region's snapshots by reading every manifest, so one index object
    deleted outside Lethe (the newest night's own) made the whole drill raise, nothing restored, nothing recorded."""
    from lethe.audit import drill, scratch

    policy = incremental_policy()
    fill_primary(db_url)
    client, bucket = s3_client(REGION, s3_endpoint), BUCKETS.backup(REGION)
    nights_of(db_url, s3_endpoint, policy, tables_of(policy), NIGHTS[:2], REGION)
    own = next(k for k in index_refs(client, bucket, NIGHTS[1]) if layout.written_by(k) == NIGHTS[1])
    client.delete_object(Bucket=bucket, Key=own)  # an operator's plain delete

    with pytest.MonkeyPatch.context() as patch:  # the restored database's checks need the whole platform: not here
        patch.setattr(drill, "check_restored", lambda *args: {})
        counts, where, details = drill.drill_region(db_url, s3_endpoint, KEY, REGION, scratch.default_name(db_url))
    assert counts["restore_failed.oldest"] == 0, details
    assert counts["restore_failed.newest"] == 1, details
    assert NIGHTS[1] in where["restore_failed.newest"]
