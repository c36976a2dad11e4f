"""Bytes read from the primary per night by backup_nightly, before (one export per region) and after (one export,
server-side copies), beside the size of one snapshot; both nights in the same run, on one seeded database.

Reads are PostgreSQL's own counts for the platform's tables (lethe.testing.primary_reads): rows served
(pg_stat_user_tables: sequential-scan rows + index fetches) and bytes (pg_statio_user_tables: heap, TOAST and
index blocks read or hit in shared buffers, times the block size). Anchor: one export's reads, and one
snapshot's size (the Parquet bytes of its objects, and the tables' bytes on disk). Nights alternate which
side runs first, `--repeat` times.

Run: `lethe bench backup_once` (default 20,000 users) or `uv run python bench/backup_once.py --users 2000`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta

import psycopg2

KEY = b"bench-pseudonym-key"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lethe bench backup_once")
    parser.add_argument("--users", type=int, default=20_000, help="accounts to seed (default 20,000)")
    parser.add_argument("--repeat", type=int, default=2, help="nights per side (default 2)")
    args = parser.parse_args(argv)

    from lethe.backup.layout import snapshot_id
    from lethe.backup.replicate import replicate_snapshot
    from lethe.backup.snapshot import backed_up_tables, table_sizes, take_snapshot
    from lethe.config import BACKUP_REGIONS
    from lethe.db import transaction
    from lethe.embedded import services
    from lethe.policy import load_policy
    from lethe.testing import primary_reads, seeded_platform

    policy = load_policy()
    first, *others = BACKUP_REGIONS
    base = datetime(2026, 11, 1, 2, tzinfo=UTC)
    with services() as (server_url, s3_url):
        url = seeded_platform(server_url, s3_url, "lethe_bench_backup_once", args.users)
        with transaction(url) as cur:
            on_disk = sum(table_sizes(cur, backed_up_tables(policy)).values())
        # Autovacuum's scans count in the same block statistics: let it find nothing to do during the nights.
        with closing(psycopg2.connect(url)) as conn:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("VACUUM (ANALYZE)")

        def before(sid: str) -> dict[str, int]:  # what backup_nightly did: every region exports the primary
            return {r: take_snapshot(url, r, s3_url, sid, policy, KEY)["bytes"] for r in BACKUP_REGIONS}

        def after(sid: str) -> dict[str, int]:  # one export, copied server-side
            sizes = {first: take_snapshot(url, first, s3_url, sid, policy, KEY)["bytes"]}
            for region in others:
                sizes[region] = replicate_snapshot(url, sid, first, s3_url, region, s3_url)["bytes"]
            return sizes

        nights: dict[str, list[tuple[int, int, float]]] = {"before": [], "after": []}
        snapshot_bytes = 0
        night_no = 0
        for round_no in range(args.repeat):
            for side in ("before", "after") if round_no % 2 == 0 else ("after", "before"):
                sid = snapshot_id(base + timedelta(days=night_no))
                night_no += 1
                rows0, bytes0 = primary_reads(url)
                t0 = time.perf_counter()
                sizes = (before if side == "before" else after)(sid)
                elapsed = time.perf_counter() - t0
                rows1, bytes1 = primary_reads(url)
                nights[side].append((rows1 - rows0, bytes1 - bytes0, elapsed))
                snapshot_bytes = sizes[first]
        # The anchor: one export alone, into one region.
        rows0, bytes0 = primary_reads(url)
        take_snapshot(url, first, s3_url, snapshot_id(base + timedelta(days=night_no)), policy, KEY)
        rows1, bytes1 = primary_reads(url)
        one_rows, one_bytes = rows1 - rows0, bytes1 - bytes0

    def med(side: str, i: int) -> float:
        return statistics.median(n[i] for n in nights[side])

    print(f"seeded {args.users:,} users; {len(BACKUP_REGIONS)} backup regions; {args.repeat} nights per side")
    print(
        f"one snapshot: {snapshot_bytes / 1e6:.1f} MB of Parquet; its tables on disk {on_disk / 1e6:.1f} MB;"
        f" one export reads {one_rows:,} rows, {one_bytes / 1e6:.1f} MB of table/index/TOAST blocks"
    )
    for side, label in (("before", "an export per region"), ("after", "one export + server-side copy")):
        every = ", ".join(f"{b / 1e6:.1f} MB {t:.1f} s" for _, b, t in nights[side])
        print(
            f"{side} ({label}): read {med(side, 0):,.0f} rows = {med(side, 0) / one_rows:.2f}x one export,"
            f" {med(side, 1) / 1e6:.1f} MB = {med(side, 1) / one_bytes:.2f}x one export"
            f" = {med(side, 1) / on_disk:.2f}x one snapshot's tables on disk"
            f" = {med(side, 1) / snapshot_bytes:.2f}x one snapshot's Parquet; night {med(side, 2):.1f} s [{every}]"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
