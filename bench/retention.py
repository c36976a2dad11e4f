"""Retention purge benchmark: Lethe's batched purge beside one big DELETE, and partition drops at two sizes.

A. An event table (default 2M rows) with two secondary indexes, half of it expired, and an
   identical copy. The anchor runs one `DELETE ... WHERE ts < cutoff` on the copy; Lethe plans and
   executes its rule (primary-key range batches, legal holds honoured) on the original. Reports
   throughput of both and Lethe's per-transaction p50/p99/max.
B. A monthly-partitioned event table at two sizes (default 1M and 10M rows), half the months
   expired, a few people under legal hold: Lethe's drop_partitions purge (held rows kept).

Run: `lethe bench retention` or `uv run python bench/retention.py [--rows N] [--partition-rows A B]`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

HELD_USERS = (11, 22, 33, 44, 55)
USERS = 100_000


def _policy_file(directory: Path) -> Path:
    """The shipped policy plus the two benchmark tables."""
    from lethe.policy import load_policy

    data = yaml.safe_load(Path(str(load_policy().path)).read_text())
    columns = {"event_id": "identifier", "user_id": "identifier", "ts": "timestamp", "feature": "usage"}
    common = {"purpose": "usage", "legal_basis": "legitimate_interest", "subject": "user_id", "backup": False}
    data["tables"]["bench_events"] = {
        **common,
        "description": "benchmark events",
        "columns": columns,
        "retention": [{"name": "bench_expired_events", "keep": "P0D", "after": "ts", "action": "delete"}],
        "erasure": {"action": "delete"},
    }
    data["tables"]["bench_parts"] = {
        **common,
        "description": "benchmark partitioned events",
        "columns": columns,
        "partitioned_by": "ts",
        "retention": [{"name": "bench_expired_partitions", "keep": "P0D", "after": "ts", "action": "drop_partitions"}],
        "erasure": {"action": "delete"},
    }
    path = directory / "bench-policy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _sql(url: str, *statements: str, params: Any = None) -> float:
    """Run statements in autocommit; `params` go to those that use %(name)s placeholders."""
    import psycopg2

    conn = psycopg2.connect(url)
    conn.autocommit = True
    started = time.perf_counter()
    with conn.cursor() as cur:
        for s in statements:
            if "%(" in s:
                cur.execute(s, params)
            else:
                cur.execute(s)
    conn.close()
    return time.perf_counter() - started


def _holds(url: str) -> None:
    _sql(
        url,
        "INSERT INTO accounts (user_id, name, username, email, password_hash, created_at) SELECT u, 'B', "
        "'b' || u, 'b' || u || '@example.com', 'x', now() FROM unnest(%(u)s::bigint[]) u",
        params={"u": list(HELD_USERS)},
    )
    _sql(
        url,
        "INSERT INTO legal_holds (hold_id, subject_key, reason, placed_at) SELECT u, u::text, 'bench', now()"
        " FROM unnest(%(u)s::bigint[]) u",
        params={"u": list(HELD_USERS)},
    )


def _purge(url: str, policy: Path, rule: str, now: datetime) -> tuple[Any, Any, float, float]:
    from lethe.db import transaction
    from lethe.policy import load_policy
    from lethe.retention.execute import execute_rule
    from lethe.retention.plan import build_plan

    loaded = load_policy(policy)
    started = time.perf_counter()
    with transaction(url) as cur:
        plan = build_plan(cur, now, policy=loaded, rules=[rule])
    planned = time.perf_counter() - started
    started = time.perf_counter()
    result = execute_rule(url, plan, rule, policy=loaded)
    return plan.rules[0], result, planned, time.perf_counter() - started


def bench_delete(url: str, policy: Path, rows: int, anchor_first: bool) -> dict[str, Any]:
    """A: Lethe's batched purge vs one DELETE, on identical tables in the same database."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    for table in ("bench_events", "bench_anchor"):
        _sql(
            url,
            f"DROP TABLE IF EXISTS {table}",
            f"CREATE TABLE {table} (event_id bigint PRIMARY KEY, user_id bigint NOT NULL, ts timestamptz NOT NULL,"
            " feature text NOT NULL)",
            # Appended in time order, as event tables are; half of the rows are before `now`.
            f"INSERT INTO {table} SELECT g, g %% {USERS}, %(now)s + (g - {rows // 2}) * interval '1 second',"  # noqa: S608
            f" 'feature_' || (g %% 7) FROM generate_series(1, {rows}) g",
            f"CREATE INDEX ON {table} (ts)",
            f"CREATE INDEX ON {table} (user_id)",
            f"VACUUM ANALYZE {table}",
            params={"now": now},
        )
    anchor_s = 0.0
    for side in ("anchor", "lethe") if anchor_first else ("lethe", "anchor"):
        _sql(url, "CHECKPOINT")
        if side == "anchor":
            anchor_s = _sql(url, "DELETE FROM bench_anchor WHERE ts < %(now)s", params={"now": now})
        else:
            rp, result, plan_s, exec_s = _purge(url, policy, "bench_expired_events", now)
    anchor_rows = rows // 2 - 1
    ms = sorted(result.batch_ms)
    return {
        "rows": rows,
        "anchor_rows": anchor_rows,
        "anchor_s": anchor_s,
        "lethe_rows": result.rows,
        "lethe_held": rp.held,
        "plan_s": plan_s,
        "exec_s": exec_s,
        "batches": len(ms),
        "p50": statistics.median(ms),
        "p99": ms[min(len(ms) - 1, int(len(ms) * 0.99))],
        "max": ms[-1],
        "ms": ms,
    }


