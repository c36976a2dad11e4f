"""A company's table or column whose name holds a `%`, in a statement Lethe composes and gives parameters to.

psycopg2 renders a composed statement to text, then reads every `%` of it as a placeholder when parameters are
given: `SELECT ... FROM "100%" WHERE id = %s` failed with IndexError (an erasure over such a table failed so:
tests/integration/test_backup_odd_table_names.py). Lethe's connections (lethe.db.connect) bind them right."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing

import pytest
from lethe import testing
from psycopg2 import sql

pytestmark = pytest.mark.integration

TABLE = sql.Identifier("public", "100%")


@pytest.fixture
def url(services: tuple[str, str]) -> Iterator[str]:
    url = testing.empty_database(services[0], "lethe_percent")
    yield url
    testing.drop_database(url)


def test_names_and_literals_holding_a_percent_bind_beside_parameters(url: str) -> None:
    from lethe.db import connect

    with closing(connect(url)) as conn, conn, conn.cursor() as cur:
        cur.execute("SET statement_timeout = '30s'")
        cur.execute(sql.SQL('CREATE TABLE {} (id int PRIMARY KEY, "%s%%" text, note text)').format(TABLE))
        insert = sql.SQL("INSERT INTO {} (id, {}, note) VALUES (%s, %s, {})").format(
            TABLE, sql.Identifier("%s%%"), sql.Literal("50% off")
        )
        cur.execute(insert, (1, "a%b"))
        cur.executemany(insert, [(2, "%s"), (3, None)])
        select = sql.SQL("SELECT id, {}, note FROM {} WHERE id = ANY(%s) AND note LIKE {} ORDER BY id").format(
            sql.Identifier("%s%%"), TABLE, sql.Literal("50%")
        )
        cur.execute(select, ([1, 2, 3],))
        assert cur.fetchall() == [(1, "a%b", "50% off"), (2, "%s", "50% off"), (3, None, "50% off")]
        assert cur.mogrify(sql.SQL("SELECT {}, %s").format(sql.Literal("1%")), ("2%",)) == b"SELECT '1%', '2%'"
        # without parameters the statement goes as it is: nothing doubled
        cur.execute(sql.SQL("SELECT count(*), {} FROM {}").format(sql.Literal("%%"), TABLE))
        assert cur.fetchall() == [(3, "%%")]
        cur.execute(sql.SQL("SELECT %(n)s::int + 1, {}").format(sql.Literal("%(n)s")), {"n": 1})
        assert cur.fetchall() == [(2, "%(n)s")]
