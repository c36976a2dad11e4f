"""usage_sharing's in-worker aggregation as it was before it moved into PostgreSQL (issue #20, item 4).

Kept only as bench/sharing.py's comparison ("before"): the window's consented rows copied out of
the primary with COPY (extract), generalised into integer cell codes and aggregated with bounded
contributions in DuckDB, in the worker. Lethe itself now runs lethe.sharing.query in PostgreSQL.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from lethe.db import connect
from lethe.sharing.aggregate import Aggregate, normalise
from lethe.sharing.config import ALL, DIMENSIONS, RecipientConfig

CELL_KEYS = ("day", "source", *DIMENSIONS)
MEASURES = ("events", "people", "total_duration_ms", "median_duration_ms")

COLUMNS = {
    "unit": pa.int64(),  # counting key: user_id (> 0) or a hashed cookie (< 0); never published
    "day": pa.date32(),
    "source": pa.string(),  # usage | page
    "item": pa.string(),  # usage feature or page path
    "duration_ms": pa.int64(),
    "time_zone": pa.string(),
    "device_type": pa.string(),
    "browser": pa.string(),
    "user_agent": pa.string(),
}

_CONSENTED = """
consented AS (
    SELECT user_id, granted_at FROM consents
    WHERE purpose = 'analytics' AND withdrawn_at IS NULL AND objected_at IS NULL
)"""

_USAGE = f"""
WITH {_CONSENTED},
profile AS (
    SELECT DISTINCT ON (v.user_id, v.occurred_at::date)
           v.user_id, v.occurred_at::date AS day, v.time_zone, v.device_type, v.browser, v.user_agent
    FROM visitor_logs v JOIN consented c ON c.user_id = v.user_id AND v.occurred_at >= c.granted_at
    WHERE v.occurred_at >= %(start)s AND v.occurred_at < %(end)s
    ORDER BY v.user_id, v.occurred_at::date, v.occurred_at, v.log_id
)
SELECT e.user_id AS unit, e.occurred_at::date AS day, 'usage' AS source, e.feature AS item, e.duration_ms,
       p.time_zone, p.device_type, p.browser, p.user_agent
FROM usage_events e
JOIN consented c ON c.user_id = e.user_id AND e.occurred_at >= c.granted_at
LEFT JOIN profile p ON p.user_id = e.user_id AND p.day = e.occurred_at::date
WHERE e.occurred_at >= %(start)s AND e.occurred_at < %(end)s
"""  # noqa: S608 - constant SQL, values bound by psycopg2

_PAGES = f"""
WITH {_CONSENTED}
SELECT v.user_id AS unit, v.occurred_at::date AS day, 'page' AS source, v.file_accessed AS item,
       NULL::integer AS duration_ms, v.time_zone, v.device_type, v.browser, v.user_agent
FROM visitor_logs v JOIN consented c ON c.user_id = v.user_id AND v.occurred_at >= c.granted_at
WHERE v.occurred_at >= %(start)s AND v.occurred_at < %(end)s
"""  # noqa: S608 - constant SQL, values bound by psycopg2

# A 60-bit slice of the cookie's md5, negated: disjoint from user ids, never leaves this process.
_ANONYMOUS = """
SELECT -1 - ('x' || substr(md5(v.visitor_id), 1, 15))::bit(60)::bigint AS unit, v.occurred_at::date AS day,
       'page' AS source, v.file_accessed AS item, NULL::integer AS duration_ms,
       v.time_zone, v.device_type, v.browser, v.user_agent
