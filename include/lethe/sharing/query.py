"""The bounded aggregate as one PostgreSQL statement, run where the data is: only cells come back.

The statement is generated from the policy file's `sharing.source` (tables and columns, each
quoted with sql.Identifier) and the recipient's settings; nothing here knows a company's schema.
Its parts, in order (docs/sharing.md):

- consent: people whose consent to the source's purpose holds now, from when it was granted;
- rows: each consented usage event and page view of the window, generalised (day, feature,
  region, device, browser family; dimensions the recipient does not receive are `all`),
  durations clipped. A usage event takes region, device and browser from the person's first
  page view that day. Anonymous page views count by their cookie, which never leaves PostgreSQL;
- per_person: one row per person, day and cell; ranked: each person-day's busiest
  `max_cells_per_day` cells (ties by the cell's values, byte order, so runs repeat);
- the cells: events capped per person at `max_events_per_cell` (their mean duration kept),
  distinct people, total and median duration (the median of each person's mean), and the
  bound statistics the release gate checks, counted from what is left.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd
import psycopg2.extras
from psycopg2 import sql

from lethe.connections import pseudonym_key_or_local
from lethe.db import ConfigurationError, connect
from lethe.pseudonym import subject_pseudonym
from lethe.relations import key_text_is_canonical, relation, stored_key
from lethe.sharing.aggregate import CELL_KEYS, MEASURES, Aggregate, normalise
from lethe.sharing.config import ALL, RecipientConfig

# Continents of the IANA zone names: the only location a release shows.
REGIONS = ("Africa", "America", "Antarctica", "Asia", "Atlantic", "Australia", "Europe", "Indian", "Pacific")
DEVICES = ("desktop", "mobile", "tablet", "tv", "console", "wearable")
# Family, the user-agent tokens that carry its major version (checked in this order).
BROWSERS = (
    ("Edge", ("Edg", "Edge")),
    ("Opera", ("OPR", "Opera")),
    ("Samsung Internet", ("SamsungBrowser",)),
    ("Firefox", ("Firefox",)),
    ("Chrome", ("Chrome", "CriOS")),
    ("Safari", ("Version", "Safari")),
)
MAX_FEATURE_LENGTH = 64
DIMENSION_KEYS = CELL_KEYS[1:]  # source and the four dimensions: the cell, after the day
STATS = ("rows_in", "people_in", "max_cells_per_person_day", "max_events_per_person_cell")


def _values(values: tuple[str, ...]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Literal(v) for v in values)


def region(time_zone: sql.Composable) -> sql.Composable:
    continent = sql.SQL("split_part({}, '/', 1)").format(time_zone)
    return sql.SQL("coalesce(CASE WHEN {c} IN ({r}) THEN {c} END, 'unknown')").format(c=continent, r=_values(REGIONS))


def device_type(device: sql.Composable) -> sql.Composable:
    return sql.SQL(
        "CASE WHEN {d} IS NULL OR trim({d}) = '' THEN 'unknown' WHEN lower(trim({d})) IN ({v}) THEN lower(trim({d}))"
        " ELSE 'other' END"
    ).format(d=device, v=_values(DEVICES))


def browser_family(browser: sql.Composable, agent: sql.Composable) -> sql.Composable:
    """Family from the browser column (else the user agent), plus the major version when the agent has one."""
    families, versions = [], []
    for family, tokens in BROWSERS:
        alternatives = "|".join(tokens)
        families.append(
            sql.SQL(
                "WHEN starts_with(lower({b}), {prefix}) THEN {f} WHEN {b} IS NULL AND {a} ~ {token} THEN {f}"
            ).format(
                b=browser,
                a=agent,
                f=sql.Literal(family),
                prefix=sql.Literal(family.lower()),
                token=sql.Literal(f"(?:{alternatives})/"),
            )
        )
        versions.append(
            sql.SQL("WHEN {f} THEN substring({a} from {pattern})").format(
                f=sql.Literal(family), a=agent, pattern=sql.Literal(f"(?:{alternatives})/([0-9]{{1,3}})")
            )
        )
    family_sql = sql.SQL("(CASE {cases} WHEN {b} IS NULL AND {a} IS NULL THEN 'unknown' ELSE 'other' END)").format(
        cases=sql.SQL(" ").join(families), b=browser, a=agent
    )
    version_sql = sql.SQL("(CASE {f} {cases} ELSE '' END)").format(f=family_sql, cases=sql.SQL(" ").join(versions))
    return sql.SQL("trim({f} || ' ' || coalesce({v}, ''))").format(f=family_sql, v=version_sql)


def usage_feature(item: sql.Composable) -> sql.Composable:
    return sql.SQL(
        "CASE WHEN {i} IS NULL OR trim({i}) = '' THEN 'unknown' ELSE left(lower(trim({i})), {n}) END"
    ).format(i=item, n=sql.Literal(MAX_FEATURE_LENGTH))


def page_feature(path: sql.Composable) -> sql.Composable:
    """The first path segment, scheme, host, query string and fragment removed."""
    bare = sql.SQL(
        "split_part(split_part(regexp_replace({p}, '^[A-Za-z][A-Za-z0-9+.-]*://[^/]*', ''), '?', 1), '#', 1)"
    ).format(p=path)
    return sql.SQL(
        "CASE WHEN {p} IS NULL OR trim({p}) = '' THEN 'unknown'"
        " ELSE left('/' || lower(coalesce(substring({bare} from '^/*([^/]*)'), '')), {n}) END"
    ).format(p=path, bare=bare, n=sql.Literal(MAX_FEATURE_LENGTH))


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime


def _col(alias: str, column: str) -> sql.Composable:
    return sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(column))


LINKS = "lethe_share_links"  # session-only: each consenting person's keyed pseudonym (see `prepare_links`)


def _linked(alias: str, person: str, pseudonym: str | None) -> tuple[sql.Composable, sql.Composable]:
    """The row's person, and the join that supplies it: the subject column, or, where retention cut it and
    kept the keyed pseudonym, the consenting person whose pseudonym that is."""
    if pseudonym is None:
        return _col(alias, person), sql.SQL("")
    link = sql.Identifier(f"{alias}_link")
    return sql.SQL("coalesce({}, {}.person)").format(_col(alias, person), link), sql.SQL(
        " LEFT JOIN pg_temp.{links} {link} ON {person} IS NULL AND {link}.pseudonym = {pseudonym}"
    ).format(links=sql.Identifier(LINKS), link=link, person=_col(alias, person), pseudonym=_col(alias, pseudonym))


def rows_sql(
    source: Any,
    consent_table: Any,
    config: RecipientConfig,
    pseudonyms: dict[str, str | None] | None = None,
) -> sql.Composable:
    """CTEs ending with `generalised` (person, visitor, day, the cell keys, d): the rows of %(start)s-%(end)s.

    `source` is the policy's SharingSource, `consent_table` its ConsentEndedClock; `pseudonyms`, per table,
    the column holding the keyed pseudonym once retention cut the subject link (`pg_temp.lethe_share_links`
    must then exist: `prepare_links`).
    """
    usage, pages, consent = source.usage, source.pages, source.consent
    pseudonyms = pseudonyms or {}
    page_person, page_link = _linked("v", pages.person, pseudonyms.get(pages.table))
    usage_person, usage_link = _linked("e", usage.person, pseudonyms.get(usage.table))
    dims = set(config.dimensions)

    def dim(key: str, expression: sql.Composable) -> sql.Composable:
        return expression if key in dims else sql.Literal(ALL)

    def generalised_page(alias: str) -> dict[str, sql.Composable]:
        return {
            "region": dim("region", region(_col(alias, pages.time_zone))),
            "device_type": dim("device_type", device_type(_col(alias, pages.device_type))),
            "browser_family": dim(
                "browser_family", browser_family(_col(alias, pages.browser), _col(alias, pages.user_agent))
            ),
        }

    window = sql.SQL("{at} >= %(start)s AND {at} < %(end)s")
    ended = sql.SQL(" AND ").join(sql.SQL("{} IS NULL").format(sql.Identifier(c)) for c in consent_table.ended)
    consented = sql.SQL(
        "consented AS (SELECT {subject} AS person, min({granted}) AS granted FROM {table}"
        " WHERE {purpose} = %(purpose)s AND {ended} GROUP BY 1)"
    ).format(
        subject=sql.Identifier(consent_table.subject),
        granted=sql.Identifier(consent.granted),
        table=relation(consent_table.table),
        purpose=sql.Identifier(consent_table.purpose),
        ended=ended,
    )
    g = generalised_page("v")
    # Consented members' page views, generalised once: both their page cells and their usage events' profile.
    member_pages = sql.SQL(
        "member_pages AS (SELECT {person} AS person, {at} AS at, {at}::date AS day, {feature} AS feature,"
        " {region} AS region, {device} AS device_type, {browser} AS browser_family"
        " FROM {pages} v{link} JOIN consented c ON c.person = {person} AND {at} >= c.granted WHERE {window})"
    ).format(
        person=page_person,
        link=page_link,
        at=_col("v", pages.at),
        feature=dim("feature", page_feature(_col("v", pages.path))),
        region=g["region"],
        device=g["device_type"],
        browser=g["browser_family"],
        pages=relation(pages.table),
        window=window.format(at=_col("v", pages.at)),
    )
    ctes: list[sql.Composable] = [consented, member_pages]
    looks: dict[str, sql.Composable] = {k: sql.Literal(ALL) for k in ("region", "device_type", "browser_family")}
    profile_join: sql.Composable = sql.SQL("")
    if dims & set(looks):
        # The person's first page view of each day: ties on time broken by the generalised values, so runs repeat.
        ctes.append(
            sql.SQL(
                "profile AS (SELECT DISTINCT ON (person, day) person, day, region, device_type, browser_family"
                ' FROM member_pages ORDER BY person, day, at, region COLLATE "C", device_type COLLATE "C",'
                ' browser_family COLLATE "C")'
            )
        )
        looks = {
            k: sql.SQL("coalesce(p.{}, {})").format(sql.Identifier(k), sql.Literal("unknown" if k in dims else ALL))
            for k in looks
        }
        profile_join = sql.SQL(" LEFT JOIN profile p ON p.person = {person} AND p.day = {at}::date").format(
            person=usage_person, at=_col("e", usage.at)
        )
    clipped = sql.SQL("least(greatest({d}, 0), {cap})::bigint").format(
        d=_col("e", usage.duration_ms), cap=sql.Literal(int(config.max_duration_ms))
    )
    usage_rows = sql.SQL(
        "SELECT {person} AS person, NULL::text AS visitor, {at}::date AS day, 'usage'::text AS source,"
        " {feature} AS feature, {region} AS region, {device} AS device_type, {browser} AS browser_family, {d} AS d"
        " FROM {usage} e{link} JOIN consented c ON c.person = {person} AND {at} >= c.granted{profile}"
        " WHERE {window}"
    ).format(
        person=usage_person,
        link=usage_link,
        at=_col("e", usage.at),
        feature=dim("feature", usage_feature(_col("e", usage.feature))),
        region=looks["region"],
        device=looks["device_type"],
        browser=looks["browser_family"],
        d=clipped,
        usage=relation(usage.table),
        profile=profile_join,
        window=window.format(at=_col("e", usage.at)),
    )
    parts = [
        usage_rows,
        sql.SQL(
            "SELECT person, NULL::text, day, 'page'::text, feature, region, device_type, browser_family, NULL::bigint"
            " FROM member_pages"
        ),
    ]
    if pages.visitor and config.anonymous_visitors == "by_visitor_id":
        # Each cookie of an anonymous page view is one "person", never joined to an account;
        # a row whose link was cut is a member's, not an anonymous visitor's.
        cut = pseudonyms.get(pages.table)
        uncut = sql.SQL(" AND {} IS NULL").format(_col("v", cut)) if cut else sql.SQL("")
        parts.append(
            sql.SQL(
                "SELECT NULL, {visitor}::text, {at}::date, 'page'::text, {feature}, {region}, {device}, {browser},"
                " NULL::bigint FROM {pages} v WHERE {person} IS NULL{uncut} AND {window}"
            ).format(
                uncut=uncut,
                visitor=_col("v", pages.visitor),
                at=_col("v", pages.at),
                feature=dim("feature", page_feature(_col("v", pages.path))),
                region=g["region"],
                device=g["device_type"],
                browser=g["browser_family"],
                pages=relation(pages.table),
                person=_col("v", pages.person),
                window=window.format(at=_col("v", pages.at)),
            )
        )
    ctes.append(sql.SQL("generalised AS ({})").format(sql.SQL(" UNION ALL ").join(parts)))
    return sql.SQL(", ").join(ctes)


def bounded_sql(
    source: Any, consent_table: Any, config: RecipientConfig, pseudonyms: dict[str, str | None] | None = None
) -> sql.Composable:
    """The whole statement: the bounded cells, one row each, with the bound statistics on every row."""
    keys = sql.SQL(", ").join(sql.Identifier(k) for k in CELL_KEYS)
    by_value = sql.SQL(", ").join(sql.SQL('{} COLLATE "C"').format(sql.Identifier(k)) for k in DIMENSION_KEYS)
    cap, per_day = sql.Literal(int(config.max_events_per_cell)), sql.Literal(int(config.max_cells_per_day))
    return sql.SQL(
        "WITH {rows},"
        " per_person AS (SELECT person, visitor, {keys}, count(*) AS n, sum(d) AS s, count(d) AS nd"
        " FROM generalised GROUP BY person, visitor, {keys}),"
        " kept AS (SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY person, visitor, day"
        " ORDER BY n DESC, {by_value}) AS rank FROM per_person) r WHERE rank <= {per_day})"
        " SELECT {keys}, sum(least(n, {cap}))::bigint AS events, count(*)::bigint AS people,"
        " round(sum(s::numeric * least(n, {cap}) / n))::bigint AS total_duration_ms,"
        " round((percentile_cont(0.5) WITHIN GROUP (ORDER BY s::float8 / nullif(nd, 0)))::numeric)::bigint"
        " AS median_duration_ms,"
        " (SELECT coalesce(sum(n), 0) FROM per_person)::bigint AS rows_in,"
        " (SELECT count(*) FROM (SELECT DISTINCT person, visitor FROM per_person) u)::bigint AS people_in,"
        " (SELECT coalesce(max(c), 0) FROM (SELECT count(*) AS c FROM kept GROUP BY person, visitor, day) k)::bigint"
        " AS max_cells_per_person_day,"
        " max(least(n, {cap}))::bigint AS max_events_per_person_cell"
        " FROM kept GROUP BY {keys} ORDER BY day, {by_value}"
    ).format(
        rows=rows_sql(source, consent_table, config, pseudonyms), keys=keys, by_value=by_value, cap=cap, per_day=per_day
    )


def run_copy(cur: Any, statement: sql.Composable, params: dict[str, Any]) -> bytes:
    """The statement's result as CSV through COPY: exactly the bytes that cross to the worker."""
    bound = cur.mogrify(statement, params).decode()
    buf = io.BytesIO()
    cur.copy_expert(f"COPY ({bound}) TO STDOUT WITH (FORMAT csv, HEADER)", buf)
    return buf.getvalue()


