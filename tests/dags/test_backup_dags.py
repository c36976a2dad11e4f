"""Backups end to end with dag.test(): seed, backup_nightly, subject_erasure, backup_erasure_propagation.

Expected outcomes are computed here from the seeded rows and HMACs from the
standard library; every version of every object in both regions is read back.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import socket
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg2
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.dags

REGIONS = ("us-east-1", "ap-southeast-1")


def _key() -> bytes:
    return json.loads(os.environ["AIRFLOW_CONN_LETHE_PSEUDONYM_KEY"])["password"].encode()


def _pseudonym(user_id: int) -> str:
    return hmac.new(_key(), f"user_id:{user_id}".encode(), hashlib.sha256).hexdigest()


def _query(url: str, q: str, args: Any = None) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(q, args)
            return cur.fetchall()
    finally:
        conn.close()


def _people_without_holds(url: str, n: int) -> list[int]:
    rows = _query(
        url,
        "SELECT user_id FROM accounts a"
        " WHERE NOT EXISTS (SELECT 1 FROM legal_holds h WHERE h.subject_key = a.user_id::text)"
        " AND NOT EXISTS (SELECT 1 FROM disputes d WHERE d.user_id = a.user_id)"
        " AND EXISTS (SELECT 1 FROM invoices i WHERE i.user_id = a.user_id) ORDER BY user_id LIMIT %s",
        (n,),
    )
    return [r[0] for r in rows]


def _bucket(region: str) -> str:
    from lethe.config import BUCKETS

    return BUCKETS.backup(region)


def _objects(s3: str, region: str, *, latest_only: bool = False) -> list[tuple[str, Any]]:
    from lethe.storage import s3_client

    client = s3_client(region, s3)
    found = []
    pages = client.get_paginator("list_object_versions").paginate(Bucket=_bucket(region), Prefix="snapshots/")
    for page in pages:
        for v in page.get("Versions", []):
            if v["Key"].endswith(".parquet") and (v["IsLatest"] or not latest_only):
                body = client.get_object(Bucket=_bucket(region), Key=v["Key"], VersionId=v["VersionId"])["Body"].read()
                found.append((v["Key"], pq.read_table(io.BytesIO(body))))
    return found


def _rows_per_person(objects: list[tuple[str, Any]]) -> Counter[tuple[str, int]]:
    counts: Counter[tuple[str, int]] = Counter()
    for key, table in objects:
        if "user_id" in table.column_names:
            name = key.split("/data/")[1].split("/")[0]
            for user_id in table.column("user_id").to_pylist():
                if user_id is not None:
                    counts[(name, user_id)] += 1
    return counts


def _erase(user_id: int) -> None:
    from lethe.dagrun import run_dag

    run_dag("subject_erasure", {"identifier_kind": "user_id", "identifier": str(user_id), "dry_run": False})


def _run_without_retries(dag_id: str) -> Any:
    """dag.test() with retries off, so a failed task fails the run now instead of waiting for its retry."""
    from lethe.dagrun import load_dag

    dag = load_dag(dag_id)
    for task in dag.tasks:
        if hasattr(task, "partial_kwargs"):
            task.partial_kwargs["retries"] = 0
        else:
            task.retries = 0
    return dag.test()


def _states(run: Any) -> dict[str, str]:
    return {
        f"{ti.task_id}[{ti.map_index}]": str(getattr(ti.state, "value", ti.state)) for ti in run.get_task_instances()
    }


@pytest.fixture
def seeded(db_url: str, s3_endpoint: str, airflow_home: Path) -> str:
    from lethe.seed import seed

    seed(db_url, 60)
    return db_url


def _current_bytes(s3: str, region: str) -> dict[str, bytes]:
    """key -> bytes of the current version of every object in the region's backup bucket."""
    from lethe.storage import s3_client

    client = s3_client(region, s3)
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=_bucket(region), Prefix="snapshots/"):
        for o in page.get("Contents", []):
            found[o["Key"]] = client.get_object(Bucket=_bucket(region), Key=o["Key"])["Body"].read()
    return found


