"""Benchmark: usage_sharing's aggregate run in PostgreSQL, beside the in-worker path it replaced and a plain GROUP BY.

Loads a window of generated usage events and page views into re:Skill's tables in a fresh
database (the embedded PostgreSQL, or the server of LETHE_DATABASE_URL), then measures, on the
same rows in one run:

1. before: the path usage_sharing used until issue #20 item 4 (bench/_sharing_worker.py): COPY
   of the window's consented rows to the worker, then generalisation and the bounded aggregate
   in DuckDB there; also its COPY alone;
2. lethe: lethe.sharing.query.compute, the consent filter, generalisation and bounded aggregate
   as one PostgreSQL statement generated from the policy's `sharing.source`; only cells return;
3. anchor: a plain GROUP BY in PostgreSQL over the same generalised, consented rows (events,
   distinct people, duration sum and median; no contribution bounds), written here.

Each: seconds (median of --repeat), bytes and rows that crossed to the worker (COPY ... TO
STDOUT, CSV), the worker's peak resident memory above what it held before (VmHWM, reset through
/proc/self/clear_refs), and the temporary-file bytes PostgreSQL wrote (pg_stat_database).
The server's own memory is bounded by its work_mem, left at its default.

    uv run python bench/sharing.py                  # 1M events over 7 days
    uv run python bench/sharing.py --rows 3000000
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _sharing_worker import aggregate as worker_aggregate
from _sharing_worker import connect_duckdb, extract
from lethe.sharing import query
from lethe.sharing.config import RecipientConfig
from psycopg2 import sql

FEATURES = ["course_player", "code_lab", "quiz", "challenge", "forum", "certificate", "search", "profile"]
PAGES = ["/courses", "/labs/run?session=1", "/quiz/12", "/", "https://reskill.example/forum/t/9?x=1"]
ZONES = ["Asia/Kolkata", "Asia/Singapore", "America/New_York", "Europe/Berlin", "Asia/Dubai", None]
DEVICES = ["desktop", "mobile", "tablet", None]
AGENTS = [
    ("Chrome", "Mozilla/5.0 (Windows NT 10.0) AppleWebKit/537.36 Chrome/130.0.6723.91 Safari/537.36"),
    ("Firefox", "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0"),
    ("Safari", "Mozilla/5.0 (Macintosh) AppleWebKit/605.1.15 Version/18.1 Safari/605.1.15"),
    (None, "Mozilla/5.0 (Windows NT 10.0) Chrome/130.0.0.0 Safari/537.36 Edg/130.0.2849.68"),
    (None, None),
]


def _pick(rng: np.random.Generator, values: list[Any], n: int, p: list[float] | None = None) -> pa.Array:
    return pa.array([values[i] for i in rng.choice(len(values), size=n, p=p)], pa.string())


def load(url: str, rows: int, people: int, start: datetime, days: int, seed: int = 7) -> dict[str, int]:
    """Accounts, analytics consents (90% hold; 4% none, 3% withdrawn, 3% objected) and `rows` events in the window:
    80% usage events, 20% page views (a third anonymous); skewed activity, so a few people hit the bounds."""
    from lethe.db import connect

    rng = np.random.default_rng(seed)
    weights = rng.lognormal(0.0, 1.5, people)
    page = rng.random(rows) < 0.2
    n_pages, n_usage = int(page.sum()), int((~page).sum())
    window_us = days * 86_400_000_000
    start_us = int(start.timestamp() * 1_000_000)

    def users(n: int) -> np.ndarray:
        return (rng.choice(people, size=n, p=weights / weights.sum()) + 1).astype("int64")

    def times(n: int) -> pa.Array:
        return pa.array(start_us + rng.integers(0, window_us, n), pa.timestamp("us", tz="UTC"))

    usage = pa.table(
        {
            "event_id": np.arange(1, n_usage + 1),
            "user_id": users(n_usage),
            "occurred_at": times(n_usage),
            "feature": _pick(rng, FEATURES, n_usage),
            "duration_ms": rng.lognormal(10.5, 1.2, n_usage).astype("int64").clip(0, 2**31 - 1).astype("int32"),
        }
    )
    member = users(n_pages).astype("float64")
    member[rng.random(n_pages) < 0.33] = np.nan
    agent = rng.choice(len(AGENTS), size=n_pages)
    pages = pa.table(
        {
            "log_id": np.arange(1, n_pages + 1),
            "user_id": pa.array(pd.array(member, dtype="Int64")),
            "visitor_id": pa.array([f"v{x:015x}" for x in rng.integers(0, people, n_pages)]),
            "occurred_at": times(n_pages),
            "device_type": _pick(rng, DEVICES, n_pages, [0.5, 0.35, 0.1, 0.05]),
            "browser": pa.array([AGENTS[a][0] for a in agent], pa.string()),
            "user_agent": pa.array([AGENTS[a][1] for a in agent], pa.string()),
            "file_accessed": _pick(rng, PAGES, n_pages),
            "time_zone": _pick(rng, ZONES, n_pages),
        }
    )
    conn = connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO accounts (user_id, name, username, email, password_hash, created_at) SELECT u, 'P' || u,"
            " 'm' || u, 'm' || u || '@example.com', 'x', now() - interval '500 days' FROM generate_series(1, %s) u",
            (people,),
        )
        cur.execute(
            "INSERT INTO consents (consent_id, user_id, purpose, granted_at, withdrawn_at, objected_at)"
            " SELECT u, u, 'analytics', now() - interval '400 days',"
            " CASE WHEN u %% 100 BETWEEN 4 AND 6 THEN now() - interval '1 hour' END,"
            " CASE WHEN u %% 100 BETWEEN 7 AND 9 THEN now() - interval '1 hour' END"
            " FROM generate_series(1, %s) u WHERE u %% 100 >= 4",
            (people,),
        )
        for name, table in (("usage_events", usage), ("visitor_logs", pages)):
            for batch in table.to_batches(max_chunksize=500_000):
                buf = io.BytesIO()
                pacsv.write_csv(pa.Table.from_batches([batch]), buf)
                buf.seek(0)
                columns = sql.SQL(", ").join(sql.Identifier(c) for c in table.column_names)
                cur.copy_expert(
                    sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv, HEADER)")
                    .format(sql.Identifier(name), columns)
                    .as_string(cur),
                    buf,
                )
        cur.execute("ANALYZE")
    conn.close()
    return {"usage_events": n_usage, "visitor_logs": n_pages}


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _temp_bytes(url: str) -> int:
    from lethe.db import connect

    time.sleep(0.5)  # a closed backend's statistics reach pg_stat_database as it exits
    conn = connect(url)
    with conn.cursor() as cur:
        cur.execute("SELECT temp_bytes FROM pg_stat_database WHERE datname = current_database()")
        value = int(cur.fetchone()[0])  # type: ignore[index]
    conn.close()
    return value


def measure(url: str, fn: Callable[[], Any], repeat: int) -> tuple[float, float, float, Any]:
    """(median seconds, peak extra worker MiB, PostgreSQL temp MiB per run, last result)."""
    times, peaks, temps, result = [], [], [], None
    for _ in range(repeat):
        result = None
        gc.collect()
        temp_before = _temp_bytes(url)
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
        base = _rss_kib("VmRSS")
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
        peaks.append(max(_rss_kib("VmHWM") - base, 0) / 1024)
        temps.append((_temp_bytes(url) - temp_before) / 2**20)
    return statistics.median(times), max(peaks), statistics.median(temps), result


def anchor_sql(policy: Any, config: RecipientConfig) -> sql.Composable:
    """The anchor: one plain GROUP BY of the same generalised, consented rows; no contribution bounds."""
    rows = query.rows_sql(policy.sharing.source, policy.clock_consent_ended(), config)
    keys = sql.SQL("day, source, feature, region, device_type, browser_family")
    return sql.SQL(
        "WITH {rows} SELECT {keys}, count(*) AS events, count(DISTINCT (person, visitor)) AS people,"
        " sum(d) AS total_duration_ms, percentile_cont(0.5) WITHIN GROUP (ORDER BY d) AS median_duration_ms"
        " FROM generalised GROUP BY {keys} ORDER BY {keys}"
    ).format(rows=rows, keys=keys)


def run_anchor(url: str, policy: Any, config: RecipientConfig, start: datetime, end: datetime) -> tuple[int, int]:
    """(bytes, rows) the anchor's cells took to reach the worker."""
    from lethe.db import connect

    conn = connect(url)
    with conn.cursor() as cur:
        cur.execute("SET LOCAL TIME ZONE 'UTC'")
        body = query.run_copy(
            cur, anchor_sql(policy, config), query.params(policy.sharing.source, query.Window(start, end))
        )
    conn.rollback()
    conn.close()
    return len(body), body.count(b"\n") - 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench sharing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="events in the window (default 1M)")
    parser.add_argument("--people", type=int, default=0, help="distinct members (default rows / 40)")
    parser.add_argument("--days", type=int, default=7, help="days of the window (default 7)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the median is reported")
    parser.add_argument("--threads", type=int, default=2, help="DuckDB threads of the before path (default 2)")
    args = parser.parse_args(argv)
    people = args.people or max(args.rows // 40, 100)

    from lethe.db import recreate_database
    from lethe.embedded import services
    from lethe.policy import load_policy
    from lethe.seed import create_platform

    policy = load_policy()
    config = RecipientConfig(name="bench")  # the policy's default bounds, every dimension
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = end - timedelta(days=args.days)
    with services() as (server_url, _):
        url = recreate_database(server_url, "lethe_bench_sharing")
        from lethe.db import transaction

        with transaction(url) as cur:
            create_platform(cur, end, months_back=2, months_ahead=1)
        started = time.perf_counter()
        counts = load(url, args.rows, people, start, args.days)
        print(
            f"loaded {counts['usage_events']:,} usage events and {counts['visitor_logs']:,} page views of "
            f"{people:,} members over {args.days} days in {time.perf_counter() - started:.1f} s"
        )

        def before() -> Any:
            events, copied = extract(url, start, end, anonymous_visitors=config.anonymous_visitors)
            con = connect_duckdb(args.threads)
            result = worker_aggregate(events, config, con)
            con.close()
            return result, copied, events.num_rows

        def copy_only() -> Any:
            events, copied = extract(url, start, end, anonymous_visitors=config.anonymous_visitors)
            return copied, events.num_rows

        t_b, m_b, tmp_b, (agg_b, bytes_b, rows_b) = measure(url, before, args.repeat)
        t_c, m_c, tmp_c, (bytes_c, rows_c) = measure(url, copy_only, args.repeat)
        t_l, m_l, tmp_l, agg_l = measure(url, lambda: query.compute(url, config, start, end, policy), args.repeat)
        t_a, m_a, tmp_a, (bytes_a, rows_a) = measure(
            url, lambda: run_anchor(url, policy, config, start, end), args.repeat
        )
    table = [
        ("before: COPY rows to the worker + DuckDB bounded aggregate", t_b, bytes_b, rows_b, m_b, tmp_b),
        ("  of which the COPY of the rows alone", t_c, bytes_c, rows_c, m_c, tmp_c),
        ("lethe: bounded aggregate in PostgreSQL, cells only", t_l, agg_l.bytes_in, len(agg_l.cells), m_l, tmp_l),
        ("anchor: plain GROUP BY in PostgreSQL, no bounds", t_a, bytes_a, rows_a, m_a, tmp_a),
    ]
    print(
        f"\n| {args.rows:,} events, {args.days} days, median of {args.repeat} | seconds | bytes to the worker"
        " | rows to the worker | worker peak extra MiB | PostgreSQL temp MiB |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, seconds, nbytes, nrows, peak, temp in table:
        print(f"| {name} | {seconds:.2f} | {nbytes:,} | {nrows:,} | {peak:,.0f} | {temp:,.0f} |")
    same = agg_b.cells.equals(agg_l.cells) and agg_b.contributions == agg_l.contributions
    print(f"\nlethe's cells equal the before path's: {same} ({len(agg_l.cells):,} cells, {agg_l.rows_in:,} rows in)")
    print(
        f"lethe / before = {t_l / t_b:.2f}x time, {agg_l.bytes_in / bytes_b:.5f}x bytes; "
        f"lethe / anchor = {t_l / t_a:.2f}x time"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
