"""Erasure at scale: one person, a batch of 1,000, and the residue scanner's pass beside a plain read.

Seeds `--users` people and `--events` usage events (visitor logs a quarter of that) into a scratch
database `lethe_bench_erasure`, server-side (bench/_erasure_seed.py), then measures in one run:

1. the residue scanner's pass over the primary for the batch's footprints (`lethe.residue.scan`, the
   full pass subject_erasure makes before an erasure; the sweep and the check after it re-read only the
   columns that pass found the batch in), beside its anchor: one sequential
   read of the same text columns, `COPY (SELECT <those columns>::text ...) TO STDOUT` into a null sink,
   and (for reference) the server alone counting them;
2. `--singles` requests erased one per run (`lethe.erasure.tasks.erase_run`, what the DAG's erase task
   runs: discovery, plan, erase, sweep, in-transaction checks, tombstone, ledger);
3. a batch of `--batch` requests in one run of the same function.

Database time is the sum of the client's round trips for every statement and fetch (a cursor class
that times execute, executemany, copy_expert and fetch*, installed for every connection of the run;
pg_stat_statements is not loaded on this server). The scanner's share is reported apart.
1,000 single runs are not run: their time is the mean of the `--singles` runs times 1,000.

Run: `lethe bench erasure` (1M people, 20M events) or `lethe bench erasure --users 20000 --events 400000`.
`--reuse` keeps the database of an earlier run at the same scale (each run erases different people).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
from lethe.db import Cursor
from psycopg2 import sql

DATABASE = "lethe_bench_erasure"
KEY = b"bench-erasure-pseudonym-key"


class Clock:
    """Seconds spent waiting on the database, summed over every timed cursor, and per statement's start."""

    db = 0.0
    statements = 0
    by_statement: Counter[str] = Counter()

    @classmethod
    def reset(cls) -> None:
        cls.db, cls.statements, cls.by_statement = 0.0, 0, Counter()

    @classmethod
    def top(cls, n: int = 8, scanner: bool = False) -> str:
        """The n statements (by their first 70 characters) that took longest, inside the scanner or outside it."""
        shares = [(q, s) for q, s in cls.by_statement.most_common() if q.startswith(SCANNER_MARK) == scanner]
        return "; ".join(f"{s:.2f} s {q.removeprefix(SCANNER_MARK)!r}" for q, s in shares[:n])


SCANNER_MARK = "[scanner] "


