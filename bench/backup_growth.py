"""Backups over many nights: what N nightly snapshots store, and what one erasure rewrites across all of them.

Issue #20's two lines for retained snapshots, measured on a platform that changes every night:
1. with `--change` (default 2%) of rows changing a day, N nightly snapshots (default 35) should store at most
   3x the bytes of one;
2. one person's erasure propagated across all N should rewrite at most 2x the bytes of doing it in one.

Each night, before its snapshot: the event tables (partitioned by time) get `--change` of their rows appended
as new events of that night; every other backed-up table with a timestamp column has `--change` of its rows
updated (the first such column moved by a second). Then backup_nightly's export into the first region.

Both figures are read from the store itself, not from Lethe's manifests or counters: bytes stored are the
sizes of every object version under `snapshots/` (list_object_versions); bytes rewritten are the sizes of the
versions that exist after the propagation and did not before. The anchor, in the same run: the last night's
snapshot copied alone into the second region (server-side, as backup_nightly does) and the same person
propagated there.

Run: `uv run python bench/backup_growth.py` (default 2,000 users, 35 nights, 2%).
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta
from typing import Any

KEY = b"bench-pseudonym-key"
FIRST_NIGHT = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)


def _versions(client: Any, bucket: str) -> dict[tuple[str, str], int]:
    """(key, version id) -> size of every object version under snapshots/, manifests included."""
    from lethe.backup import layout, store

    return {
        (v["Key"], v["VersionId"]): int(v["Size"])
        for v in store.versions(client, bucket, layout.SNAPSHOT_PREFIX)
        if not v["DeleteMarker"]
    }


def _data_bytes(found: dict[tuple[str, str], int], prefix: str = "") -> int:
    """Bytes of the data objects (not the manifests) among `found`, under `prefix` when given."""
    return sum(size for (key, _), size in found.items() if key.startswith(prefix) and "/data/" in key)


def _change_a_night(cur: Any, tables: list[str], share: float, night: datetime, seed: int) -> int:
    """`share` of each table's rows changed as a night of the platform would; rows changed in all."""
    from psycopg2 import sql

    changed = 0
    for table in tables:
        cur.execute(
            "SELECT c.relkind, (SELECT array_agg(a.attname ORDER BY k.n) FROM unnest(i.indkey) WITH ORDINALITY"
            " AS k(attnum, n) JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum),"
            " (SELECT array_agg(a.attname ORDER BY a.attnum) FROM pg_attribute a JOIN pg_type t ON t.oid ="
            " a.atttypid WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND t.typname ="
            " 'timestamptz') FROM pg_class c LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary"
            " WHERE c.oid = to_regclass(%s)",
            (table,),
        )
        kind, key_columns, times = cur.fetchone()
        if not key_columns or not times:
            continue
        # the same rows for a given night whatever the order of the scan: a hash of the key and the night
        sample = sql.SQL("abs(hashtext(ROW({})::text || %s)) %% 10000 < %s").format(
            sql.SQL(", ").join(sql.Identifier(c) for c in key_columns)
        )
        if kind == "p":  # an event table: new events of this night, copied from sampled ones under new ids
            ident, at = key_columns[0], times[0]
            cur.execute(
                "SELECT array_agg(a.attname ORDER BY a.attnum) FROM pg_attribute a"
                " WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped",
                (table,),
            )
            columns = cur.fetchone()[0]
            values = [
                sql.SQL("{} + (SELECT max({}) FROM {})").format(
                    sql.Identifier(c), sql.Identifier(c), sql.Identifier(table)
                )
                if c == ident
                else sql.SQL("%s::timestamptz")
                if c == at
                else sql.Identifier(c)
                for c in columns
            ]
            params = [night.isoformat()] if at in columns else []
            query = sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} WHERE {}").format(
                sql.Identifier(table),
                sql.SQL(", ").join(sql.Identifier(c) for c in columns),
                sql.SQL(", ").join(values),
                sql.Identifier(table),
                sample,
            )
            cur.execute(query, [*params, str(seed), int(share * 10000)])
        else:
            query = sql.SQL("UPDATE {} SET {} = {} + interval '1 second' WHERE {}").format(
                sql.Identifier(table), sql.Identifier(times[0]), sql.Identifier(times[0]), sample
            )
            cur.execute(query, (str(seed), int(share * 10000)))
        changed += cur.rowcount
    return changed


