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
versions that exist after the propagation and did not before; data objects and manifests (with the index
objects incremental manifests name their entries in) are given apart.
The anchor, in the same run: the last night's snapshot alone in the second region and the same person
propagated there. Full copies (the default): the anchor is the last snapshot copied server-side, as
backup_nightly does. `--incremental` (policy backups.incremental on): every night is a base or a delta in the
first region, and the anchor is the same last night exported in full (not incremental) into the second
region; the two exports of that night are timed side by side.

Each export's S3 requests are counted by a botocore hook (every request the process makes while it runs,
by operation; GetObjects by key and answered ContentLength): an incremental night reads the previous
manifest and every data object it names (the digests of the rows they hold).

Run: `uv run python bench/backup_growth.py [--incremental] [--delta-object-kib K] [--s3-latency-ms MS]` (default
2,000 users, 35 nights, 2%; no latency added). `--s3-latency-ms` puts S3 behind a relay holding every byte half
the round trip each way, in a process of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
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


def _manifest_bytes(found: dict[tuple[str, str], int]) -> int:
    """Bytes of the manifests and the index objects incremental ones name their entries in (and an incremental
    night's digests for the next night, lethe.backup.digest_state: `_digest_bytes` says how much of it)."""
    return sum(size for (key, _), size in found.items() if "/data/" not in key)


def _digest_bytes(found: dict[tuple[str, str], int]) -> int:
    return sum(size for (key, _), size in found.items() if "/digests/" in key)


def _pg_dump_seconds(url: str) -> float:
    """`pg_dump -Fc` of the same backed-up tables (bench/memory.py's anchor), wall seconds."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench_memory", Path(__file__).with_name("memory.py"))
    assert spec and spec.loader
    memory = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(memory)
    return float(memory._pg_dump_seconds(url)[0])


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


class _S3Calls:
    """Every S3 request this process makes while `on`, by operation, and the keys and bytes of its GetObjects.

    A botocore hook on boto3's default session: every client Lethe makes afterwards (boto3.client) inherits it.
    """

    def __init__(self) -> None:
        import boto3

        self.on = False
        self.lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.got: list[tuple[str, int]] = []  # (key, bytes) of each GetObject
        if boto3.DEFAULT_SESSION is None:
            boto3.setup_default_session()
        assert boto3.DEFAULT_SESSION is not None
        boto3.DEFAULT_SESSION.events.register("provide-client-params.s3", self._params)
        boto3.DEFAULT_SESSION.events.register("after-call.s3", self._answer)

    def _params(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["bench_key"] = params.get("Key")

    def _answer(self, model: Any, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        if not self.on:
            return
        with self.lock:
            self.calls[model.name] += 1
            if model.name == "GetObject":
                self.got.append((str(context.get("bench_key")), int(parsed.get("ContentLength") or 0)))

    @contextlib.contextmanager
    def counting(self) -> Iterator[_S3Calls]:
        self.calls.clear()
        self.got.clear()
        self.on = True
        try:
            yield self
        finally:
            self.on = False

    def summary(self) -> str:
        data = [(k, n) for k, n in self.got if "/data/" in k]
        other = [(k, n) for k, n in self.got if "/data/" not in k]
        ops = ", ".join(f"{op} {n:,}" for op, n in self.calls.most_common())
        distinct = len({k for k, _ in data})
        return (
            f"{sum(self.calls.values()):,} S3 requests ({ops}); GETs: {len(data):,} data objects ({distinct:,}"
            f" distinct) {sum(n for _, n in data) / 1e6:.2f} MB, {len(other):,} other (manifests)"
            f" {sum(n for _, n in other) / 1e6:.2f} MB"
        )


class _DistantEndpoint:
    """A TCP relay in front of the local S3 server that holds every byte `one_way` seconds in each direction (and
    a new connection a round trip): a backup region far from the worker, paid by each round trip a request makes
    (its connection, an `Expect: 100-continue` wait, the answer), not once a request. It runs in a process of its
    own, so that relaying does not take the exporting process's CPU (or its GIL)."""

    def __init__(self, endpoint: str, one_way: float) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        self.process = context.Process(target=_relay_forever, args=(endpoint, one_way, theirs), daemon=True)
        self.process.start()
        self.url = f"http://127.0.0.1:{ours.recv()}"


