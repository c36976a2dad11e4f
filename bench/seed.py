"""Seed throughput: `lethe seed` rows/s, beside its anchor, a bare COPY of the same rows.

The anchor loads the seeded tables' own contents again (COPY TO, then COPY FROM
into empty copies with the same indexes), so it is the floor of what any
generator could reach on this machine and server. Run: `lethe bench seed --users 100000`.
"""

from __future__ import annotations

import argparse
import io
import time

from lethe.embedded import services
from psycopg2 import sql

TABLES = ("accounts", "usage_events", "visitor_logs", "sessions", "consents")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lethe bench seed")
    parser.add_argument("--users", type=int, default=100_000)
    args = parser.parse_args(argv)

    from lethe.db import connect, recreate_database
    from lethe.seed import seed

    with services() as (server_url, _):
        url = recreate_database(server_url, "lethe_bench_seed")
        started = time.perf_counter()
        counts = seed(url, args.users, progress=True)
        seed_s = time.perf_counter() - started
        total = sum(counts.values())

        conn = connect(url)
        conn.autocommit = True
        copied, copy_s = 0, 0.0
        with conn.cursor() as cur:
            for table in TABLES:
                buf = io.BytesIO()
                source, anchor = sql.Identifier(table), sql.Identifier(f"anchor_{table}")
                cur.copy_expert(sql.SQL("COPY (SELECT * FROM {}) TO STDOUT WITH (FORMAT csv)").format(source), buf)
                cur.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(anchor, source))
                buf.seek(0)
                t0 = time.perf_counter()
                cur.copy_expert(sql.SQL("COPY {} FROM STDIN WITH (FORMAT csv)").format(anchor), buf)
                copy_s += time.perf_counter() - t0
                copied += counts[table]
        conn.close()
    print(f"lethe seed --users {args.users}: {total:,} rows in {seed_s:.1f} s = {total / seed_s:,.0f} rows/s")
    print(f"anchor, bare COPY of {copied:,} of those rows: {copy_s:.1f} s = {copied / copy_s:,.0f} rows/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