FROM visitor_logs v
WHERE v.user_id IS NULL AND v.occurred_at >= %(start)s AND v.occurred_at < %(end)s
"""


def extract(
    url: str, start: datetime, end: datetime, *, anonymous_visitors: str = "by_visitor_id"
) -> tuple[pa.Table, int]:
    """The consented rows with occurred_at in [start, end), days in UTC, as an Arrow table; and the bytes copied."""
    queries = [_USAGE, _PAGES] + ([_ANONYMOUS] if anonymous_visitors == "by_visitor_id" else [])
    tables, copied = [], 0
    conn = connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")
            for query in queries:
                bound = cur.mogrify(query, {"start": start, "end": end}).decode()
                # COPY through a temporary file: PostgreSQL's fastest way out, and not held twice in memory.
                with tempfile.TemporaryFile() as buf:
                    cur.copy_expert(f"COPY ({bound}) TO STDOUT WITH (FORMAT csv, HEADER)", buf)
                    copied += buf.tell()
                    buf.seek(0)
                    tables.append(
                        pacsv.read_csv(
                            buf,
                            convert_options=pacsv.ConvertOptions(
                                column_types=COLUMNS, strings_can_be_null=True, quoted_strings_can_be_null=False
                            ),
                        )
                    )
        conn.rollback()
    finally:
        conn.close()
    return pa.concat_tables(tables).select(list(COLUMNS)), copied


# The same generalisation tables as the PostgreSQL statement: the comparison differs in where it runs only.
from lethe.sharing.query import BROWSERS, DEVICES, MAX_FEATURE_LENGTH, REGIONS  # noqa: E402


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def region() -> str:
    regions = ", ".join(_quote(r) for r in REGIONS)
    continent = "split_part(time_zone, '/', 1)"
    return f"coalesce(CASE WHEN {continent} IN ({regions}) THEN {continent} END, 'unknown')"


def device_type() -> str:
    devices = ", ".join(_quote(d) for d in DEVICES)
    return (
        "CASE WHEN device_type IS NULL OR trim(device_type) = '' THEN 'unknown' "
        f"WHEN lower(trim(device_type)) IN ({devices}) THEN lower(trim(device_type)) ELSE 'other' END"
    )


def browser_family() -> str:
    """Family from the `browser` column (else the user agent), plus the major version when the agent has one."""
    family_cases = []
    version_cases = []
    for family, tokens in BROWSERS:
        alternatives = "|".join(tokens)
        family_cases.append(
            f"WHEN lower(browser) LIKE {_quote(family.lower() + '%')} THEN {_quote(family)} "
            f"WHEN browser IS NULL AND regexp_matches(user_agent, {_quote('(?:' + alternatives + ')/')}) "
            f"THEN {_quote(family)}"
        )
        version_cases.append(
            f"WHEN {_quote(family)} THEN "
            f"regexp_extract(user_agent, {_quote('(?:' + alternatives + ')/([0-9]{1,3})')}, 1)"
        )
    family = (
        f"(CASE {' '.join(family_cases)} WHEN browser IS NULL AND user_agent IS NULL THEN 'unknown' ELSE 'other' END)"
    )
    version = f"(CASE {family} {' '.join(version_cases)} ELSE '' END)"
    return f"trim({family} || ' ' || coalesce({version}, ''))"


def feature() -> str:
    """Usage: the product's feature name. Pages: the first path segment, scheme, host and query removed."""
    path = "split_part(split_part(regexp_replace(item, '^[A-Za-z][A-Za-z0-9+.-]*://[^/]*', ''), '?', 1), '#', 1)"
    section = f"lower(regexp_extract({path}, '^/*([^/]*)', 1))"
    usage = f"left(lower(trim(item)), {MAX_FEATURE_LENGTH})"
    page = f"left('/' || {section}, {MAX_FEATURE_LENGTH})"
    return f"CASE WHEN item IS NULL OR trim(item) = '' THEN 'unknown' WHEN source = 'page' THEN {page} ELSE {usage} END"


@dataclass
class Generalised:
    """Rows reduced to integer cell codes; `values[k]` decodes dimension k (sorted, so codes sort like values)."""

    rows: pa.Table  # unit int64, day date32, cell int64, d int64 (clipped duration, NULL for page views)
    values: dict[str, np.ndarray]

    def decode(self, cells: np.ndarray) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        rest = np.asarray(cells, dtype="int64")
        for key in reversed(CELL_DIMENSIONS):
            values = self.values[key]
            rest, index = np.divmod(rest, len(values))
            out[key] = values[index]
        return {k: out[k] for k in CELL_DIMENSIONS}


CELL_DIMENSIONS = ("source", "feature", "region", "device_type", "browser_family")
_EXPRESSIONS = {"feature": feature, "region": region, "device_type": device_type, "browser_family": browser_family}
_INPUTS = {
    "source": ("source",),
    "feature": ("source", "item"),
    "region": ("time_zone",),
    "device_type": ("device_type",),
    "browser_family": ("browser", "user_agent"),
}
MAX_PRODUCT = 2_000_000  # distinct input combinations generalised through their cartesian product up to this size


