"""Peak memory of a worker's backup steps at scale: the snapshot export and the propagation of erasures.

Each step runs in a fresh child process (`python bench/memory.py --step STEP ...`) that reports its own
peak resident memory (`getrusage` ru_maxrss) and wall time, against the issue's line of 512 MiB whatever
the table sizes. The anchor in the same run is a child that imports the same modules, connects to the
database and S3, and does nothing else: the part of the peak no step can shed.

Steps, on the database `lethe bench erasure --users N` seeds (`--database`, reused as it is):
1. export: `take_snapshot` of every backed-up table into one region's bucket (embedded S3 over HTTP);
2. one: one person's tombstone (with the keyed pseudonyms of their identifiers, so free-text objects whose
   term index may hold them are searched too) propagated into that snapshot;
3. many: `--tombstones` more in one propagation run.
With `--incremental` (the policy's backups.incremental on), the steps are a chain of two nights:
1. export: the base snapshot;
2. change: 2% of rows changed as a night of the platform would (bench/backup_growth.py's `_change_a_night`: events
   appended, other tables' timestamps moved; the database keeps them);
3. export-delta: the next night's snapshot, a delta against the base (it reads the base back for its digests);
   then, if asked, change-3 and export-3: another night of changes and its snapshot, a delta that diffs against
   the digests the night before left (lethe.backup.digest_state), not the chain;
4. one, many: as above, each propagated across both snapshots in one pass (propagate.py's `_propagate_chain`).
The largest object's size and row groups are printed beside them: what a worker that read objects whole held;
and after the export, the time of `pg_dump -Fc` of the same tables (bench/backup.py's command): the export's
anchor, in the same run.

Run: `LETHE_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres uv run python bench/memory.py
--database lethe_bench_1m` after `lethe bench erasure --users 1000000 --database lethe_bench_1m --skip-scan
--skip-batch --singles 0` has seeded it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

KEY = b"bench-pseudonym-key"
REGION = "us-east-1"
SID = "20261101T020000Z"
NEXT_SID = "20261102T020000Z"  # the incremental run's second night
THIRD_SID = "20261103T020000Z"  # and its third
CHANGE = 0.02
TARGET_MIB = 512


def _sibling(name: str) -> Any:
    """A module of bench/ by its file name (bench/ is not a package)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(f"bench_{name}", Path(__file__).with_name(f"{name}.py"))
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _policy(incremental: bool) -> Any:
    from lethe.policy import load_policy

    policy = load_policy()
    if not incremental:
        return policy
    return policy.model_copy(update={"backups": policy.backups.model_copy(update={"incremental": True})})