def _key_columns(cur: Any, tables: list[str]) -> dict[str, list[str]]:
    """Each table's primary key columns (empty: no primary key, the whole row is its key)."""
    keys = {}
    for table in tables:
        cur.execute(
            "SELECT array_agg(a.attname ORDER BY k.n) FROM pg_index i,"
            " unnest(i.indkey) WITH ORDINALITY AS k(attnum, n), pg_attribute a"
            " WHERE i.indrelid = to_regclass(%s) AND i.indisprimary AND a.attrelid = i.indrelid"
            " AND a.attnum = k.attnum",
            (table,),
        )
        keys[table] = list(cur.fetchone()[0] or [])
    return keys


def _parquet_bytes(table: Any, *, lean: bool = False) -> int:
    """Bytes of `table` as one zstd Parquet object; `lean` drops what a manifest could carry instead
    (the Arrow schema, column statistics)."""
    import io

    import pyarrow.parquet as pq

    out = io.BytesIO()
    pq.write_table(table, out, compression="zstd", store_schema=not lean, write_statistics=not lean)
    return out.tell()


def _typed_delta(rows: Any, changed: list[int], gone: Any) -> Any:
    """One typed delta table: the changed rows as they are, then the gone rows' keys (other columns null),
    told apart by a `_gone` column."""
    import pyarrow as pa

    kept = rows.take(changed).append_column("_gone", pa.array([False] * len(changed)))
    if not gone.num_rows:
        return kept
    return pa.concat_tables([kept, gone.append_column("_gone", pa.array([True] * gone.num_rows))])