def params(source: Any, window: Window) -> dict[str, Any]:
    return {"start": window.start, "end": window.end, "purpose": source.consent.purpose}


def link_pseudonyms(policy: Any, source: Any) -> dict[str, str | None]:
    """Per source table, the column retention writes the keyed pseudonym into when it cuts the link."""
    return {
        t: policy.tables[t].link_pseudonym if t in policy.tables else None
        for t in (source.usage.table, source.pages.table)
    }


def prepare_links(cur: Any, source: Any, consent_table: Any, key: bytes, policy: Any) -> None:
    """pg_temp.lethe_share_links: each consenting person's keyed pseudonym, computed here (the key never
    reaches the database) and gone with the transaction; so a person counts once, linked rows or cut.

    `policy`: on a subject key whose equal values are not equal as text (citext), each consenting person also with
    the pseudonym of her key as the subject row stores it (relations.stored_key), the one retention cut her rows'
    links to, whatever the case her consent row spells her key in. One row per pseudonym: a cut row joins once."""
    cur.execute(
        sql.SQL(
            "CREATE TEMP TABLE {links} ON COMMIT DROP AS SELECT {subject} AS person, ''::text AS pseudonym"
            " FROM {table} WITH NO DATA"
        ).format(
            links=sql.Identifier(LINKS),
            subject=sql.Identifier(consent_table.subject),
            table=relation(consent_table.table),
        )
    )
    subject = sql.Identifier("c", consent_table.subject)
    stored: sql.Composable = sql.SQL("NULL::text")
    if not key_text_is_canonical(cur, policy):
        stored = stored_key(policy, subject)
    cur.execute(
        sql.SQL("SELECT DISTINCT {subject}, {stored} FROM {table} c WHERE c.{purpose} = %s").format(
            subject=subject,
            stored=stored,
            table=relation(consent_table.table),
            purpose=sql.Identifier(consent_table.purpose),
        ),
        (source.consent.purpose,),
    )
    people: dict[str, Any] = {}
    for p, as_stored in cur.fetchall():
        for spelling in (p, as_stored):
            if p is not None and spelling is not None:
                people.setdefault(subject_pseudonym(key, str(spelling)), p)
    rows = [(p, pseudonym) for pseudonym, p in people.items()]
    psycopg2.extras.execute_values(
        cur, sql.SQL("INSERT INTO {} VALUES %s").format(sql.Identifier(LINKS)), rows, page_size=10_000
    )
    cur.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(LINKS)))