def bench_partitions(url: str, policy: Path, rows: int) -> dict[str, Any]:
    """B: drop the expired half of 24 monthly partitions (held rows kept)."""
    from lethe.db import ensure_month_partitions, transaction

    now = datetime(2026, 1, 1, tzinfo=UTC)
    _sql(url, "DROP TABLE IF EXISTS bench_parts")
    _sql(
        url,
        "CREATE TABLE bench_parts (event_id bigint NOT NULL, user_id bigint NOT NULL, ts timestamptz NOT NULL,"
        " feature text NOT NULL, PRIMARY KEY (event_id, ts)) PARTITION BY RANGE (ts)",
        "CREATE INDEX ON bench_parts (user_id)",
    )
    with transaction(url) as cur:
        ensure_month_partitions(cur, "bench_parts", datetime(2025, 1, 1).date(), datetime(2026, 12, 1).date())
    span = 730 * 86400
    started = time.perf_counter()
    _sql(
        url,
        f"INSERT INTO bench_parts SELECT g, g %% {USERS},"  # noqa: S608
        f" %(start)s + (g::float8 * {span} / {rows}) * interval '1 second',"
        f" 'feature_' || (g %% 7) FROM generate_series(0, {rows - 1}) g",
        "VACUUM ANALYZE bench_parts",
        params={"start": datetime(2025, 1, 1, tzinfo=UTC)},
    )
    load_s = time.perf_counter() - started
    rp, result, plan_s, exec_s = _purge(url, policy, "bench_expired_partitions", now)
    ms = sorted(result.batch_ms)
    return {
        "rows": rows,
        "load_s": load_s,
        "dropped_rows": result.rows,
        "held_kept": rp.held,
        "partitions": result.partitions_dropped,
        "plan_s": plan_s,
        "exec_s": exec_s,
        "max_txn_ms": ms[-1] if ms else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lethe bench retention", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows of the event table in A (default 2M)")
    parser.add_argument(
        "--partition-rows", type=int, nargs="+", default=[1_000_000, 10_000_000], help="sizes for B (default 1M 10M)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="repetitions of A, alternating which side goes first")
    args = parser.parse_args(argv)

    from lethe import testing
    from lethe.embedded import services

    with services() as (server, _), tempfile.TemporaryDirectory() as tmp:
        policy = _policy_file(Path(tmp))
        testing.build_template(server)
        url = testing.fresh_database(server, prefix="lethe_bench")
        try:
            _holds(url)
            print(f"A. {args.rows:,}-row event table, two secondary indexes, half expired", flush=True)
            ratios, batch_ratios, all_ms = [], [], []
            for i in range(args.repeat):
                a = bench_delete(url, policy, args.rows, anchor_first=i % 2 == 0)
                anchor_tput = a["anchor_rows"] / a["anchor_s"]
                lethe_tput = a["lethe_rows"] / a["exec_s"]
                ratios.append(lethe_tput / anchor_tput)
                batch_s = sum(a["ms"]) / 1000
                batch_ratios.append(a["lethe_rows"] / batch_s / anchor_tput)
                all_ms += a["ms"]
                print(
                    f"   run {i + 1} ({'anchor' if i % 2 == 0 else 'lethe'} first): anchor one DELETE"
                    f" {a['anchor_rows']:,} rows in {a['anchor_s']:.2f} s = {anchor_tput:,.0f} rows/s;"
                    f" lethe {a['batches']} batches {a['lethe_rows']:,} rows in {a['exec_s']:.2f} s"
                    f" = {lethe_tput:,.0f} rows/s = {ratios[-1]:.2f}x ({batch_ratios[-1]:.2f}x counting only its batch"
                    f" transactions, {batch_s:.2f} s); plan {a['plan_s']:.2f} s;"
                    f" {a['lethe_held']:,} held rows kept",
                    flush=True,
                )
            all_ms.sort()
            print(
                f"   median lethe/anchor throughput over {args.repeat} runs: {statistics.median(ratios):.2f}x"
                " end to end (connection, checkpoints, ledger entry included),"
                f" {statistics.median(batch_ratios):.2f}x batches only"
            )
            print(
                f"   lethe transactions ({len(all_ms)}): p50 {statistics.median(all_ms):.1f} ms,"
                f" p99 {all_ms[min(len(all_ms) - 1, int(len(all_ms) * 0.99))]:.1f} ms, max {all_ms[-1]:.1f} ms"
            )
            print("B. monthly-partitioned event table, 24 months, 12 expired, 5 people held", flush=True)
            for n in args.partition_rows:
                b = bench_partitions(url, policy, n)
                print(
                    f"   {b['rows']:>11,} rows: purge {b['exec_s']:.2f} s ({b['partitions']} partitions,"
                    f" {b['dropped_rows']:,} rows dropped, {b['held_kept']:,} held rows kept,"
                    f" max txn {b['max_txn_ms']:.0f} ms); plan with exact counts {b['plan_s']:.2f} s;"
                    f" load {b['load_s']:.0f} s",
                    flush=True,
                )
        finally:
            testing.drop_database(url)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
