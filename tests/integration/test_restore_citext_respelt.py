"""Restoring a citext-keyed shop's snapshot: an erased person comes back in no spelling of her key.

The citext shop of test_erasure_citext_key: customers keyed by `email citext PRIMARY KEY`, her customer row storing
'Anna@Example.com', her orders spelling it 'anna@example.com', 'ANNA@EXAMPLE.COM' and as stored. PostgreSQL says
these are one customer; her keyed pseudonym is of the spelling her customer row stores.

1. The restore's own last check (verify_no_tombstoned_rows), given a target holding her rows in every spelling,
   counts every one of them: grouping the key as citext gave one spelling per group, and her rows in the others
   were never looked at.
2. She re-typed her address in capitals after the snapshot ('ANNA@EXAMPLE.COM', a citext update PostgreSQL allows
   under the foreign keys), then was erased: her tombstone is of that spelling, the snapshot names her rows by the
   old one. Restoring that snapshot must still bring none of her rows back, and say the restore verified.

Rows are put in and read back with this test's own SQL; her pseudonym is this test's own HMAC.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from contextlib import closing

import psycopg2
import pytest
from lethe import testing
from test_erasure_citext_key import ANNA, KEY, PLACEHOLDER, SCHEMA, erase, q, shop  # noqa: F401  (shop: the fixture)

pytestmark = pytest.mark.integration

REGION = "us-east-1"
SID = "20261201T020000Z"


@pytest.fixture
def target(services: tuple[str, str]) -> Iterator[str]:
    url = testing.empty_database(services[0], "lethe_citext_respelt_target")
    with closing(psycopg2.connect(url)) as conn, conn, conn.cursor() as cur:
        cur.execute(SCHEMA)
    yield url
    testing.drop_database(url)


def snapshot(url: str, s3_endpoint: str) -> None:
    from lethe.backup.snapshot import take_snapshot
    from lethe.db import migrate
    from lethe.policy import load_policy

    migrate(url)
    take_snapshot(url, REGION, s3_endpoint, SID, load_policy(), KEY)


def pseudonym_of(stored: str) -> str:
    return hmac.new(KEY, f"user_id:{stored}".encode(), hashlib.sha256).hexdigest()


def test_the_restore_check_counts_her_rows_in_every_spelling_of_her_key(
    shop: str,  # noqa: F811
    target: str,
    s3_endpoint: str,
) -> None:
    from lethe.backup.manifest import read
    from lethe.backup.restore import verify_no_tombstoned_rows
    from lethe.config import BUCKETS
    from lethe.storage import s3_client

    snapshot(shop, s3_endpoint)
    manifest = read(s3_client(REGION, s3_endpoint), BUCKETS.backup(REGION), SID)
    q(target, "INSERT INTO customers VALUES (%s, 'Anna Alt'), ('bob@example.org', 'Bob Berg')", (ANNA,))
    q(
        target,
        "INSERT INTO orders VALUES (1, 'anna@example.com', 'kettle', NULL), (2, 'ANNA@EXAMPLE.COM', 'teapot', NULL),"
        " (3, %s, 'cups', NULL), (5, 'anna@example.com', 'mug', NULL), (4, 'Bob@Example.org', 'spoon', NULL)",
        (ANNA,),
    )
    # her customer row and her four orders, whatever their case; Bob's rows are not hers
    assert verify_no_tombstoned_rows(target, manifest, {pseudonym_of(ANNA)}, KEY) == 5


def test_a_restore_after_she_recased_her_key_and_was_erased_brings_none_of_her_rows_back(
    shop: str,  # noqa: F811
    target: str,
    s3_endpoint: str,
) -> None:
    from lethe.backup.restore import restore_snapshot

    snapshot(shop, s3_endpoint)
    q(shop, "UPDATE customers SET email = 'ANNA@EXAMPLE.COM' WHERE email = 'anna@example.com'")
    assert erase(shop, "anna@example.com")["outcomes"] == {"erased": 1}
    assert q(shop, "SELECT subject_pseudonym FROM lethe.erasure_tombstones") == [(pseudonym_of("ANNA@EXAMPLE.COM"),)]

    lines: list[str] = []
    report = restore_snapshot(
        SID, REGION, target, endpoint_url=s3_endpoint, key=KEY, primary_url=shop, out=lines.append
    )
    assert report.verified, lines
    assert q(target, "SELECT email::text, full_name FROM customers ORDER BY 1") == [
        ("bob@example.org", "Bob Berg"),
        (PLACEHOLDER, None),
    ]
    assert q(target, "SELECT order_id, customer::text FROM orders ORDER BY 1") == [(4, "Bob@Example.org")]
    # her invoices are kept for tax, linked to the placeholder only, as on the primary
    assert q(target, "SELECT invoice_no, customer::text, amount FROM invoices ORDER BY 1") == [
        (10, PLACEHOLDER, 500),
        (11, PLACEHOLDER, 700),
        (12, "BOB@example.org", 900),
    ]
    assert q(target, "SELECT count(*) FROM customers WHERE email = 'anna@example.com'") == [(0,)]
