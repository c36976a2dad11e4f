"""Generalisation: raw columns to the coarse values a release may show (DuckDB SQL).

Each function returns a DuckDB SQL expression over the extracted columns
(lethe.sharing.extract.COLUMNS). Nothing here keeps an identifier: the
counting key `unit` is carried along for contribution bounds and dropped by
the aggregate.
"""

from __future__ import annotations

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
    """One generalised row per raw row: unit, day, source, the four dimensions, clipped duration."""
    return (
        f"SELECT unit, day, source, {feature()} AS feature, {region()} AS region, {device_type()} AS device_type, "  # noqa: S608 - no values
        f"{browser_family()} AS browser_family, "
        # DuckDB's least/greatest skip NULLs: keep a page view's missing duration missing.
        f"CASE WHEN duration_ms IS NOT NULL THEN least(greatest(duration_ms, 0), {int(max_duration_ms)}) END AS d "
        f"FROM {source_name}"
    )
