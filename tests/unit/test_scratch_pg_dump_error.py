"""The restore drill's message when pg_dump fails names pg_dump's error, not the query pg_dump 18 quotes after it."""

from __future__ import annotations

from lethe.audit.scratch import pg_dump_error

# pg_dump 18's stderr on a lock it could not take (its shape; the query is long enough to fill the old 500).
PG_DUMP_18 = (
    'pg_dump: error: query failed: ERROR:  relation "shop.orders_2019__expired" does not exist\n'
    "pg_dump: detail: Query was: LOCK TABLE "
    + ", ".join(f"shop.orders_{y}" for y in range(1990, 2040))
    + " IN ACCESS SHARE MODE\n"
)


def test_the_error_line_is_kept_whole_and_the_quoted_query_cut() -> None:
    message = pg_dump_error(PG_DUMP_18)
    assert message.startswith('pg_dump: error: query failed: ERROR:  relation "shop.orders_2019__expired" does')
    assert "shop.orders_2039" not in message and len(message) < 500


def test_a_version_mismatch_keeps_its_detail() -> None:
    stderr = (
        "pg_dump: error: aborting because of server version mismatch\n"
        "pg_dump: detail: server version: 18.1; pg_dump version: 15.20\n"
    )
    assert pg_dump_error(stderr) == (
        "pg_dump: error: aborting because of server version mismatch | "
        "pg_dump: detail: server version: 18.1; pg_dump version: 15.20"
    )


def test_without_an_error_line_the_last_lines_are_given() -> None:
    assert pg_dump_error("\nfirst\nsecond\nthird\nfourth\n") == "second | third | fourth"