def compute(
    url: str,
    config: RecipientConfig,
    start: datetime,
    end: datetime,
    policy: Any = None,
    key: bytes | None = None,
) -> Aggregate:
    """The exact bounded cells of [start, end) for `config`, computed in PostgreSQL.

    `key`: the pseudonym key (default: the lethe_pseudonym_key connection, or the local demo key)."""
    from lethe.policy import load_policy

    policy = policy or load_policy()
    source = policy.sharing.source
    if source is None:
        raise ConfigurationError("the policy file's `sharing` section has no `source`")
    consent_table = policy.clock_consent_ended()
    pseudonyms = link_pseudonyms(policy, source)
    statement = bounded_sql(source, consent_table, config, pseudonyms)
    conn = connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SET LOCAL TIME ZONE 'UTC'")  # days are UTC days
            if any(pseudonyms.values()):
                prepare_links(cur, source, consent_table, key or pseudonym_key_or_local(), policy)
            body = run_copy(cur, statement, params(source, Window(start, end)))
        conn.rollback()
    finally:
        conn.close()
    return from_csv(body)


def from_csv(body: bytes) -> Aggregate:
    frame = pd.read_csv(
        io.BytesIO(body),
        dtype={k: "string" for k in DIMENSION_KEYS} | {m: "Int64" for m in (*MEASURES, *STATS)},
        keep_default_na=False,
        na_values={m: [""] for m in (*MEASURES, *STATS)},
    )
    stats = {s: int(frame[s].max()) if len(frame) else 0 for s in STATS}  # per-cell maxima, else equal on every row
    return Aggregate(
        cells=normalise(frame[list(CELL_KEYS + MEASURES)]),
        rows_in=stats.pop("rows_in"),
        people_in=stats.pop("people_in"),
        contributions=stats,
        bytes_in=len(body),
    )
