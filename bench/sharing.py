"""Benchmark: usage_sharing's aggregation step beside DuckDB computing the plain aggregate, same rows, same run.

Rows are generated here (the shape lethe.sharing.extract returns) and held in
memory as one Arrow table. Measured on the same rows in one run:

1. generalise: lethe.sharing.generalise.generalise(), raw rows -> integer cell codes.
2. The aggregation step over those coded rows (unit, day, cell, duration):
   - lethe: the bounded aggregate (lethe.sharing.aggregate.bounded_cells), DuckDB;
   - anchor: DuckDB computing the same aggregate as one plain SQL statement: per-person
     cells, a window ranking every person-day's cells, the capped sums and medians
     (written here, not Lethe's code; the bench checks both give the same cells);
   - floor: DuckDB's plain GROUP BY day, cell with count, count(DISTINCT unit), sum and
     median and no contribution bounds: a different, cheaper aggregate, shown as the
     lower bound of what any bounded aggregate can cost;
   - pandas: the same bounded aggregate in pandas (the engine choice).
3. End to end: lethe.sharing.aggregate.aggregate() (generalise + bounded step) beside
   DuckDB generalising in SQL (the same expressions, per row) + the same one-statement
   bounded aggregate, and + the plain GROUP BY floor.

Peak memory is the process's peak resident set during each step above what it
held before the step (VmHWM reset through /proc/self/clear_refs).

    uv run python bench/sharing.py                # 10M events (the issue's size)
    uv run python bench/sharing.py --rows 1000000 # quick run
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))

from lethe.sharing.aggregate import CELL_KEYS, aggregate, bounded_cells, connect_duckdb
from lethe.sharing.config import RecipientConfig
from lethe.sharing.generalise import generalise, select_sql

FEATURES = ["course_player", "code_lab", "quiz", "challenge", "forum", "certificate", "search", "profile"]
PAGES = ["/courses", "/labs/run?session=1", "/quiz/12", "/", "https://reskill.example/forum/t/9?x=1"]
ZONES = ["Asia/Kolkata", "Asia/Singapore", "America/New_York", "Europe/Berlin", "Asia/Dubai", None]
DEVICES = ["desktop", "mobile", "tablet", None]
BROWSERS = ["Chrome", "Firefox", "Safari", "Edge", None]
AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0) AppleWebKit/537.36 Chrome/130.0.6723.91 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
    "Mozilla/5.0 (Macintosh) AppleWebKit/605.1.15 Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0) Chrome/130.0.0.0 Safari/537.36 Edg/130.0.2849.68",
    None,
]


def _strings(rng: np.random.Generator, values: list[Any], n: int, p: list[float] | None = None) -> pa.Array:
    idx = rng.choice(len(values), size=n, p=p).astype("int32")
    return pa.DictionaryArray.from_arrays(pa.array(idx), pa.array(values, pa.string())).cast(pa.string())


def generate(rows: int, people: int, days: int, seed: int = 7) -> pa.Table:
    """Events of `people` people over `days` days; 80% usage events, 20% page views (a third anonymous)."""
    rng = np.random.default_rng(seed)
    # Skewed activity (lognormal weights): most people light, a few heavy enough to hit the bounds.
    weights = rng.lognormal(0.0, 1.5, people)
    unit = (rng.choice(people, size=rows, p=weights / weights.sum()) + 1).astype("int64")
    page = rng.random(rows) < 0.2
    anonymous = page & (rng.random(rows) < 0.33)
    unit = np.where(anonymous, -1 - rng.integers(0, people, rows), unit)
    day = (np.datetime64("2026-11-01") + rng.integers(0, days, rows).astype("timedelta64[D]")).astype("datetime64[D]")
    item = np.where(page, rng.integers(0, len(PAGES), rows), rng.integers(0, len(FEATURES), rows) + len(PAGES))
    items = PAGES + FEATURES
    duration = rng.lognormal(10.5, 1.2, rows).astype("int64")
    return pa.table(
        {
            "unit": unit,
            "day": pa.array(day, pa.date32()),
            "source": pa.DictionaryArray.from_arrays(pa.array(page.astype("int32")), pa.array(["usage", "page"])).cast(
                pa.string()
            ),
            "item": pa.DictionaryArray.from_arrays(pa.array(item.astype("int32")), pa.array(items)).cast(pa.string()),
            "duration_ms": pa.array(np.where(page, 0, duration), mask=page),
            "time_zone": _strings(rng, ZONES, rows),
            "device_type": _strings(rng, DEVICES, rows, [0.5, 0.35, 0.1, 0.05]),
            "browser": _strings(rng, BROWSERS, rows),
            "user_agent": _strings(rng, AGENTS, rows),
        }
    )


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def measure(fn: Callable[[], Any], repeat: int) -> tuple[float, float, Any]:
    """(median seconds, peak extra MiB, last result)."""
    times, peaks, result = [], [], None
    for _ in range(repeat):
        result = None
        gc.collect()
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
        base = _rss_kib("VmRSS")
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
        peaks.append(max(_rss_kib("VmHWM") - base, 0) / 1024)
    return statistics.median(times), max(peaks), result


def bounded_sql(source: str, keys: list[str], config: RecipientConfig) -> str:
    """The bounded aggregate as one straightforward DuckDB statement (the anchor): every person-day ranked."""
    cap, per_day, cols = int(config.max_events_per_cell), int(config.max_cells_per_day), ", ".join(keys)
    cell = ", ".join(k for k in keys if k != "day")
    return (
        f"SELECT {cols}, sum(least(n, {cap}))::BIGINT AS events, count(*)::BIGINT AS people, "  # noqa: S608 - no values
        f"round(sum(s * least(n, {cap}) / n))::BIGINT AS total_duration_ms, "
        "round(median(s / nullif(nd, 0)))::BIGINT AS median_duration_ms FROM ("
        f"SELECT * FROM (SELECT unit, {cols}, count(*) AS n, sum(d) AS s, count(d) AS nd FROM {source} "
        f"GROUP BY unit, {cols}) QUALIFY row_number() OVER (PARTITION BY unit, day ORDER BY n DESC, {cell}) "
        f"<= {per_day}) GROUP BY {cols} ORDER BY {cols}"
    )


def plain_sql(source: str, keys: list[str]) -> str:
    """The floor: one plain GROUP BY of the same cells, without contribution bounds."""
    cols = ", ".join(keys)
    return (
        f"SELECT {cols}, count(*) AS events, count(DISTINCT unit) AS people, sum(d) AS total_duration_ms, "  # noqa: S608 - no values
        f"median(d) AS median_duration_ms FROM {source} GROUP BY {cols} ORDER BY {cols}"
    )


def duckdb_raw(table: pa.Table, config: RecipientConfig, threads: int, bounded: bool) -> Any:
    """End-to-end anchors: per-row SQL generalisation, then the bounded statement or the plain GROUP BY."""
    con = connect_duckdb(threads)
    con.register("raw_events", table)
    source = f"({select_sql('raw_events', config.max_duration_ms)})"
    query = bounded_sql(source, list(CELL_KEYS), config) if bounded else plain_sql(source, list(CELL_KEYS))
    frame = con.execute(query).fetchnumpy()
    con.close()
    return frame


def duckdb_coded(rows: pa.Table, config: RecipientConfig, threads: int, bounded: bool) -> Any:
    """Aggregation-step anchors over the same coded rows: the bounded statement or the plain GROUP BY."""
    con = connect_duckdb(threads)
    con.register("coded", rows)
    keys = ["day", "cell"]
    result = con.execute(bounded_sql("coded", keys, config) if bounded else plain_sql("coded", keys)).fetchnumpy()
    con.close()
    return result


def same_cells(a: dict[str, Any], b: dict[str, Any]) -> bool:
    measures = ("day", "cell", "events", "people", "total_duration_ms", "median_duration_ms")
    return all(np.ma.allequal(np.ma.asarray(a[m]), np.ma.asarray(b[m])) for m in measures)


def lethe_coded(rows: pa.Table, config: RecipientConfig, threads: int) -> Any:
    """lethe's aggregation step: the bounded aggregate of the coded rows, with its bound statistics."""
    con = connect_duckdb(threads)
    con.register("coded", rows)
    cells, _ = bounded_cells(con, "coded", config)
    con.close()
    return cells


