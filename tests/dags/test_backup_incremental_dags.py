"""Incremental backups through the real DAGs (dag.test()): two nights of backup_nightly with
`backups: {incremental: true}` in the policy file, an erasure, its propagation, the audit and a restore.

The rows expected are read from the primary with plain SQL, the objects with boto3 and raw Parquet.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg2
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.dags

REGIONS = ("us-east-1", "ap-southeast-1")
POLICY = Path(__file__).resolve().parents[2] / "include" / "lethe" / "policy" / "reskill.yaml"


def _key() -> bytes:
    return json.loads(os.environ["AIRFLOW_CONN_LETHE_PSEUDONYM_KEY"])["password"].encode()


def _query(url: str, q: str, args: Any = None) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(q, args)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def _contents(url: str, tables: list[str]) -> dict[str, Counter[str]]:
    return {t: Counter(r[0] for r in _query(url, f"SELECT to_jsonb(t)::text FROM {t} t")) for t in tables}  # noqa: S608


def _versions(s3: str, region: str) -> list[tuple[str, int, Any]]:
    """(key, size, Arrow table) of every version of every data object in the region."""
    from lethe.config import BUCKETS
    from lethe.storage import s3_client

    client, bucket = s3_client(region, s3), BUCKETS.backup(region)
    found = []
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix="snapshots/"):
        for v in page.get("Versions", []):
            if v["Key"].endswith(".parquet"):
                body = client.get_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])["Body"].read()
                found.append((v["Key"], int(v["Size"]), pq.read_table(io.BytesIO(body))))
    return found


@pytest.fixture
def incremental(
    db_url: str, s3_endpoint: str, airflow_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    import own_schema
    from lethe.seed import seed

    text = POLICY.read_text()
    policy = tmp_path / "policy.yaml"
    policy.write_text(re.sub(r"^backups: \{(.*)\}$", r"backups: {\1, incremental: true}", text, count=1, flags=re.M))
    assert "incremental: true" in policy.read_text()
    own_schema.as_primary(monkeypatch, db_url, policy)
    seed(db_url, 60)
    return db_url


def test_two_incremental_nights_an_erasure_and_a_restore_through_the_dags(
    incremental: str, s3_endpoint: str, services: tuple[str, str]
) -> None:
    from lethe import testing
    from lethe.backup.restore import restore_snapshot
    from lethe.dagrun import run_dag
    from lethe.policy import load_policy

    url = incremental
    tables = [t for t, rule in load_policy().tables.items() if rule.backup]
    run_dag("backup_nightly")
    [(first,)] = _query(url, "SELECT snapshot_id FROM lethe.backup_snapshots WHERE region = %s", (REGIONS[0],))
    # a night of the platform: edits, new rows, a person who leaves (the erasure below is another)
    _query(url, "UPDATE comments SET body = body || ' (edited)' WHERE comment_id % 10 = 3")
    _query(url, "UPDATE accounts SET city = 'Pune' WHERE user_id % 9 = 2")
    person = _query(
        url,
        "SELECT user_id FROM accounts a WHERE NOT EXISTS (SELECT 1 FROM legal_holds h WHERE h.subject_key ="
        " a.user_id::text) AND NOT EXISTS (SELECT 1 FROM disputes d WHERE d.user_id = a.user_id) AND EXISTS"
        " (SELECT 1 FROM comments c WHERE c.user_id = a.user_id) ORDER BY user_id LIMIT 1",
    )[0][0]
    _query(url, "UPDATE comments SET body = body || ' again' WHERE user_id = %s", (person,))  # in the delta too
    time.sleep(1.1)  # snapshot ids have a second's resolution
    run_dag("backup_nightly")
    second = max(r[0] for r in _query(url, "SELECT snapshot_id FROM lethe.backup_snapshots"))
    assert second != first

    for region in REGIONS:
        versions = _versions(s3_endpoint, region)
        first_bytes = sum(size for key, size, _ in versions if key.startswith(f"snapshots/{first}/"))
        second_bytes = sum(size for key, size, _ in versions if key.startswith(f"snapshots/{second}/"))
        assert 0 < second_bytes < first_bytes / 4, region  # the second night stored its changes only

    run_dag("subject_erasure", {"identifier_kind": "user_id", "identifier": str(person), "dry_run": False})
    run_dag("backup_erasure_propagation")

    for region in REGIONS:
        versions = _versions(s3_endpoint, region)
        held = [k for k, _, t in versions if "user_id" in t.column_names and person in t.column("user_id").to_pylist()]
        assert not held, f"{region}: versions still holding the erased person: {held}"
        assert {"applied"} == {
            r[0] for r in _query(url, "SELECT status FROM lethe.backup_propagation_status WHERE region = %s", (region,))
        }
    expected = _contents(url, tables)
    target = testing.fresh_database(services[0])
    try:
        restore_snapshot(second, REGIONS[1], target, endpoint_url=s3_endpoint, key=_key(), primary_url=url)
        restored = _contents(target, tables)
    finally:
        testing.drop_database(target)
    # the primary's rows of tonight (but Lethe's own bookkeeping the restore adds): nobody erased comes back
    for table in tables:
        assert restored[table] == expected[table], table