class TimedCursor(Cursor):
    """Lethe's own cursor (lethe.db.Cursor), every statement and fetch timed."""

    _key = ""

    def _timed(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent = time.perf_counter() - t0
            Clock.db += spent
            Clock.statements += 1
            Clock.by_statement[self._key] += spent

    def _start(self, query: Any) -> None:
        if isinstance(query, bytes):  # execute_values sends bytes
            text = query.decode(errors="replace")
        else:
            text = query if isinstance(query, str) else query.as_string(self)
        self._key = (SCANNER_MARK if Scanner.active else "") + " ".join(text.split())[:70]

    def execute(self, query: Any, vars: Any = None) -> Any:
        self._start(query)
        return self._timed(super().execute, query, vars)

    def executemany(self, query: Any, vars_list: Any) -> Any:
        self._start(query)
        return self._timed(super().executemany, query, vars_list)

    def copy_expert(self, sql: Any, *args: Any, **kwargs: Any) -> Any:
        self._start(sql)
        return self._timed(super().copy_expert, sql, *args, **kwargs)

    def fetchone(self) -> Any:
        return self._timed(super().fetchone)

    def fetchmany(self, size: Any = None) -> Any:
        return self._timed(super().fetchmany, size) if size is not None else self._timed(super().fetchmany)

    def fetchall(self) -> Any:
        return self._timed(super().fetchall)


def _install_timed_cursor() -> None:
    original = psycopg2.connect

    def connect(*args: Any, **kwargs: Any) -> Any:
        # in place of the factory lethe.db.connect names (its own Cursor, which TimedCursor is): with setdefault
        # the bench timed nothing once lethe.db named one, and said so as 0.000 s of database
        return original(*args, **{**kwargs, "cursor_factory": TimedCursor})

    psycopg2.connect = connect  # lethe.db.connect calls psycopg2.connect


class Scanner:
    """The scanner's share of a run: wall and database seconds inside lethe.residue.scan_rows, passes made."""

    wall = 0.0
    db = 0.0
    passes = 0
    active = False  # a statement started now is the scanner's (or its caller's, between two rows it yields)


def _time_scanner() -> None:
    from lethe import residue

    original = residue.scan_rows

    def scan_rows(*args: Any, **kwargs: Any) -> Iterator[Any]:
        t0, db0 = time.perf_counter(), Clock.db
        Scanner.active = True
        try:
            yield from original(*args, **kwargs)
        finally:
            Scanner.active = False
            Scanner.wall += time.perf_counter() - t0
            Scanner.db += Clock.db - db0
            Scanner.passes += 1

    residue.scan_rows = scan_rows  # type: ignore[assignment]


def _seed_module() -> Any:
    path = Path(__file__).with_name("_erasure_seed.py")
    spec = importlib.util.spec_from_file_location("bench_erasure_seed", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prepare(server_url: str, users: int, events: int, reuse: bool, database: str = DATABASE) -> tuple[str, str]:
    """The scratch database at this scale (seeded now, or kept from an earlier run with --reuse)."""
    from lethe.db import connect, migrate, recreate_database, url_for_database
    from lethe.seed import create_platform

    scale = f"users={users} events={events}"
    url = url_for_database(server_url, database)
    if reuse:
        try:
            conn = connect(url)
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (database,)
                )
                found = cur.fetchone()
            conn.close()
            if found and found[0] == scale:
                migrate(url)
                return url, f"kept from an earlier run ({scale})"
        except Exception as exc:  # no database yet: seed one
            print(f"--reuse: no seeded database ({type(exc).__name__}); seeding")
    url = recreate_database(server_url, database)
    t0 = time.perf_counter()
    conn = connect(url)
    with conn, conn.cursor() as cur:
        create_platform(cur)
        counts = _seed_module().seed_server_side(cur, users, events)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("VACUUM ANALYZE")
        cur.execute(sql.SQL("COMMENT ON DATABASE {} IS %s").format(sql.Identifier(database)), (scale,))
    conn.close()
    rows = sum(counts.values())
    return url, f"seeded {rows:,} rows in {time.perf_counter() - t0:.0f} s ({scale})"


def _people(url: str, n: int, salt: int) -> list[tuple[int, str]]:
    """n people not under a legal hold, not erased yet, spread over the table (deterministic per salt)."""
    from lethe.db import transaction

    with transaction(url) as cur:
        cur.execute(
            "SELECT a.user_id, a.email FROM accounts a WHERE NOT EXISTS (SELECT 1 FROM legal_holds h"
            " WHERE h.subject_key = a.user_id::text AND h.released_at IS NULL)"
            " ORDER BY hashint8(a.user_id + %s) LIMIT %s",
            (salt, n),
        )
        return [(int(u), str(e)) for u, e in cur.fetchall()]


def _claim(url: str, people: list[tuple[int, str]], run_id: str) -> None:
    from lethe.db import transaction
    from lethe.erasure import lifecycle, request

    with transaction(url) as cur:
        for _, email in people:
            request_id, _ = request.register(cur, "email", email)
            lifecycle.claim_one(cur, request_id, run_id, [])  # approved without the plan task: erase re-plans
            lifecycle.move(cur, "plan", [request_id], run_id=run_id)
            lifecycle.move(cur, "approve_unattended", [request_id], run_id=run_id)


def _erase(url: str, policy: Any, people: list[tuple[int, str]]) -> dict[str, Any]:
    """One erase_run over these people's requests: wall, database and scanner seconds."""
    from lethe.erasure import tasks

    run_id = f"bench-erasure-{uuid.uuid4()}"
    _claim(url, people, run_id)
    Clock.reset()
    Scanner.wall = Scanner.db = 0.0
    Scanner.passes = 0
    t0 = time.perf_counter()
    summary = tasks.erase_run(run_id, url, KEY, policy)
    wall = time.perf_counter() - t0
    assert summary["outcomes"].get("erased") == len(people), summary
    return {
        "wall": wall,
        "db": Clock.db,
        "statements": Clock.statements,
        "scan_wall": Scanner.wall,
        "scan_db": Scanner.db,
        "passes": Scanner.passes,
        "vacuum": sum(s for q, s in Clock.by_statement.items() if q.startswith("VACUUM")),
        "top": Clock.top(int(os.environ.get("BENCH_TOP", "8"))),
        "top_scanner": Clock.top(3, scanner=True),
    }


class _Null(io.RawIOBase):
    def write(self, b: Any) -> int:
        return len(b)


def _read_text_columns(url: str, tables: list[Any]) -> tuple[float, float, int]:
    """The anchor: every text-like column the scanner reads, read once (COPY to the client, discarded);
    and the server alone counting them. (copy seconds, count seconds, values)."""
    from lethe.db import connect
    from lethe.residue import _as_text

    conn = connect(url)
    conn.autocommit = True
    copy_s = count_s = 0.0
    values = 0
    with conn.cursor() as cur:
        for t in tables:
            cols = sql.SQL(", ").join(_as_text(sql.Identifier(c.name)) for c in t.columns)
            t0 = time.perf_counter()
            cur.copy_expert(sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT").format(cols, t.ident).as_string(cur), _Null())
            copy_s += time.perf_counter() - t0
            counts = sql.SQL(", ").join(sql.SQL("count({})").format(sql.Identifier(c.name)) for c in t.columns)
            t0 = time.perf_counter()
            cur.execute(sql.SQL("SELECT {} FROM {}").format(counts, t.ident))
            values += sum(int(v) for v in cur.fetchone() or ())
            count_s += time.perf_counter() - t0
    conn.close()
    return copy_s, count_s, values


def _scan(url: str, policy: Any, user_ids: list[int]) -> dict[str, Any]:
    from lethe import residue
    from lethe.db import transaction

    with transaction(url) as cur:
        prints = residue.footprints(cur, policy, user_ids)
        index = residue.PlainIndex(prints)
        tables = residue.text_tables(cur, residue.policy_schemas(cur, policy))
        Clock.db = 0.0
        t0 = time.perf_counter()
        findings = residue.scan(cur, policy, index)
        wall = time.perf_counter() - t0
    return {
        "wall": wall,
        "db": Clock.db,
        "tables": tables,
        "people_found": len(findings),
        "cells": sum(sum(f.values()) for f in findings.values()),
        "footprint_values": sum(len(v) for p in prints for v in p.values.values()),
    }


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} / {five:.1f} / {fifteen:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lethe bench erasure", description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=1_000_000, help="people to seed (default 1,000,000)")
    parser.add_argument("--events", type=int, default=20_000_000, help="usage events to seed (default 20,000,000)")
    parser.add_argument("--batch", type=int, default=1000, help="requests in the batch run (default 1,000)")
    parser.add_argument("--singles", type=int, default=3, help="single-request runs to time (default 3)")
    parser.add_argument("--reuse", action="store_true", help="keep an earlier run's database at the same scale")
    parser.add_argument("--database", default=DATABASE, help=f"scratch database name (default {DATABASE})")
    parser.add_argument("--skip-scan", action="store_true", help="skip the scanner-vs-anchor measurement")
    parser.add_argument("--skip-batch", action="store_true", help="time the scanner and single runs only")
    args = parser.parse_args(argv)

    from lethe.embedded import EmbeddedPostgres
    from lethe.policy import load_policy

    server_url = os.environ.get("LETHE_DATABASE_URL") or EmbeddedPostgres().start()
    _install_timed_cursor()
    _time_scanner()
    policy = load_policy()
    print(f"load average at start (1/5/15 min): {_load()}")
    url, how = prepare(server_url, args.users, args.events, args.reuse, args.database)
    print(how, flush=True)

    people = _people(url, args.batch + args.singles, salt=int(time.time()))
    batch, singles = people[: args.batch], people[args.batch :]

    # pyarrow imports pandas on its first conversion of a Python value, once per process (seconds where
    # bytecode is not cached, PYTHONDONTWRITEBYTECODE): paid here, before the timings, as a worker has.
    t0 = time.perf_counter()
    import pyarrow as pa

    pa.array([0])
    print(f"warm-up, pyarrow's first conversion (imports pandas): {time.perf_counter() - t0:.2f} s")

    # 1. the scanner's pass for the batch's footprints, between two reads of the same columns
    from lethe import residue
    from lethe.db import transaction

    if not args.skip_scan:
        with transaction(url) as cur:
            tables = residue.text_tables(cur, residue.policy_schemas(cur, policy))
        copy1, count1, values = _read_text_columns(url, tables)
        scan = _scan(url, policy, [u for u, _ in batch])
        copy2, count2, _ = _read_text_columns(url, tables)
        anchor, count = min(copy1, copy2), min(count1, count2)
        print(f"load average after the scanner: {_load()}")
        print(
            f"scanner pass, {len(batch):,} people ({scan['footprint_values']:,} footprint values),"
            f" {len(tables)} tables, {values:,} non-null text values: {scan['wall']:.2f} s"
            f" ({scan['db']:.2f} s of it waiting on the database);"
            f" found {scan['people_found']:,} of them in {scan['cells']:,} rows x columns"
        )
        print(
            f"anchor, COPY of the same columns to the client: {copy1:.2f} s then {copy2:.2f} s;"
            f" server counting them: {count1:.2f} s then {count2:.2f} s"
        )
        ratio, per_count = scan["wall"] / anchor, scan["wall"] / count
        print(f"scanner / COPY anchor = {ratio:.2f}x (target <= 2x); / count = {per_count:.2f}x")

    # 2. single runs
    runs = []
    for person in singles:
        r = _erase(url, policy, [person])
        runs.append(r)
        print(
            f"single run: {r['wall']:.2f} s wall, {r['db']:.3f} s database in {r['statements']:,} calls;"
            f" scanner {r['passes']} passes {r['scan_wall']:.2f} s ({r['scan_db']:.3f} s database);"
            f" without the scanner {r['db'] - r['scan_db']:.3f} s database"
            f" ({r['vacuum']:.3f} s of it the VACUUM after the commit)",
            flush=True,
        )
        print(f"  largest database shares outside the scanner: {r['top']}")
        print(f"  inside the scanner: {r['top_scanner']}")
    if runs:
        db = statistics.median(r["db"] for r in runs)
        bare = statistics.median(r["db"] - r["scan_db"] for r in runs)
        unvacuumed = statistics.median(r["db"] - r["scan_db"] - r["vacuum"] for r in runs)
        print(
            f"one person, median of {len(runs)}: {db:.3f} s database, {bare:.3f} s without the scanner (target < 1 s),"
            f" {unvacuumed:.3f} s without the scanner and the VACUUM"
        )
    print(f"load average after the single runs: {_load()}")

    # 3. the batch
    if not args.skip_batch and batch:
        b = _erase(url, policy, batch)
        print(
            f"batch of {len(batch):,}: {b['wall']:.1f} s wall, {b['db']:.2f} s database in {b['statements']:,} calls;"
            f" scanner {b['passes']} passes {b['scan_wall']:.1f} s ({b['scan_db']:.2f} s database)"
        )
        print(f"  largest database shares outside the scanner: {b['top']}")
        print(f"  inside the scanner: {b['top_scanner']}")
        if runs:
            single_wall = statistics.mean(r["wall"] for r in runs) * len(batch)
            single_db = statistics.mean(r["db"] for r in runs) * len(batch)
            print(
                f"{len(batch):,} single runs (mean of {len(runs)} x {len(batch):,}): {single_wall:,.0f} s wall,"
                f" {single_db:,.0f} s database; batch is {single_wall / b['wall']:.0f}x faster (wall),"
                f" {single_db / b['db']:.0f}x (database) (target >= 50x)"
            )
        print(f"load average at the end: {_load()}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
