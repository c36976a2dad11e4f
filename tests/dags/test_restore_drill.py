"""compliance_audit's weekly restore drill, end to end with dag.test().

Two snapshots around an erasure that was propagated: the drill restores the oldest and the newest
of one region into a scratch database and its checks pass; a second audit within the week skips it;
an erased person planted in a snapshot object (written here with boto3 and pyarrow, the manifest
made to vouch for it) makes it fail, and the failed drill is retried at the next audit.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import erasure_people as people
import psycopg2
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from lethe.config import BUCKETS
from lethe.storage import s3_client

pytestmark = pytest.mark.dags

REGION = "us-east-1"  # the first backup region: the one a first drill picks
SUBJECT = "_lethe_subject"  # the pseudonym column every snapshot object carries beside the row
CHECKS = ("restore_failed", "erased_rows", "erased_found_by_value", "orphan_rows", "foreign_keys_missing")


def _query(url: str, q: str, args: Any = None) -> list[tuple[Any, ...]]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(q, args)
        return cur.fetchall()


def _drill_checks(url: str) -> dict[str, dict[str, Any]]:
    ((results,),) = _query(url, "SELECT results FROM lethe.audit_runs ORDER BY audited_at DESC LIMIT 1")
    return {c["name"]: c for r in results if r["suite"] == "restore_drill" for c in r["checks"]}


def _audit(conf: dict[str, Any] | None = None) -> None:
    from lethe.dagrun import DagRunFailed, run_dag

    # retention_nightly never ran here, so the audit's retention.stale checks fail; the drill's are read apart
    with contextlib.suppress(DagRunFailed):
        run_dag("compliance_audit", conf)


def _snapshots(client: Any) -> list[str]:
    """Complete snapshots (those with a manifest), oldest first, as listed here."""
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKETS.backup(REGION), Prefix="snapshots/")["Contents"]]
    return sorted(k.split("/")[1] for k in keys if k.endswith("/manifest.json"))


def _scratch_databases(url: str) -> list[str]:
    return [n for (n,) in _query(url, "SELECT datname FROM pg_database WHERE datname LIKE '%%restore_drill%%'")]


def _get(client: Any, key: str) -> bytes:
    return bytes(client.get_object(Bucket=BUCKETS.backup(REGION), Key=key)["Body"].read())


def _plant_asha(client: Any, newest: str) -> None:
    """Asha's account row (propagation took her out of every snapshot) written back into the newest
    snapshot's accounts object without its pseudonym, as a faulty writer would, the manifest updated to match."""
    bucket = BUCKETS.backup(REGION)
    listed = client.list_objects_v2(Bucket=bucket, Prefix=f"snapshots/{newest}/data/accounts/")["Contents"]
    target = sorted(o["Key"] for o in listed)[0]
    rows = pq.read_table(io.BytesIO(_get(client, target)))
    i = rows.column_names.index(SUBJECT)
    rows = rows.set_column(i, SUBJECT, rows.column(i).cast(pa.string()))
    assert people.ASHA["user_id"] not in rows["user_id"].to_pylist()  # erasure and propagation left her out
    asha = rows.slice(0, 1).to_pylist()[0]
    asha.update(
        user_id=people.ASHA["user_id"],
        name=people.ASHA["username"].title(),
        username=people.ASHA["username"],
        email=people.ASHA["email"],
        phone=people.ASHA["phone"],
        **{SUBJECT: None},
    )
    planted = pa.concat_tables([rows, pa.Table.from_pylist([asha], schema=rows.schema)])
    out = io.BytesIO()
    pq.write_table(planted, out, compression="zstd")
    body = out.getvalue()
    client.put_object(Bucket=bucket, Key=target, Body=body)

    manifest_key = f"snapshots/{newest}/manifest.json"
    manifest = json.loads(_get(client, manifest_key))
    entry = manifest["tables"]["accounts"]
    obj = next(o for o in entry["objects"] if o["key"] == target)
    obj.update(rows=obj["rows"] + 1, bytes=len(body), sha256=hashlib.sha256(body).hexdigest())
    entry["rows"] += 1
    client.put_object(Bucket=bucket, Key=manifest_key, Body=json.dumps(manifest).encode())


