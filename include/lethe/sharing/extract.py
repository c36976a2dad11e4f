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

Only the columns the aggregate needs leave the database; IP addresses,
languages, referrers, errors and visitor cookies never do (cookies are hashed
inside PostgreSQL into an in-memory counting key).
"""

from __future__ import annotations

import tempfile
from datetime import datetime

import pyarrow as pa
import pyarrow.csv as pacsv

from lethe.db import connect

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


def extract(url: str, start: datetime, end: datetime, *, anonymous_visitors: str = "by_visitor_id") -> pa.Table:
    """The consented rows with occurred_at in [start, end), days in UTC, as an Arrow table."""
    queries = [_USAGE, _PAGES] + ([_ANONYMOUS] if anonymous_visitors == "by_visitor_id" else [])
    tables = []
    conn = connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")
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
