"""Generalisation: raw columns to the coarse values a release may show (DuckDB SQL).

Each function returns a DuckDB SQL expression over the extracted columns
(lethe.sharing.extract.COLUMNS). Nothing here keeps an identifier: the
counting key `unit` is carried along for contribution bounds and dropped by
the aggregate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lethe.sharing.config import ALL

# Continents of the IANA zone names: the only location a release shows.
REGIONS = ("Africa", "America", "Antarctica", "Asia", "Atlantic", "Australia", "Europe", "Indian", "Pacific")
DEVICES = ("desktop", "mobile", "tablet", "tv", "console", "wearable")
# Family, the user-agent token that carries its major version (checked in this order).
BROWSERS = (
    ("Edge", ("Edg", "Edge")),
    ("Opera", ("OPR", "Opera")),
    ("Samsung Internet", ("SamsungBrowser",)),
    ("Firefox", ("Firefox",)),
    ("Chrome", ("Chrome", "CriOS")),
    ("Safari", ("Version", "Safari")),
)
MAX_FEATURE_LENGTH = 64


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


def select_sql(source_name: str, max_duration_ms: int) -> str:
    """One generalised row per raw row, in plain SQL (the bench's anchor; the pipeline uses generalise())."""
    return (
        f"SELECT unit, day, source, {feature()} AS feature, {region()} AS region, {device_type()} AS device_type, "  # noqa: S608 - no values
        f"{browser_family()} AS browser_family, "
        # DuckDB's least/greatest skip NULLs: keep a page view's missing duration missing.
        f"CASE WHEN duration_ms IS NOT NULL THEN least(greatest(duration_ms, 0), {int(max_duration_ms)}) END AS d "
        f"FROM {source_name}"
    )


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