def test_the_weekly_drill_restores_oldest_and_newest_skips_within_the_week_and_fails_on_a_planted_person(
    db_url: str, s3_endpoint: str, airflow_home: Path
) -> None:
    from lethe.dagrun import run_dag

    people.insert_people(db_url)
    run_dag("backup_nightly")  # the oldest snapshot: Asha is in it
    run_dag("subject_erasure", {"identifier_kind": "email", "identifier": people.ASHA["email"], "dry_run": False})
    run_dag("backup_erasure_propagation")
    run_dag("backup_nightly")  # the newest: taken after her erasure
    client = s3_client(REGION, s3_endpoint)
    snapshots = _snapshots(client)
    assert len(snapshots) == 2
    oldest, newest = snapshots

    _audit()
    checks = _drill_checks(db_url)
    assert sorted(checks) == sorted(f"{c}.{w}" for c in CHECKS for w in ("oldest", "newest"))
    assert all(c["success"] and c["observed"] == 0 for c in checks.values()), checks
    assert checks["erased_rows.oldest"]["where"] == f"region {REGION}, snapshot {oldest}"
    assert checks["erased_rows.newest"]["where"] == f"region {REGION}, snapshot {newest}"
    # Both were really restored (rows loaded, the tombstone replayed into the pre-erasure one), then dropped.
    assert checks["erased_rows.oldest"]["details"]["rows_loaded"] > 20
    assert checks["erased_rows.oldest"]["details"]["tombstones_replayed"] == 1
    assert checks["erased_rows.newest"]["details"]["rows_loaded"] > 20
    assert _scratch_databases(db_url) == []
    assert _query(db_url, "SELECT region, snapshots, success FROM lethe.restore_drills") == [
        (REGION, [oldest, newest], True)
    ]

    # A second audit within the week skips the drill, naming the last one.
    _audit()
    ((drilled_at,),) = _query(db_url, "SELECT finished_at FROM lethe.restore_drills")
    checks = _drill_checks(db_url)
    assert list(checks) == ["skipped"] and checks["skipped"]["success"]
    assert f"last drill passed {drilled_at:%Y-%m-%d}" in checks["skipped"]["where"]
    assert _query(db_url, "SELECT count(*) FROM lethe.restore_drills") == [(1,)]

    # An erased person planted in the newest snapshot: forced now, the drill fails on that snapshot only.
    _plant_asha(client, newest)
    _audit({"restore_drill_days": 0, "restore_drill_region": REGION})
    checks = _drill_checks(db_url)
    failed = sorted(name for name, c in checks.items() if not c["success"])
    # (the restore redacts her identifiers in the row's text columns; her link to herself is what is left)
    assert {"restore_failed.newest", "erased_rows.newest"} <= set(failed)
    assert not [name for name in failed if name.endswith(".oldest")]
    assert "rows of erased people" in checks["restore_failed.newest"]["details"]["restore_error"]
    ((failed_runs,),) = _query(db_url, "SELECT failed FROM lethe.audit_runs ORDER BY audited_at DESC LIMIT 1")
    assert "restore_drill.erased_rows.newest" in failed_runs
    assert _scratch_databases(db_url) == []
    # The failed drill is not a reason to wait a week: the next audit drills again (left to itself it would
    # take the other region, drilled longest ago: pinned here to the planted one).
    _audit({"restore_drill_region": REGION})
    assert not _drill_checks(db_url)["erased_rows.newest"]["success"]
    assert _query(db_url, "SELECT success FROM lethe.restore_drills ORDER BY drill_id") == [(True,), (False,), (False,)]
    # Nothing of Asha's in what the drill kept: counts and names only.
    kept = json.dumps(_query(db_url, "SELECT counts FROM lethe.restore_drills"))
    kept += json.dumps(_drill_checks(db_url), default=str)
    for value in (people.ASHA["email"], people.ASHA["username"], "9000000001", "Asha"):
        assert value.lower() not in kept.lower()
