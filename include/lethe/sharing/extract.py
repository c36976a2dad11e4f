"""Read the raw rows a release may use: only people whose analytics consent holds.

Rules (docs/sharing.md):
- An account's usage events and page views count only from the moment its
  'analytics' consent was granted, and not at all once that consent has been
  withdrawn or objected to: a withdrawal removes the person from every release
  made from the next run on, whatever the events' dates.
- Anonymous page views (visitor_logs.user_id NULL) are counted by their cookie,
  each cookie as one "person", in page rows only; they are never joined to an
  account. `anonymous_visitors: exclude` in the policy leaves them out.
- Usage events take region, device and browser from the person's first page
  view of that day (their "profile" for the day), or stay unknown.
- Rows older than the policy's window name the person only by their keyed
  pseudonym (retention cut the user id): they are matched to the consenting
  people through pseudonyms computed here, in memory, for this extraction only,
  so a person counts once whether their rows are linked or not.

Only the columns the aggregate needs leave the database; IP addresses,
languages, referrers, errors and visitor cookies never do (cookies are hashed
inside PostgreSQL into an in-memory counting key).
"""

from __future__ import annotations

import tempfile
from datetime import datetime

import psycopg2.extensions
import psycopg2.extras
import pyarrow as pa
import pyarrow.csv as pacsv

from lethe.connections import pseudonym_key_or_local
from lethe.db import connect
from lethe.pseudonym import subject_pseudonym

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

_CONSENTING = f"WITH {_CONSENTED} SELECT DISTINCT user_id FROM consented"  # noqa: S608 - constant SQL

# A row's person: its user id, or the consenting person whose pseudonym it keeps (pg_temp.lethe_share_links).
_VISITS = """
visits AS (
    SELECT v.*, coalesce(v.user_id, l.user_id) AS person
    FROM visitor_logs v
    LEFT JOIN pg_temp.lethe_share_links l ON v.user_id IS NULL AND l.pseudonym = v.subject_pseudonym
    WHERE v.occurred_at >= %(start)s AND v.occurred_at < %(end)s
)"""

_USAGE = f"""
WITH {_CONSENTED}, {_VISITS},
events AS (
    SELECT e.*, coalesce(e.user_id, l.user_id) AS person
    FROM usage_events e
    LEFT JOIN pg_temp.lethe_share_links l ON e.user_id IS NULL AND l.pseudonym = e.subject_pseudonym
    WHERE e.occurred_at >= %(start)s AND e.occurred_at < %(end)s
),
profile AS (
    SELECT DISTINCT ON (v.person, v.occurred_at::date)
           v.person, v.occurred_at::date AS day, v.time_zone, v.device_type, v.browser, v.user_agent
    FROM visits v JOIN consented c ON c.user_id = v.person AND v.occurred_at >= c.granted_at
    ORDER BY v.person, v.occurred_at::date, v.occurred_at, v.log_id
)
SELECT e.person AS unit, e.occurred_at::date AS day, 'usage' AS source, e.feature AS item, e.duration_ms,
       p.time_zone, p.device_type, p.browser, p.user_agent
FROM events e
JOIN consented c ON c.user_id = e.person AND e.occurred_at >= c.granted_at
LEFT JOIN profile p ON p.person = e.person AND p.day = e.occurred_at::date
"""  # noqa: S608 - constant SQL, values bound by psycopg2

_PAGES = f"""
WITH {_CONSENTED}, {_VISITS}
SELECT v.person AS unit, v.occurred_at::date AS day, 'page' AS source, v.file_accessed AS item,
       NULL::integer AS duration_ms, v.time_zone, v.device_type, v.browser, v.user_agent
FROM visits v JOIN consented c ON c.user_id = v.person AND v.occurred_at >= c.granted_at
"""  # noqa: S608 - constant SQL, values bound by psycopg2

# A 60-bit slice of the cookie's md5, negated: disjoint from user ids, never leaves this process.
_ANONYMOUS = """
SELECT -1 - ('x' || substr(md5(v.visitor_id), 1, 15))::bit(60)::bigint AS unit, v.occurred_at::date AS day,
       'page' AS source, v.file_accessed AS item, NULL::integer AS duration_ms,
       v.time_zone, v.device_type, v.browser, v.user_agent
FROM visitor_logs v
WHERE v.user_id IS NULL AND v.subject_pseudonym IS NULL AND v.occurred_at >= %(start)s AND v.occurred_at < %(end)s
"""


def _links(cur: psycopg2.extensions.cursor, key: bytes) -> None:
    """pg_temp.lethe_share_links: each consenting person's keyed pseudonym, gone when the session ends."""
    cur.execute("CREATE TEMP TABLE lethe_share_links (user_id bigint NOT NULL, pseudonym text PRIMARY KEY)")
    cur.execute(_CONSENTING)
    people = [u for (u,) in cur.fetchall()]
    rows = [(u, subject_pseudonym(key, u)) for u in people]
    psycopg2.extras.execute_values(cur, "INSERT INTO lethe_share_links VALUES %s", rows, page_size=10_000)
    cur.execute("ANALYZE lethe_share_links")


def extract(
    url: str,
    start: datetime,
    end: datetime,
    *,
    anonymous_visitors: str = "by_visitor_id",
    key: bytes | None = None,
) -> pa.Table:
    """The consented rows with occurred_at in [start, end), days in UTC, as an Arrow table.

    `key`: the pseudonym key (default: the lethe_pseudonym_key connection or the local demo key)."""
    queries = [_USAGE, _PAGES] + ([_ANONYMOUS] if anonymous_visitors == "by_visitor_id" else [])
    tables = []
    conn = connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")
            _links(cur, key or pseudonym_key_or_local())
            for query in queries:
                bound = cur.mogrify(query, {"start": start, "end": end}).decode()
                # COPY through a temporary file: PostgreSQL's fastest way out, and not held twice in memory.
                with tempfile.TemporaryFile() as buf:
                    cur.copy_expert(f"COPY ({bound}) TO STDOUT WITH (FORMAT csv, HEADER)", buf)
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
    return pa.concat_tables(tables).select(list(COLUMNS))