def test_backup_nightly_reads_the_primary_once_and_copies_the_objects_to_the_second_region(
    seeded: str, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lethe.backup.snapshot import new_snapshot_id, take_snapshot
    from lethe.policy import load_policy
    from lethe.testing import primary_reads

    before = primary_reads(seeded)[0]
    run = _run_without_retries("backup_nightly")
    night = primary_reads(seeded)[0] - before
    assert _states(run) == {
        "plan[-1]": "success",
        "export_snapshot[-1]": "success",
        "copy_snapshot[0]": "success",
        "expire_region[0]": "success",
        "expire_region[1]": "success",
        "hand_over[-1]": "skipped",  # no erasure waits for the backups
    }
    first, second = _current_bytes(s3_endpoint, REGIONS[0]), _current_bytes(s3_endpoint, REGIONS[1])
    data = sorted(k for k in first if k.endswith(".parquet"))
    assert data and data == sorted(k for k in second if k.endswith(".parquet"))
    assert all(first[k] == second[k] for k in data)
    manifests = [json.loads(b[k]) for b in (first, second) for k in b if k.endswith("manifest.json")]
    assert [m["region"] for m in manifests] == list(REGIONS)
    assert manifests[0]["tables"] == manifests[1]["tables"]  # same objects, sha256 and term indexes
    # One export's reads, for the whole night: the same export once more, alone, reads as many rows.
    alone = primary_reads(seeded)[0]
    take_snapshot(seeded, REGIONS[0], s3_endpoint, new_snapshot_id(), load_policy(), _key())
    assert night == primary_reads(seeded)[0] - alone > 0

    # The export fails (its region is unreachable): nothing is copied, no snapshot appears in the second region.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setenv("LETHE_BACKUP_ENDPOINT_US_EAST_1", f"http://127.0.0.1:{closed}")
    known = set(_current_bytes(s3_endpoint, REGIONS[1]))
    run = _run_without_retries("backup_nightly")
    states = _states(run)
    assert states["export_snapshot[-1]"] == "failed"
    assert states["copy_snapshot[0]"] == "upstream_failed"
    assert set(_current_bytes(s3_endpoint, REGIONS[1])) == known


def test_snapshot_erase_propagate_leaves_no_version_of_the_person_in_either_region(
    seeded: str, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lethe.backup.demo import summary
    from lethe.dagrun import run_dag

    run_dag("backup_nightly")
    before = {r: _rows_per_person(_objects(s3_endpoint, r, latest_only=True)) for r in REGIONS}
    person, second = _people_without_holds(seeded, 2)
    assert any(uid == person for (_, uid) in before["us-east-1"])
    _erase(person)
    request_id = _query(seeded, "SELECT request_id::text FROM erasure_tombstones")[0][0]

    run_dag("backup_erasure_propagation")

    for region in REGIONS:
        versions = _objects(s3_endpoint, region)
        after = _rows_per_person(versions)
        assert not [k for k in after if k[1] == person], f"{region}: a version still holds the erased person"
        assert not any(_pseudonym(person) in t.column("_lethe_subject").to_pylist() for _, t in versions)
        # everyone else's rows, table by table, exactly as before (and no old versions doubling them)
        assert after == Counter({k: n for k, n in before[region].items() if k[1] != person})
    status = _query(seeded, "SELECT region, status, objects_rewritten > 0 FROM backup_propagation_status ORDER BY 1")
    assert status == [("ap-southeast-1", "applied", True), ("us-east-1", "applied", True)]

    from lethe.config import BUCKETS, PRIMARY_REGION
    from lethe.storage import s3_client

    evidence = s3_client(PRIMARY_REGION, s3_endpoint)
    cert = json.loads(
        evidence.get_object(Bucket=BUCKETS.evidence, Key=f"certificates/{request_id}.json")["Body"].read()
    )
    for region in REGIONS:
        entry = cert["backup_propagation"][region]
        assert entry["status"] == "applied" and entry["objects_rewritten"] > 0 and entry["bytes_rewritten"] > 0
    markdown = evidence.get_object(Bucket=BUCKETS.evidence, Key=f"certificates/{request_id}.md")["Body"].read()
    assert b"applied" in markdown
    lines = summary(seeded, s3_endpoint)
    assert any("us-east-1: snapshot" in line and "propagation rewrote" in line for line in lines)

    # One region unreachable: its task fails naming it, the other region's work is done and recorded.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setenv("LETHE_BACKUP_ENDPOINT_AP_SOUTHEAST_1", f"http://127.0.0.1:{closed}")
    _erase(second)
    run = _run_without_retries("backup_erasure_propagation")
    states = _states(run)
    assert states["ap-southeast-1.plan[-1]"] == "failed"
    assert states["ap-southeast-1.finish[-1]"] == "upstream_failed"
    # the reachable region: one task per snapshot (one snapshot here), then finish
    assert {t: v for t, v in states.items() if t.startswith("us-east-1.")} == {
        "us-east-1.plan[-1]": "success",
        "us-east-1.propagate_snapshot[0]": "success",
        "us-east-1.finish[-1]": "success",
    }
    p2 = _pseudonym(second)
    rows = _query(seeded, "SELECT region FROM backup_propagation_status WHERE subject_pseudonym = %s", (p2,))
    assert rows == [("us-east-1",)]
    assert not [k for k in _rows_per_person(_objects(s3_endpoint, "us-east-1")) if k[1] == second]
    assert [k for k in _rows_per_person(_objects(s3_endpoint, "ap-southeast-1")) if k[1] == second]

    monkeypatch.delenv("LETHE_BACKUP_ENDPOINT_AP_SOUTHEAST_1")
    run_dag("backup_erasure_propagation")  # the rerun finishes the region that was down
    assert not [k for k in _rows_per_person(_objects(s3_endpoint, "ap-southeast-1")) if k[1] == second]
    rows = _query(seeded, "SELECT region, status FROM backup_propagation_status WHERE subject_pseudonym = %s", (p2,))
    assert sorted(rows) == [("ap-southeast-1", "applied"), ("us-east-1", "applied")]


def test_propagation_maps_one_task_per_snapshot_and_a_region_without_snapshots_still_finishes(
    seeded: str, s3_endpoint: str
) -> None:
    from lethe.backup.snapshot import take_snapshot
    from lethe.policy import load_policy

    snapshots = ["20261101T020000Z", "20261102T020000Z"]
    for sid in snapshots:  # two nights in the first region, none in the second
        take_snapshot(seeded, REGIONS[0], s3_endpoint, sid, load_policy(), _key())
    from lethe.storage import s3_client

    person = _people_without_holds(seeded, 1)[0]
    assert sum(1 for (_, uid), n in _rows_per_person(_objects(s3_endpoint, REGIONS[0])).items() if uid == person)
    leftover = "snapshots/20261103T020000Z/data/accounts/bucket=00.parquet"  # a killed backup's, no manifest
    s3_client(REGIONS[0], s3_endpoint).put_object(Bucket=_bucket(REGIONS[0]), Key=leftover, Body=b"half")
    _erase(person)

    run = _run_without_retries("backup_erasure_propagation")
    assert leftover not in _current_bytes(s3_endpoint, REGIONS[0])
    ledger = _query(
        seeded, "SELECT payload FROM ledger WHERE kind = 'backup_propagation' ORDER BY entry_id DESC LIMIT 2"
    )
    removed = {p["region"]: p["incomplete_snapshots_removed"] for (p,) in ledger}
    assert removed == {REGIONS[0]: 1, REGIONS[1]: 0}
    labels = {
        ti.map_index: ti.rendered_map_index
        for ti in run.get_task_instances()
        if ti.task_id == "us-east-1.propagate_snapshot"
    }
    assert labels == {0: snapshots[0], 1: snapshots[1]}  # one task per snapshot, named by it in the grid
    states = _states(run)
    assert all(v == "success" for t, v in states.items() if t.startswith("us-east-1.")), states
    assert states["ap-southeast-1.propagate_snapshot[-1]"] == "skipped"  # nothing to map over
    assert states["ap-southeast-1.finish[-1]"] == "success"

    # Read back independently: no version of either snapshot holds the person, everyone else is still there.
    versions = _objects(s3_endpoint, REGIONS[0])
    for sid in snapshots:
        mine = [(k, t) for k, t in versions if k.startswith(f"snapshots/{sid}/")]
        assert mine and not [k for k in _rows_per_person(mine) if k[1] == person], sid
        assert len({k[1] for k in _rows_per_person(mine)}) == 59, sid
    status = _query(
        seeded,
        "SELECT region, status, snapshots FROM backup_propagation_status WHERE subject_pseudonym = %s ORDER BY 1",
        (_pseudonym(person),),
    )
    assert status == [("ap-southeast-1", "applied", 0), ("us-east-1", "applied", 2)]


def _asset_events(run: Any) -> set[str]:
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    with create_session() as session:
        return {e.uri for e in session.query(AssetEvent).filter(AssetEvent.source_run_id == run.run_id)}


def test_a_backup_holding_a_person_erased_while_it_was_written_starts_their_propagation(
    seeded: str, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A person erased (and propagated) while the night's export runs is in the new snapshots: backup_nightly
    hands over to backup_erasure_propagation at once instead of leaving them there until 03:30."""
    from airflow.models.asset import AssetDagRunQueue
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from lethe.assets import BACKUP_ERASURES_UNAPPLIED_URI
    from lethe.backup import store
    from lethe.backup.propagate import propagate_region
    from lethe.dagrun import run_dag
    from lethe.db import transaction
    from lethe.testing import insert_tombstones

    run = _run_without_retries("backup_nightly")
    assert _states(run)["hand_over[-1]"] == "skipped"
    assert BACKUP_ERASURES_UNAPPLIED_URI not in _asset_events(run)
    run_dag("backup_erasure_propagation")  # known to Airflow's database as the asset's consumer, then unpaused
    with create_session() as session:
        session.query(DagModel).filter(DagModel.dag_id == "backup_erasure_propagation").update({"is_paused": False})

    person = _people_without_holds(seeded, 1)[0]
    real_put = store.put_file
    erased = threading.Lock()

    def erase_and_propagate_mid_export(*args: Any, **kwargs: Any) -> str:
        if erased.acquire(blocking=False):  # the first object of the export: its rows are read, she is in them
            with transaction(seeded) as cur:
                insert_tombstones(cur, _key(), [person])
            for region in REGIONS:  # her erasure's own propagation, into last night's snapshots
                propagate_region(seeded, region, s3_endpoint, key=_key())
        return real_put(*args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(store, "put_file", erase_and_propagate_mid_export)
        run = _run_without_retries("backup_nightly")
    assert erased.locked()
    states = _states(run)
    assert states["export_snapshot[-1]"] == states["copy_snapshot[0]"] == "success"
    assert states["hand_over[-1]"] == "success"
    assert BACKUP_ERASURES_UNAPPLIED_URI in _asset_events(run)
    with create_session() as session:
        queued = {q.target_dag_id for q in session.query(AssetDagRunQueue)}
    assert "backup_erasure_propagation" in queued  # what the scheduler turns into a run
    status = "SELECT region, status FROM backup_propagation_status WHERE subject_pseudonym = %s ORDER BY 1"
    assert _query(seeded, status, (_pseudonym(person),)) == [("ap-southeast-1", "pending"), ("us-east-1", "pending")]
    for region in REGIONS:  # tonight's snapshot holds her in both regions
        assert [k for k in _rows_per_person(_objects(s3_endpoint, region, latest_only=True)) if k[1] == person]

    run_dag("backup_erasure_propagation")  # the run the hand-over queued
    for region in REGIONS:
        assert not [k for k in _rows_per_person(_objects(s3_endpoint, region)) if k[1] == person], region
    assert _query(seeded, status, (_pseudonym(person),)) == [("ap-southeast-1", "applied"), ("us-east-1", "applied")]
    run = _run_without_retries("backup_nightly")  # her tombstone is honoured by the export: nothing to hand over
    assert _states(run)["hand_over[-1]"] == "skipped"


def test_what_the_policy_keeps_of_an_erased_persons_invoices_stays_in_later_snapshots_and_restores(
    seeded: str, s3_endpoint: str, services: tuple[str, str]
) -> None:
    """Found from outside: an erased person's invoices keep billing_name on the primary (kept as issued), and
    every later snapshot exported it; the audit counted it as a mention left in the backups on every night after,
    and a restore redacted it, so a restored tax record differed from the primary's."""
    from datetime import UTC, datetime

    from lethe import testing
    from lethe.audit.backups import check_backups
    from lethe.backup.restore import restore_snapshot
    from lethe.dagrun import run_dag

    person = _people_without_holds(seeded, 1)[0]
    _erase(person)
    kept = dict(
        _query(
            seeded, "SELECT invoice_id, billing_name FROM invoices WHERE subject_pseudonym = %s", (_pseudonym(person),)
        )
    )
    assert kept and all(kept.values())  # pseudonymised, the recipient's name kept as issued
    run_dag("backup_nightly")
    for region in REGIONS:  # the raw Parquet holds the tax records as the primary does
        exported = {}
        for key, table in _objects(s3_endpoint, region, latest_only=True):
            if "/data/invoices/" in key:
                ids, names = table.column("invoice_id").to_pylist(), table.column("billing_name").to_pylist()
                exported.update(zip(ids, names, strict=True))
        assert {i: exported.get(i) for i in kept} == kept, region
    failed = check_backups(seeded, s3_endpoint, _key(), datetime.now(UTC), sample=0).failed
    assert not [f for f in failed if f.startswith("erased_mentions_left")], failed

    [(sid,)] = _query(seeded, "SELECT snapshot_id FROM lethe.backup_snapshots WHERE region = %s", (REGIONS[1],))
    target = testing.fresh_database(services[0])
    try:
        restore_snapshot(sid, REGIONS[1], target, endpoint_url=s3_endpoint, key=_key(), primary_url=seeded)
        restored = dict(
            _query(target, "SELECT invoice_id, billing_name FROM invoices WHERE invoice_id = ANY(%s)", (list(kept),))
        )
        assert restored == kept
    finally:
        testing.drop_database(target)
