"""Restoring a snapshot after she re-cased her citext key, then was erased: rows linked to hers by foreign keys only.

The citext shop with addresses and deliveries of test_backup_citext_addresses (no subject column of their own: a
snapshot names each such row's person by the pseudonym of her key as her customer row stored it at export,
'Anna@Example.com'). She re-cases her key on the primary ('anna@example.com'), then is erased: the primary deletes
her addresses and the deliveries of her orders. Restoring the snapshot taken before must bring none of them back
(and, the deliveries' link to orders being NOT NULL, not refuse the restore for rows that are hers), as it does when
she never re-cased her key. Rows are read back with this test's own SQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing

import psycopg2
import pytest
from lethe import testing
from test_backup_citext_addresses import ADDRESSES, shop  # noqa: F401  (the fixture)
from test_erasure_citext_key import KEY, PLACEHOLDER, SCHEMA, erase, q

pytestmark = pytest.mark.integration

REGION = "us-east-1"
SID = "20261201T020000Z"


@pytest.fixture
def target(services: tuple[str, str]) -> Iterator[str]:
    url = testing.empty_database(services[0], "lethe_citext_respelt_linked_target")
    with closing(psycopg2.connect(url)) as conn, conn, conn.cursor() as cur:
        cur.execute(SCHEMA)
        cur.execute(ADDRESSES.split("INSERT INTO addresses", 1)[0])
        cur.execute("ALTER TABLE orders ADD COLUMN ship_address bigint REFERENCES addresses (address_id)")
        cur.execute(
            "CREATE TABLE deliveries (delivery_id bigint PRIMARY KEY,"
            " order_id bigint NOT NULL REFERENCES orders, courier_note text)"
        )
    yield url
    testing.drop_database(url)


@pytest.mark.parametrize("recased", [False, True], ids=["as-stored", "recased"])
def test_a_restore_brings_back_none_of_her_linked_rows_after_she_recased_her_key(
    shop: str,  # noqa: F811
    target: str,
    s3_endpoint: str,
    recased: bool,
) -> None:
    from lethe.backup.restore import restore_snapshot
    from lethe.backup.snapshot import take_snapshot
    from lethe.db import migrate
    from lethe.policy import load_policy

    migrate(shop)
    take_snapshot(shop, REGION, s3_endpoint, SID, load_policy(), KEY)
    if recased:
        q(shop, "UPDATE customers SET email = 'anna@example.com' WHERE email::text = 'Anna@Example.com'")
    assert erase(shop, "anna@example.com")["outcomes"] == {"erased": 1}
    assert q(shop, "SELECT address_id FROM addresses") == [(103,)]
    assert q(shop, "SELECT delivery_id FROM deliveries") == [(204,)]

    lines: list[str] = []
    report = restore_snapshot(
        SID, REGION, target, endpoint_url=s3_endpoint, key=KEY, primary_url=shop, out=lines.append
    )
    assert report.verified, lines
    assert q(target, "SELECT email::text FROM customers ORDER BY 1") == [("bob@example.org",), (PLACEHOLDER,)]
    assert q(target, "SELECT order_id, ship_address FROM orders ORDER BY 1") == [(4, 103)]
    # her addresses and her orders' deliveries are gone, as on the primary; Bob's are back
    assert q(target, "SELECT address_id, street FROM addresses ORDER BY 1") == [(103, "9 Oak Road")]
    assert q(target, "SELECT delivery_id, order_id, courier_note FROM deliveries ORDER BY 1") == [
        (204, 4, "by the gate")
    ]