def lethe_end_to_end(table: pa.Table, config: RecipientConfig, threads: int) -> Any:
    con = connect_duckdb(threads)
    result = aggregate(table, config, con)
    con.close()
    return result.cells


def pandas_bounded(g: Any, config: RecipientConfig) -> Any:
    grouped = g.groupby(["unit", "day", "cell"], sort=False)["d"]
    per = grouped.agg(["size", "count"]).rename(columns={"size": "n", "count": "nd"})
    per["s"] = grouped.sum(min_count=1)
    per = per.reset_index().sort_values(["unit", "day", "n", "cell"], ascending=[True, True, False, True])
    per = per[per.groupby(["unit", "day"], sort=False).cumcount() < config.max_cells_per_day]
    capped = per["n"].clip(upper=config.max_events_per_cell)
    per = per.assign(events=capped, total=per["s"] * capped / per["n"], mean=per["s"] / per["nd"].where(per["nd"] > 0))
    return (
        per.groupby(["day", "cell"])
        .agg(events=("events", "sum"), people=("unit", "size"), total=("total", "sum"), median=("mean", "median"))
        .reset_index()
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench sharing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="events to aggregate (default 10M)")
    parser.add_argument("--people", type=int, default=0, help="distinct people (default rows / 40)")
    parser.add_argument("--days", type=int, default=7, help="days the events span (default 7)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the median is reported")
    parser.add_argument("--threads", type=int, default=2, help="DuckDB threads (default 2, this machine's cores)")
    parser.add_argument("--no-pandas", action="store_true", help="skip the pandas comparison")
    args = parser.parse_args(argv)
    people = args.people or max(args.rows // 40, 100)
    config = RecipientConfig(name="bench")

    started = time.perf_counter()
    table = generate(args.rows, people, args.days)
    print(
        f"generated {table.num_rows:,} events of {people:,} people over {args.days} days "
        f"({table.nbytes / 2**20:,.0f} MiB Arrow) in {time.perf_counter() - started:.1f} s"
    )

    con = connect_duckdb(args.threads)
    t_gen, m_gen, g = measure(lambda: generalise(table, config.dimensions, config.max_duration_ms, con), args.repeat)
    con.close()
    coded = g.rows
    t_anchor, m_anchor, anchor = measure(lambda: duckdb_coded(coded, config, args.threads, True), args.repeat)
    t_lethe, m_lethe, cells = measure(lambda: lethe_coded(coded, config, args.threads), args.repeat)
    t_floor, m_floor, floor = measure(lambda: duckdb_coded(coded, config, args.threads, False), args.repeat)
    step = [
        ("anchor: DuckDB, the same bounded aggregate as one SQL statement", t_anchor, m_anchor, len(anchor["cell"])),
        ("lethe: bounded aggregate (bounded_cells), DuckDB", t_lethe, m_lethe, len(cells["cell"])),
        ("floor: DuckDB plain GROUP BY, no contribution bounds", t_floor, m_floor, len(floor["cell"])),
    ]
    if not args.no_pandas:
        frame = coded.to_pandas()
        t_pandas, m_pandas, pcells = measure(lambda: pandas_bounded(frame, config), max(1, min(args.repeat, 2)))
        step.append(("pandas: same bounded aggregate", t_pandas, m_pandas, len(pcells)))
        del frame, pcells
    t_e2e_anchor, m_e2e_anchor, e2e_anchor = measure(lambda: duckdb_raw(table, config, args.threads, True), args.repeat)
    t_e2e, m_e2e, e2e = measure(lambda: lethe_end_to_end(table, config, args.threads), args.repeat)
    t_e2e_floor, m_e2e_floor, e2e_floor = measure(lambda: duckdb_raw(table, config, args.threads, False), args.repeat)
    ends = [
        ("anchor: DuckDB SQL generalisation per row + the bounded statement", t_e2e_anchor, m_e2e_anchor,
         len(e2e_anchor["day"])),
        ("lethe: aggregate() = generalise() + bounded aggregate", t_e2e, m_e2e, len(e2e)),
        ("floor: DuckDB SQL generalisation per row + plain GROUP BY", t_e2e_floor, m_e2e_floor,
         len(e2e_floor["day"])),
    ]  # fmt: skip
    title = f"{args.rows:,} events, {args.threads} DuckDB threads, median of {args.repeat}"
    print(f"\ngeneralise() {t_gen:.2f} s, peak extra {m_gen:,.0f} MiB, {len(coded):,} coded rows\n")
    for heading, rows in (("aggregation step over the coded rows", step), ("end to end from raw rows", ends)):
        print(f"| {heading} ({title}) | seconds | peak extra memory MiB | cells |")
        print("| --- | ---: | ---: | ---: |")
        for name, seconds, peak, n in rows:
            print(f"| {name} | {seconds:.2f} | {peak:,.0f} | {n:,} |")
        print()
    print(f"aggregation step: lethe's cells equal the anchor's: {same_cells(cells, anchor)}")
    for label, mine, anchor_t, floor_t in (
        ("aggregation step", t_lethe, t_anchor, t_floor),
        ("end to end", t_e2e, t_e2e_anchor, t_e2e_floor),
    ):
        ratio = mine / anchor_t
        print(
            f"{label}: lethe / anchor = {ratio:.2f}x (target <= 1.5x): {'met' if ratio <= 1.5 else 'NOT met'}; "
            f"lethe / unbounded floor = {mine / floor_t:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