def _project_deltas(
    client: Any,
    bucket: str,
    sids: list[str],
    keys: dict[str, list[str]],
    person: str,
    groups: int,
    targets: list[int],
) -> dict[str, dict[str, int]]:
    """What a base + nightly deltas layout (not built) would store and rewrite, from the snapshots' raw Parquet.

    A night's delta holds the rows whose key is new or whose values changed since the night before, and the
    keys of rows gone. Groupings, each a variant of the result:
    - `bucketed`: one object per (table, bucket), as the base;
    - `grouped`: `groups` objects a night for all tables (rows as table, key and values in text);
    - `typed-<T>K` and `typed-<T>K-lean`: each table's delta typed, in as many objects of its subject buckets
      as make objects of about T KiB (at least one, at most the table's buckets); `lean` without the Arrow
      schema and statistics in the footer (the manifest holds the columns' types).
    The erasure: the delta objects holding the person's rows or keys, every night.
    """
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from lethe.backup import layout
    from lethe.backup.manifest import read as read_manifest

    variants = ["bucketed", "grouped"] + [f"typed-{t}K{lean}" for t in targets for lean in ("", "-lean")]
    totals = {v: dict.fromkeys(("bytes", "objects", "person"), 0) for v in variants}
    counts = {"rows": 0, "base_rows": 0}

    def add(variant: str, size: int, holds_person: bool) -> None:
        totals[variant]["bytes"] += size
        totals[variant]["objects"] += 1
        totals[variant]["person"] += size if holds_person else 0

    before: dict[str, dict[tuple[Any, ...], tuple[Any, ...]]] = {}
    for night, sid in enumerate(sids):
        manifest = read_manifest(client, bucket, sid)
        grouped: dict[int, list[tuple[str, str, str, str | None]]] = {}
        for name, entry in manifest.tables.items():
            parts = [
                pq.read_table(io.BytesIO(client.get_object(Bucket=bucket, Key=o.key)["Body"].read()))
                for o in entry.objects
            ]
            rows = pa.concat_tables(parts) if parts else None
            if rows is None:
                continue
            values = list(zip(*(rows.column(c).to_pylist() for c in rows.column_names), strict=True))
            at = {c: i for i, c in enumerate(rows.column_names)}
            subject = at.get(layout.SUBJECT_COLUMN)
            key_at = [at[c] for c in keys.get(name, []) if c in at] or list(range(len(rows.column_names)))
            now = {tuple(v[i] for i in key_at): v for v in values}
            if subject is not None and night == len(sids) - 1:
                counts["base_rows"] += sum(1 for v in values if v[subject] == person)
            before_now, before[name] = before.get(name, {}), now
            if not night:
                continue
            changed = [i for i, v in enumerate(values) if before_now.get(tuple(v[j] for j in key_at)) != v]
            gone = [v for k, v in before_now.items() if k not in now]
            if not changed and not gone:
                continue
            buckets = entry.buckets or manifest.buckets

            def owner(v: tuple[Any, ...], subject: int | None = subject) -> str | None:
                return v[subject] if subject is not None and v[subject] else None

            mine = sum(1 for v in [values[i] for i in changed] + gone if owner(v) == person)
            counts["rows"] += mine
            gone_keys = pa.table(
                {
                    c: [v[i] if i in key_at or i == subject else None for v in gone]
                    for i, c in enumerate(rows.column_names)
                },
                schema=rows.schema,
            )
            # (a) per (table, bucket), rows typed and gone keys as text, as in the first projection
            per_bucket: dict[int, tuple[list[int], list[tuple[Any, ...]]]] = {}
            for i in changed:
                p = owner(values[i])
                per_bucket.setdefault(layout.bucket_of(p, buckets) if p else 0, ([], []))[0].append(i)
            for v in gone:
                p = owner(v)
                per_bucket.setdefault(layout.bucket_of(p, buckets) if p else 0, ([], []))[1].append(v)
            for idx, removed in per_bucket.values():
                size = _parquet_bytes(rows.take(idx)) if idx else 0
                if removed:
                    size += _parquet_bytes(pa.table({"key": [repr(tuple(v[j] for j in key_at)) for v in removed]}))
                holds = any(owner(v) == person for v in [values[i] for i in idx] + removed)
                add("bucketed", size, holds)
                totals["bucketed"]["objects"] += bool(idx) and bool(removed)
            # (b) every table's changes of the night in `groups` objects, rows as text
            for v, was in [(values[i], False) for i in changed] + [(v, True) for v in gone]:
                p = owner(v)
                text = None if was else repr(v)
                key = repr(tuple(v[j] for j in key_at))
                grouped.setdefault(layout.bucket_of(p, groups) if p else 0, []).append((name, key, p or "", text))
            # (c) typed, in objects of about T KiB of this table's subject buckets
            delta = _typed_delta(rows, changed, gone_keys)
            whole = _parquet_bytes(delta)
            owners = [owner(values[i]) for i in changed] + [owner(v) for v in gone]
            for target in targets:
                parts_n = max(1, min(buckets, round(whole / (target * 1024))))
                split: dict[int, list[int]] = {}
                for row, p in enumerate(owners):
                    split.setdefault(layout.bucket_of(p, parts_n) if p else row % parts_n, []).append(row)
                for lean in ("", "-lean"):
                    for idx in split.values():
                        size = _parquet_bytes(delta.take(idx), lean=bool(lean))
                        add(f"typed-{target}K{lean}", size, any(owners[r] == person for r in idx))
        for entries in grouped.values():
            columns = ("table", "key", "subject", "row")
            size = _parquet_bytes(pa.table({c: [e[i] for e in entries] for i, c in enumerate(columns)}))
            add("grouped", size, any(e[2] == person for e in entries))
    return {**totals, "counts": counts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/backup_growth.py", description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=2_000, help="accounts to seed (default 2,000)")
    parser.add_argument("--nights", type=int, default=35, help="nightly snapshots retained (default 35)")
    parser.add_argument("--change", type=float, default=0.02, help="share of rows changed a night (default 0.02)")
    parser.add_argument(
        "--project-deltas",
        type=int,
        default=64,
        metavar="GROUPS",
        help="also project a base + nightly deltas layout (not built) from the raw Parquet, with deltas of all"
        " tables grouped in GROUPS objects a night (default 64; 0: skip)",
    )
    parser.add_argument(
        "--delta-object-kib",
        default="8,32,128",
        help="object sizes (KiB, comma-separated) of the typed delta projections (default 8,32,128)",
    )
    args = parser.parse_args(argv)
    targets = [int(t) for t in args.delta_object_kib.split(",") if t.strip()]

    from lethe.backup.propagate import propagate_region
    from lethe.backup.replicate import replicate_snapshot
    from lethe.backup.snapshot import backed_up_tables, take_snapshot
    from lethe.backup.store import region_client
    from lethe.config import BACKUP_REGIONS, BUCKETS
    from lethe.db import transaction
    from lethe.embedded import services
    from lethe.policy import load_policy
    from lethe.testing import insert_tombstones, seeded_platform

    first, second = BACKUP_REGIONS[:2]
    policy = load_policy()
    tables = backed_up_tables(policy)
    with services() as (server_url, s3):
        url = seeded_platform(server_url, s3, "lethe_bench_growth", args.users)
        clients = {r: region_client(r, s3) for r in (first, second)}
        buckets = {r: BUCKETS.backup(r) for r in (first, second)}
        sids = []
        t0 = time.perf_counter()
        for night in range(args.nights):
            at = FIRST_NIGHT + timedelta(days=night)
            if night:
                with transaction(url) as cur:
                    changed = _change_a_night(cur, tables, args.change, at, night)
            sid = at.strftime("%Y%m%dT%H%M%SZ")
            take_snapshot(url, first, s3, sid, policy, KEY)
            sids.append(sid)
            if night in (0, 1) or night == args.nights - 1:
                print(
                    f"  night {night + 1}: snapshot {sid}" + (f", {changed:,} rows changed before it" if night else "")
                )
        print(f"{args.nights} nights exported in {time.perf_counter() - t0:.0f} s", flush=True)
        replicate_snapshot(url, sids[-1], first, s3, second, s3)  # the anchor: the last night alone

        stored = _versions(clients[first], buckets[first])
        one = _data_bytes(stored, f"snapshots/{sids[-1]}/")
        first_night = _data_bytes(stored, f"snapshots/{sids[0]}/")
        everything = _data_bytes(stored)
        manifests = sum(size for (key, _), size in stored.items() if key.endswith("manifest.json"))

        with transaction(url) as cur:  # the person: one with rows in most tables, the same one for both sides
            cur.execute("SELECT user_id FROM comments GROUP BY user_id ORDER BY count(*) DESC, user_id LIMIT 1")
            person = cur.fetchone()[0]
            keys = _key_columns(cur, tables)
        projected = None
        if args.project_deltas:  # before the erasure: the snapshots still hold the person
            from lethe.pseudonym import subject_pseudonym

            t0 = time.perf_counter()
            projected = _project_deltas(
                clients[first],
                buckets[first],
                sids,
                keys,
                subject_pseudonym(KEY, person),
                args.project_deltas,
                targets,
            )
            counts = projected.pop("counts")
            print(
                f"deltas projected from {len(sids)} snapshots' raw Parquet in {time.perf_counter() - t0:.0f} s;"
                f" the person: {counts['base_rows']} rows in the last snapshot, {counts['rows']} in the deltas"
            )
        with transaction(url) as cur:
            insert_tombstones(cur, KEY, [person])
        rewritten = {}
        for region in (second, first):
            before = _versions(clients[region], buckets[region])
            t0 = time.perf_counter()
            propagate_region(url, region, s3, key=KEY)
            seconds = time.perf_counter() - t0
            after = _versions(clients[region], buckets[region])
            rewritten[region] = (_data_bytes({k: s for k, s in after.items() if k not in before}), seconds)

        many, many_s = rewritten[first]
        alone, alone_s = rewritten[second]
        print(f"{args.users:,} users, {args.nights} nights, {args.change:.0%} of rows changed a night")
        print(
            f"stored: {everything / 1e6:.1f} MB of data objects in {args.nights} snapshots (+ {manifests / 1e6:.1f} MB"
            f" of manifests); one snapshot {one / 1e6:.1f} MB (the first night's {first_night / 1e6:.1f} MB):"
            f" {everything / one:.2f}x one (target at most 3x)"
        )
        print(
            f"one erasure across the {args.nights} snapshots: {many / 1e6:.2f} MB rewritten in {many_s:.1f} s;"
            f" into the last snapshot alone ({second}): {alone / 1e6:.2f} MB in {alone_s:.1f} s:"
            f" {many / alone:.2f}x (target at most 2x)"
        )
        if projected:
            # the base holds what one snapshot holds; the person's part of it is what one erasure into one rewrites
            for variant, t in projected.items():
                print(
                    f"projected base + {args.nights - 1} nightly deltas, {variant}: {t['objects']:,} delta objects,"
                    f" {t['bytes'] / 1e6:.2f} MB: stored {(one + t['bytes']) / one:.2f}x one snapshot;"
                    f" one erasure {(alone + t['person']) / alone:.2f}x ({t['person'] / 1e6:.3f} MB of deltas"
                    " besides the base's)"
                )
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