def _relay_forever(endpoint: str, one_way: float, port_to: Any) -> None:
    import asyncio
    from urllib.parse import urlsplit

    target = urlsplit(endpoint)

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await held.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not data:
                    writer.close()
                    return
                writer.write(data)
                await writer.drain()

        sending = asyncio.ensure_future(deliver())
        try:
            while data := await reader.read(1 << 16):
                held.put_nowait((loop.time() + one_way, data))
        finally:
            held.put_nowait((loop.time() + one_way, b""))
            await sending

    async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(2 * one_way)  # the handshake
        server_reader, server_writer = await asyncio.open_connection(target.hostname, target.port)
        await asyncio.gather(
            pipe(client_reader, server_writer), pipe(server_reader, client_writer), return_exceptions=True
        )

    async def serve() -> None:
        server = await asyncio.start_server(relay, "127.0.0.1", 0)
        port_to.send(server.sockets[0].getsockname()[1])
        await server.serve_forever()

    asyncio.run(serve())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/backup_growth.py", description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=2_000, help="accounts to seed (default 2,000)")
    parser.add_argument("--nights", type=int, default=35, help="nightly snapshots retained (default 35)")
    parser.add_argument("--change", type=float, default=0.02, help="share of rows changed a night (default 0.02)")
    parser.add_argument(
        "--incremental",
        action="store_true",
        help="the nights as incremental snapshots (backups.incremental: a base and a delta a night); the anchor"
        " is the last night exported in full into the second region",
    )
    parser.add_argument(
        "--delta-object-kib",
        type=int,
        default=None,
        metavar="KIB",
        help="with --incremental: Arrow bytes of rows a delta object gathers (lethe.backup.chain.DELTA_OBJECT_BYTES;"
        " default: Lethe's)",
    )
    parser.add_argument(
        "--s3-latency-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="put S3 MS milliseconds a round trip away (a relay holding every byte MS/2 each way: a backup region"
        " far from the worker; default 0)",
    )
    args = parser.parse_args(argv)

    from lethe.backup import chain, manifest
    from lethe.backup.propagate import propagate_region
    from lethe.backup.replicate import replicate_snapshot
    from lethe.backup.snapshot import backed_up_tables, take_snapshot
    from lethe.backup.store import region_client
    from lethe.config import BACKUP_REGIONS, BUCKETS
    from lethe.db import transaction
    from lethe.embedded import services
    from lethe.policy import load_policy
    from lethe.testing import insert_tombstones, seeded_platform

    s3_calls = _S3Calls()  # before any client is made
    first, second = BACKUP_REGIONS[:2]
    full = load_policy()
    policy = full
    if args.incremental:
        policy = full.model_copy(update={"backups": full.backups.model_copy(update={"incremental": True})})
        if args.delta_object_kib:
            chain.DELTA_OBJECT_BYTES = args.delta_object_kib << 10
    layout_name = (
        f"incremental (delta objects of {chain.DELTA_OBJECT_BYTES >> 10} KiB of Arrow rows)"
        if args.incremental
        else "full copies"
    )
    tables = backed_up_tables(policy)
    with services() as (server_url, s3):
        if args.s3_latency_ms:
            s3 = _DistantEndpoint(s3, args.s3_latency_ms / 2000).url
        url = seeded_platform(server_url, s3, "lethe_bench_growth", args.users)
        clients = {r: region_client(r, s3) for r in (first, second)}
        buckets = {r: BUCKETS.backup(r) for r in (first, second)}
        sids: list[str] = []
        seconds: list[float] = []
        t0 = time.perf_counter()
        for night in range(args.nights):
            at = FIRST_NIGHT + timedelta(days=night)
            if night:
                with transaction(url) as cur:
                    changed = _change_a_night(cur, tables, args.change, at, night)
            sid = at.strftime("%Y%m%dT%H%M%SZ")
            with s3_calls.counting():
                t1 = time.perf_counter()
                take_snapshot(url, first, s3, sid, policy, KEY)
                seconds.append(time.perf_counter() - t1)
            sids.append(sid)
            if night in (0, 1) or night == args.nights - 1:
                print(
                    f"  night {night + 1}: snapshot {sid} in {seconds[-1]:.2f} s"
                    + (f", {changed:,} rows changed before it" if night else "")
                    + f"; {s3_calls.summary()}",
                    flush=True,
                )
        later = seconds[1:] or seconds
        print(
            f"{args.nights} nights exported ({layout_name}) in {time.perf_counter() - t0:.0f} s; a night after the"
            f" first: median {statistics.median(later):.2f} s, max {max(later):.2f} s",
            flush=True,
        )
        if args.incremental:  # the anchor: the last night exported in full, the same data, into the second region
            with s3_calls.counting():
                t1 = time.perf_counter()
                take_snapshot(url, second, s3, sids[-1], full, KEY)
                anchor_s = time.perf_counter() - t1
            print(
                f"the last night exported in full into {second}: {anchor_s:.2f} s (incremental: {seconds[-1]:.2f} s);"
                f" {s3_calls.summary()}",
                flush=True,
            )
            dump_s = _pg_dump_seconds(url)
            print(
                f"pg_dump -Fc of the same tables: {dump_s:.2f} s; the last night incremental / pg_dump"
                f" {seconds[-1] / dump_s:.2f}x, in full / pg_dump {anchor_s / dump_s:.2f}x",
                flush=True,
            )
        else:  # the anchor: the last night copied alone
            replicate_snapshot(url, sids[-1], first, s3, second, s3)

        stored = _versions(clients[first], buckets[first])
        anchor = _versions(clients[second], buckets[second])
        one = _data_bytes(anchor, f"snapshots/{sids[-1]}/")
        one_manifest = _manifest_bytes(anchor)
        first_night = _data_bytes(stored, f"snapshots/{sids[0]}/")
        everything = _data_bytes(stored)
        manifests = _manifest_bytes(stored)

        latency = f", S3 {args.s3_latency_ms:g} ms a round trip away" if args.s3_latency_ms else ""
        changed = f"{args.change:.0%} of rows changed a night"
        print(f"{args.users:,} users, {args.nights} nights, {changed}, {layout_name}{latency}")
        print(
            f"stored: {everything / 1e6:.2f} MB of data objects in {args.nights} snapshots (+ {manifests / 1e6:.2f} MB"
            f" of manifests); one full snapshot of the last night {one / 1e6:.2f} MB (+ {one_manifest / 1e6:.2f} MB"
            f" of manifest; the first night's {first_night / 1e6:.2f} MB): data {everything / one:.2f}x one,"
            f" with manifests {(everything + manifests) / (one + one_manifest):.2f}x (target at most 3x);"
            f" of the manifests' bytes, {_digest_bytes(stored) / 1e6:.2f} MB are the last night's digests",
            flush=True,
        )
        with transaction(url) as cur:  # the person: one with rows in most tables, the same one for both sides
            cur.execute("SELECT user_id FROM comments GROUP BY user_id ORDER BY count(*) DESC, user_id LIMIT 1")
            person = cur.fetchone()[0]
            insert_tombstones(cur, KEY, [person])
        rewritten = {}
        for region in (second, first):
            before = _versions(clients[region], buckets[region])
            t0 = time.perf_counter()
            result = propagate_region(url, region, s3, key=KEY)
            took = time.perf_counter() - t0
            after = _versions(clients[region], buckets[region])
            new = {k: s for k, s in after.items() if k not in before}
            rewritten[region] = (new, took, result)

        many, many_s, many_result = rewritten[first]
        alone, alone_s, alone_result = rewritten[second]
        many_data, alone_data = _data_bytes(many), _data_bytes(alone)
        many_all, alone_all = sum(many.values()), sum(alone.values())
        nights_touched = sorted({key.split("/")[1] for (key, _) in many if "/data/" in key})
        print(
            f"one erasure across the {args.nights} snapshots: {many_data / 1e6:.3f} MB of data objects rewritten"
            f" ({sum(1 for k in many if '/data/' in k[0])} objects under {len(nights_touched)} snapshots' prefixes"
            + (
                f": {'the base and ' if sids[0] in nights_touched else ''}"
                f"{len(set(nights_touched) - {sids[0]})} nights' deltas"
                if args.incremental
                else ""
            )
            + f") + {(many_all - many_data) / 1e6:.3f} MB of manifests, in {many_s:.1f} s;"
            f" Lethe counted {many_result.objects_read} objects read, {many_result.objects_rewritten} rewritten,"
            f" {many_result.manifest_entries_repaired} manifest entries repaired"
        )
        print(
            f"into the last night's full snapshot alone ({second}): {alone_data / 1e6:.3f} MB of data objects"
            f" ({sum(1 for k in alone if '/data/' in k[0])} objects) + {(alone_all - alone_data) / 1e6:.3f} MB of"
            f" manifest, in {alone_s:.1f} s; Lethe counted {alone_result.objects_read} objects read"
        )
        for side, new in (("across the nights", many), ("into one", alone)):
            kinds: dict[str, list[int]] = {}
            for (key, _), size in new.items():
                kind = next((k for k in ("/data/", "/index/", "/digests/") if k in key), "manifest")
                kinds.setdefault(kind.strip("/"), []).append(size)
            print(
                f"written {side}: "
                + ", ".join(f"{kind} {len(s)} objects {sum(s) / 1e6:.3f} MB" for kind, s in sorted(kinds.items()))
            )
        print(
            f"one erasure: data {many_data / alone_data:.2f}x into one, with manifests {many_all / alone_all:.2f}x"
            " (target at most 2x)"
        )
        # The per-person bound, read from the last night's manifest in each region: the bytes of the objects her
        # erasure rewrote that it names, against all it names (an incremental one names the base and every delta).
        for region, new in ((first, many), (second, alone)):
            last = manifest.read(clients[region], buckets[region], sids[-1])
            named = {o.key for o in last.objects}
            hers = sum(size for (key, _), size in new.items() if key in named)
            print(
                f"the per-person bound in {region}'s last snapshot: her objects {hers / 1e6:.3f} MB of the"
                f" {last.total_bytes / 1e6:.2f} MB it names, 1/{last.total_bytes / hers:.0f} (bound 1/{last.buckets})"
            )
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
