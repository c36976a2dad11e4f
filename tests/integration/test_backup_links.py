"""The foreign keys a restore verifies, read for tables in a schema off the search path (found from outside:
the keys were looked up by the policy's name as one quoted identifier, so `schema.table` found none and the
restore drill checked no link of such a platform, and passed)."""

from __future__ import annotations

import pytest
from lethe import testing
from lethe.backup import links
from lethe.db import transaction

pytestmark = pytest.mark.integration

TABLES = ["Shop Data.Customers", "Shop Data.orders"]


def shop(url: str, *, with_key: bool) -> None:
    """Customers and their orders in a schema no search path names; `public` holds tables of the same names."""
    key = ' REFERENCES "Shop Data"."Customers" (id)' if with_key else ""
    with transaction(url) as cur:
        cur.execute('CREATE SCHEMA "Shop Data"')
        cur.execute('CREATE TABLE "Shop Data"."Customers" (id int PRIMARY KEY)')
        cur.execute(f'CREATE TABLE "Shop Data".orders (id int PRIMARY KEY, customer_id int NOT NULL{key})')
        cur.execute('CREATE TABLE public."Customers" (id int PRIMARY KEY)')
        cur.execute("CREATE TABLE public.orders (id int PRIMARY KEY, customer_id int)")
        cur.execute('INSERT INTO "Shop Data"."Customers" VALUES (1), (2)')
        cur.execute('INSERT INTO "Shop Data".orders VALUES (10, 1), (11, 2)')
        cur.execute("INSERT INTO public.orders VALUES (10, 99)")  # an orphan, but of another table


def test_the_keys_of_tables_off_the_search_path_are_found_and_their_orphans_counted(
    db_url: str, services: tuple[str, str]
) -> None:
    shop(db_url, with_key=True)
    with transaction(db_url) as cur:
        found = links.foreign_keys(cur, TABLES)
    assert found == [links.ForeignKey("Shop Data.orders", ("customer_id",), "Shop Data.Customers", ("id",), True)]

    restored = testing.fresh_database(services[0])  # a restore that lost the key, and a customer
    try:
        shop(restored, with_key=False)
        with transaction(restored) as cur:
            cur.execute('DELETE FROM "Shop Data"."Customers" WHERE id = 2')
            assert links.foreign_keys(cur, TABLES) == []
            assert links.orphans(cur, found[0]) == 1  # order 11's customer; public.orders' orphan is not counted
    finally:
        testing.drop_database(restored)