def _encode(column: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    encoded = pc.dictionary_encode(column.combine_chunks(), null_encoding="encode")
    return encoded.indices.to_numpy(zero_copy_only=False).astype("int64"), encoded.dictionary


def _dimension(con: Any, table: pa.Table, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(per-row index, sorted generalised values) for one dimension.

    The SQL expressions run once per distinct input value (or combination),
    not once per row: raw logs repeat a few hundred values millions of times.
    """
    inputs = _INPUTS[key]
    encoded = [_encode(table.column(c)) for c in inputs]
    sizes = [len(d) for _, d in encoded]
    code = encoded[0][0]
    for (idx, _), size in zip(encoded[1:], sizes[1:], strict=True):
        code = code * size + idx
    product = int(np.prod(sizes))
    if product <= MAX_PRODUCT:
        combos = np.arange(product, dtype="int64")
    else:  # many distinct pairs: generalise only those present
        combos, code = np.unique(code, return_inverse=True)
    columns: dict[str, pa.Array] = {}
    rest = combos
    for name, (_, dictionary), size in reversed(list(zip(inputs, encoded, sizes, strict=True))):
        rest, index = np.divmod(rest, size)
        columns[name] = dictionary.take(pa.array(index))
    if key == "source":
        generalised = np.asarray(columns["source"].to_pylist(), dtype=object)
    else:
        con.register("combos", pa.table(columns))
        expression = _EXPRESSIONS[key]()
        found = con.execute(f"SELECT {expression} AS v FROM combos").fetchall()  # noqa: S608 - no values
        generalised = np.asarray([r[0] for r in found], dtype=object)
        con.unregister("combos")
    values, inverse = np.unique(generalised.astype(str), return_inverse=True)
    return inverse[code], values


def generalise(table: pa.Table, dimensions: tuple[str, ...], max_duration_ms: int, con: Any) -> Generalised:
    """Generalise the extracted rows (lethe.sharing.extract.COLUMNS) into cell codes."""
    cell = np.zeros(table.num_rows, dtype="int64")
    values: dict[str, np.ndarray] = {}
    for key in CELL_DIMENSIONS:
        if key != "source" and key not in dimensions:
            index, dim_values = np.zeros(table.num_rows, dtype="int64"), np.asarray([ALL], dtype=object)
        else:
            index, dim_values = _dimension(con, table, key)
        values[key] = dim_values
        cell = cell * len(dim_values) + index
    duration = table.column("duration_ms").combine_chunks()
    clipped = np.clip(duration.fill_null(0).to_numpy(zero_copy_only=False), 0, int(max_duration_ms))
    rows = pa.table(
        {
            "unit": table.column("unit"),
            "day": table.column("day"),
            "cell": pa.array(cell),
            "d": pa.array(clipped, mask=duration.is_null().to_numpy(zero_copy_only=False)),
        }
    )
    return Generalised(rows, values)


def connect_duckdb(threads: int | None = None) -> Any:
    import duckdb

    con = duckdb.connect(":memory:")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    return con


def bounded_cells(con: Any, source_name: str, config: RecipientConfig) -> tuple[dict[str, Any], dict[str, int]]:
    """The bounded cells of rows (unit, day, cell, d) in DuckDB: (columns as numpy arrays, bound statistics).

    Two passes over the rows' person-cells, the least the per-person bounds need:
    1. per_person: one row per person, day and cell (events, duration sum);
    2. the cells, skipping `dropped`: the person-cells beyond each person-day's busiest
       `max_cells_per_day`. Only person-days over that bound are ranked, a small share of them,
       so the full sort a window over every person-day would need is never paid.
    The statistics are counted from what is left, not derived from the caps.
    """
    cap, per_day = int(config.max_events_per_cell), int(config.max_cells_per_day)
    con.execute(
        "CREATE OR REPLACE TEMP TABLE per_person AS SELECT unit, day, cell, count(*) AS n, sum(d) AS s,"  # noqa: S608 - no values
        f" count(d) AS nd FROM {source_name} GROUP BY unit, day, cell"
    )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE person_day AS SELECT unit, day, count(*) AS cells FROM per_person GROUP BY ALL"
    )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE dropped AS SELECT unit, day, cell FROM (SELECT p.* FROM per_person p"
        " SEMI JOIN (SELECT unit, day FROM person_day WHERE cells > $1) USING (unit, day))"
        " QUALIFY row_number() OVER (PARTITION BY unit, day ORDER BY n DESC, cell) > $1",
        [per_day],
    )
    cells = con.execute(
        "SELECT day, cell, sum(least(n, $1))::BIGINT AS events, count(*)::BIGINT AS people, "
        "round(sum(s * least(n, $1) / n))::BIGINT AS total_duration_ms, "
        "round(median(s / nullif(nd, 0)))::BIGINT AS median_duration_ms, "
        "max(least(n, $1))::BIGINT AS max_events_per_person "
        "FROM per_person ANTI JOIN dropped USING (unit, day, cell) GROUP BY day, cell ORDER BY day, cell",
        [cap],
    ).fetchnumpy()
    stats = con.execute(
        "SELECT count(DISTINCT unit), coalesce(max(cells - coalesce(d.n, 0)), 0) FROM person_day"
        " LEFT JOIN (SELECT unit, day, count(*) AS n FROM dropped GROUP BY ALL) d USING (unit, day)"
    ).fetchone()
    con.execute("DROP TABLE dropped; DROP TABLE person_day; DROP TABLE per_person")
    assert stats is not None
    most_events = cells.pop("max_events_per_person")
    return cells, {
        "people_in": int(stats[0]),
        "max_cells_per_person_day": int(stats[1]),
        "max_events_per_person_cell": int(most_events.max()) if len(most_events) else 0,
    }


def aggregate(events: pa.Table, config: RecipientConfig, con: Any = None) -> Aggregate:
    """Generalise the extracted rows and compute the bounded, exact cells for `config`."""
    con = con or connect_duckdb()
    g = generalise(events, config.dimensions, config.max_duration_ms, con)
    con.register("generalised", g.rows)
    cells, stats = bounded_cells(con, "generalised", config)
    con.unregister("generalised")
    frame = pd.DataFrame({"day": cells["day"], **g.decode(cells["cell"]), **{m: cells[m] for m in MEASURES}})
    people_in = stats.pop("people_in")
    return Aggregate(cells=normalise(frame), rows_in=events.num_rows, people_in=people_in, contributions=stats)