def _child(step: str, url: str, s3: str, tombstones: int, incremental: bool) -> dict[str, Any]:
    """One step in this process; its wall time and this process's peak memory."""
    from datetime import timedelta

    from lethe.backup import layout
    from lethe.backup.propagate import propagate_region
    from lethe.backup.snapshot import backed_up_tables, take_snapshot
    from lethe.backup.store import region_client
    from lethe.db import transaction
    from lethe.testing import insert_tombstones

    with transaction(url) as cur:
        cur.execute("SELECT 1")
    region_client(REGION, s3)
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    if step in ("export", "export-delta", "export-3"):
        sid = {"export": SID, "export-delta": NEXT_SID}.get(step, THIRD_SID)
        out["snapshot"] = take_snapshot(url, REGION, s3, sid, _policy(incremental), KEY)
    elif step in ("change", "change-3"):
        nights = 1 if step == "change" else 2
        with transaction(url) as cur:
            cur.execute("SET LOCAL statement_timeout = '30min'")
            night = layout.snapshot_time(SID) + timedelta(days=nights)
            tables = backed_up_tables(_policy(incremental))
            out["rows_changed"] = _sibling("backup_growth")._change_a_night(cur, tables, CHANGE, night, nights)
    elif step in ("one", "many"):
        with transaction(url) as cur:
            cur.execute("SELECT count(*) FROM erasure_tombstones")
            earlier = cur.fetchone()[0]  # type: ignore[index]
            # people not picked by an earlier run into the same snapshot (theirs are applied already), chosen
            # by the server: a million ids fetched into this process would add ~120 MiB to the peak measured
            cur.execute(
                "SELECT user_id FROM accounts ORDER BY md5(user_id::text || %s) LIMIT %s",
                (f"{step}/{earlier}", 1 if step == "one" else tombstones),
            )
            insert_tombstones(cur, KEY, [r[0] for r in cur.fetchall()])
        result = propagate_region(url, REGION, s3, key=KEY)
        out["propagation"] = {
            k: getattr(result, k)
            for k in ("objects_read", "objects_rewritten", "bytes_rewritten", "rows_deleted", "mentions_redacted")
        }
        out["propagation"]["free_text_searched"] = f"{result.free_text_objects_searched}/{result.free_text_objects}"
    out["seconds"] = time.perf_counter() - t0
    out["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _run(step: str, url: str, s3: str, tombstones: int, incremental: bool) -> dict[str, Any]:
    command = [sys.executable, __file__, "--step", step, "--url", url, "--s3", s3, "--tombstones", str(tombstones)]
    done = subprocess.run(
        command + ["--incremental"] * incremental,
        capture_output=True,
        text=True,
        check=False,
        env=os.environ.copy(),
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"rc {done.returncode}"}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _largest_object(s3: str) -> str:
    import io

    import pyarrow.parquet as pq
    from lethe.backup import store
    from lethe.backup.manifest import read as read_manifest
    from lethe.backup.store import region_client
    from lethe.config import BUCKETS

    client = region_client(REGION, s3)
    manifest = read_manifest(client, BUCKETS.backup(REGION), SID)
    largest = max(manifest.objects, key=lambda o: o.bytes)
    meta = pq.read_metadata(io.BytesIO(store.get(client, BUCKETS.backup(REGION), largest.key)))
    return (
        f"largest object {largest.key.split('/data/')[-1]}: {largest.bytes / 2**20:,.1f} MiB, {largest.rows:,} rows "
        f"in {meta.num_row_groups} row groups; snapshot {manifest.total_bytes / 2**20:,.0f} MiB "
        f"in {len(manifest.objects)} objects"
    )


def _pg_dump_seconds(url: str) -> tuple[float, int]:
    """The anchor: `pg_dump -Fc` of the same backed-up tables (bench/backup.py's command), wall time and bytes."""
    import tempfile
    from pathlib import Path

    from lethe.backup.snapshot import backed_up_tables
    from lethe.db import transaction
    from lethe.policy import load_policy

    backup = _sibling("backup")
    with transaction(url) as cur:
        cur.execute("SHOW server_version_num")
        major = int(cur.fetchone()[0]) // 10000  # type: ignore[index]
    policy = load_policy()
    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "dump.fc"
        command = backup._pg_dump_command(url, backup._pg_dump(major), backed_up_tables(policy), policy, out)
        t0 = time.perf_counter()
        subprocess.run(command, check=True)
        return time.perf_counter() - t0, out.stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/memory.py", description=__doc__.split("\n")[0])
    parser.add_argument("--database", default="lethe_bench_1m", help="a database `lethe bench erasure` seeded")
    parser.add_argument("--tombstones", type=int, default=100, help="tombstones in the 'many' run (default 100)")
    parser.add_argument(
        "--incremental", action="store_true", help="backups.incremental on: a base, a night's changes, a delta"
    )
    parser.add_argument(
        "--steps", help="steps to run (default export,one,many; --incremental: export,change,export-delta,one,many)"
    )
    parser.add_argument(
        "--step",
        choices=("idle", "export", "change", "export-delta", "change-3", "export-3", "one", "many"),
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--s3", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step:
        print(json.dumps(_child(args.step, args.url, args.s3, args.tombstones, args.incremental)))
        return 0
    if args.steps is None:
        args.steps = "export,change,export-delta,one,many" if args.incremental else "export,one,many"

    from lethe.db import transaction, url_for_database
    from lethe.embedded import services
    from lethe.testing import empty_buckets

    steps = args.steps.split(",")
    with services() as (server_url, s3):
        url = url_for_database(server_url, args.database)
        with transaction(url) as cur:
            cur.execute("SELECT count(*) FROM accounts")
            users = cur.fetchone()[0]  # type: ignore[index]
            if "export" in steps:  # a fresh snapshot; without it, the last run's is propagated into again
                cur.execute("TRUNCATE erasure_tombstones, backup_tombstone_applications CASCADE")
                cur.execute("DELETE FROM backup_snapshots")
        if "export" in steps:
            empty_buckets(s3)
        print(f"{args.database}: {users:,} users; load {os.getloadavg()[0]:.1f}; target: peak under {TARGET_MIB} MiB")
        for step in ("idle", *steps):
            out = _run(step, url, s3, args.tombstones, args.incremental)
            if "error" in out:
                print(f"  {step:12s} failed: {out['error']}")
                continue
            shown = ("objects", "bytes", "bytes_written", "rows", "rows_changed")
            extra = out.get("propagation") or {k: v for k, v in (out.get("snapshot") or out).items() if k in shown}
            print(
                f"  {step:12s} peak {out['peak_mib']:7,.0f} MiB  {out['seconds']:7.1f} s"
                f"  load {os.getloadavg()[0]:4.1f}  {extra}",
                flush=True,
            )
            if step == "export":
                print(f"  {_largest_object(s3)}")
                dumped, size = _pg_dump_seconds(url)
                print(f"  anchor pg_dump -Fc of the same tables: {dumped:.1f} s, {size:,} bytes; "
                      f"export / pg_dump = {out['seconds'] / dumped:.2f}x", flush=True)  # fmt: skip
        print(f"load at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
