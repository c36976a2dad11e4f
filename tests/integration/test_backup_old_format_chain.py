"""An incremental chain begun by the release before cee2d5b and continued by this one, against a real PostgreSQL and
S3 over HTTP.

That release wrote every backup object with the serialised Arrow schema in its Parquet footer (the pseudonym column
then reads back dictionary-encoded); this one writes none (frames._PARQUET_OPTIONS store_schema=False). The chain's
base and first delta are written here the old way (the one option set back, the only difference between the two
writers), the later nights the new way: propagation rewrites old and new objects, the audit reads both, expiry rolls
the mixed chain into a base, and every night restores to what the primary held, read with plain SQL. The store is
read raw with boto3 and pyarrow, never through Lethe's readers.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow.parquet as pq
import pytest
from lethe.audit.backups import audit_region, tombstones
from lethe.backup import frames, layout, store
from lethe.backup.expiry import expire_region
from lethe.backup.manifest import read as read_manifest
from lethe.backup.mentions import MentionFinder
from lethe.backup.propagate import propagate_region
from lethe.backup.snapshot import take_snapshot
from lethe.config import BUCKETS
from lethe.pseudonym import subject_pseudonym
from lethe.storage import s3_client
from test_backup import erase
from test_backup_incremental import (
    KEY,
    NIGHTS,
    REGION,
    change_a_night,
    contents,
    fill,
    incremental_policy,
    restored,
    tables_of,
)

pytestmark = pytest.mark.integration

HER = 2  # in the old base, the old delta (usage_events) and the new deltas (her account's name on night 2)
OLD_NIGHTS = NIGHTS[:2]


def current_objects(s3: str) -> dict[str, tuple[bool, Any]]:
    """Every current data object of the region: key -> (its footer holds an Arrow schema, its rows as pyarrow reads
    them)."""
    client = s3_client(REGION, s3)
    bucket = BUCKETS.backup(REGION)
    found = {}
    for v in store.versions(client, bucket, layout.SNAPSHOT_PREFIX):
        if v["DeleteMarker"] or not v["IsLatest"] or "/data/" not in v["Key"] or not v["Key"].endswith(".parquet"):
            continue
        body = client.get_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])["Body"].read()
        footer = pq.ParquetFile(io.BytesIO(body)).metadata.metadata or {}
        found[v["Key"]] = (b"ARROW:schema" in footer, pq.read_table(io.BytesIO(body)))
    return found


def without_her(held: dict[str, Counter[str]]) -> dict[str, Counter[str]]:
    """A night's rows as its restore must give them after her erasure (her rows in these tables deleted)."""
    return {t: Counter({r: n for r, n in c.items() if json.loads(r).get("user_id") != HER}) for t, c in held.items()}


def audit(db_url: str, s3: str) -> dict[str, int]:
    found = tombstones(db_url)
    finder = MentionFinder(KEY, frozenset(found.identifiers_at), found.prefilter)
    counts, _ = audit_region(REGION, s3, found, datetime.now(UTC), timedelta(days=3650), finder, None, 10_000)
    return counts


def test_a_chain_begun_with_arrow_schemas_erases_audits_rolls_and_restores(
    db_url: str, s3_endpoint: str, services: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = incremental_policy()
    tables = tables_of(policy)
    fill(db_url)
    expected = {}
    for n, sid in enumerate(NIGHTS):
        if n:
            change_a_night(db_url, n)
        expected[sid] = contents(db_url, tables)
        with monkeypatch.context() as old:
            if sid in OLD_NIGHTS:  # the previous release's writer
                old.setitem(frames._PARQUET_OPTIONS, "store_schema", True)
            take_snapshot(db_url, REGION, s3_endpoint, sid, policy, KEY)
    before = current_objects(s3_endpoint)
    assert {k.split("/")[1] for k, (schema, _) in before.items() if schema} == set(OLD_NIGHTS)
    assert {k.split("/")[1] for k, (schema, _) in before.items() if not schema} == set(NIGHTS[2:])
    assert read_manifest(s3_client(REGION, s3_endpoint), BUCKETS.backup(REGION), NIGHTS[-1]).incremental
    mine = subject_pseudonym(KEY, HER)
    held_by = {
        sid: sum(
            t.column(layout.SUBJECT_COLUMN).to_pylist().count(mine) for k, (_, t) in before.items() if f"/{sid}/" in k
        )
        for sid in NIGHTS
    }
    assert held_by[NIGHTS[0]] and held_by[NIGHTS[1]] and held_by[NIGHTS[2]]  # her rows in old and new objects

    erase(db_url, HER)
    assert audit(db_url, s3_endpoint)["tombstones_not_applied"] > 0  # the audit finds her in the old objects
    propagate_region(db_url, REGION, s3_endpoint, key=KEY)
    assert not any(audit(db_url, s3_endpoint).values())
    after = current_objects(s3_endpoint)
    for key, (_, rows) in after.items():
        assert mine not in rows.column(layout.SUBJECT_COLUMN).to_pylist(), key
        for name in ("user_id", "email", "username"):
            if name in rows.column_names:
                assert not {HER, f"user{HER}@example.test", f"user{HER}"} & set(rows.column(name).to_pylist()), key
    for sid in NIGHTS:
        assert restored(services, s3_endpoint, REGION, sid, tables) == without_her(expected[sid]), sid

    # Expiry rolls the chain of night 3 (the old base, the old delta, a new delta) into a base of night 3.
    done = expire_region(db_url, REGION, s3_endpoint, timedelta(days=1), datetime(2026, 11, 4, 1, tzinfo=UTC), key=KEY)
    assert done["expired_snapshots"] == 2 and done["snapshots_rolled"] == 1
    rolled = current_objects(s3_endpoint)
    assert {k.split("/")[1] for k in rolled} == set(NIGHTS[2:])
    assert not any(schema for schema, _ in rolled.values())
    for sid in NIGHTS[2:]:
        assert restored(services, s3_endpoint, REGION, sid, tables) == without_her(expected[sid]), sid
