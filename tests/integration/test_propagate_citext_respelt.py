"""Propagation after she re-cased her citext key: a backup taken before keeps none of her rows, in any spelling.

The citext shop with addresses and deliveries of test_backup_citext_addresses: customers keyed by
`email citext PRIMARY KEY`, her customer row storing 'Anna@Example.com', her orders spelling it in other cases,
her invoices kept (pseudonymised), addresses and deliveries (no subject column of their own) linked to her orders.

A snapshot is taken; then she changes her key's case on the primary to 'anna@example.com' (the citext foreign keys
allow it), then she is erased: her tombstone is of the new spelling, the snapshot named her rows by the old one.
Propagation must still leave, in every version of every object of the backup (read raw here with boto3 and
pyarrow), none of her rows and her e-mail in no spelling, while every row of Bob's is kept as it was. Both for one
full snapshot and for an incremental chain of two nights (a base and a delta holding a later order of each).
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from test_backup_citext_addresses import shop  # noqa: F401  (the fixture)
from test_erasure_citext_key import KEY, PLACEHOLDER, erase, q

pytestmark = pytest.mark.integration

REGION = "us-east-1"
NIGHTS = ("20261201T020000Z", "20261202T020000Z")
TABLES = ("customers", "orders", "invoices", "addresses", "deliveries")


def raw_rows(s3_endpoint: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of every version of every data object in the region's backup bucket, by table (raw reads)."""
    import pyarrow.parquet as pq
    from lethe.config import BUCKETS
    from lethe.storage import s3_client

    client, bucket = s3_client(REGION, s3_endpoint), BUCKETS.backup(REGION)
    rows: dict[str, list[dict[str, Any]]] = {t: [] for t in TABLES}
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix="snapshots/"):
        for v in page.get("Versions", []):
            if "/data/" not in v["Key"] or not v["Key"].endswith(".parquet"):
                continue
            table = v["Key"].split("/data/", 1)[1].split("/", 1)[0]
            body = client.get_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])["Body"].read()
            rows[table] += pq.read_table(io.BytesIO(body)).to_pylist()
    return rows


def data_objects(s3_endpoint: str) -> int:
    from lethe.config import BUCKETS
    from lethe.storage import s3_client

    client, bucket = s3_client(REGION, s3_endpoint), BUCKETS.backup(REGION)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="snapshots/")
    return sum(1 for page in pages for o in page.get("Contents", []) if "/data/" in o["Key"])


def plain(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(({k: v for k, v in r.items() if not k.startswith("_lethe")} for r in rows), key=repr)


def bobs(rows: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Bob's rows (his customer row, orders 4 and 7, invoice 12, address 103, delivery 204), by table."""
    mine = {
        "customers": lambda r: r["email"] == "bob@example.org",
        "orders": lambda r: r["order_id"] in (4, 7),
        "invoices": lambda r: r["invoice_no"] == 12,
        "addresses": lambda r: r["address_id"] == 103,
        "deliveries": lambda r: r["delivery_id"] == 204,
    }
    return {t: plain([r for r in rows[t] if not r.get("_lethe_gone") and mine[t](r)]) for t in TABLES}


@pytest.mark.parametrize("incremental", [False, True], ids=["full", "incremental"])
def test_propagation_after_she_recased_her_key_leaves_none_of_her_rows_in_the_backup(
    shop: str,  # noqa: F811
    s3_endpoint: str,
    incremental: bool,
) -> None:
    from lethe.backup.propagate import propagate_region
    from lethe.backup.snapshot import take_snapshot
    from lethe.db import migrate
    from lethe.policy import load_policy

    migrate(shop)
    policy = load_policy()
    if incremental:
        policy = policy.model_copy(update={"backups": policy.backups.model_copy(update={"incremental": True})})
        take_snapshot(shop, REGION, s3_endpoint, NIGHTS[0], policy, KEY)
    # (the second night's delta) an order of hers in yet another case, and one of Bob's
    q(
        shop,
        "INSERT INTO orders VALUES (6, 'ANNA@example.COM', 'tray', NULL, NULL),"
        " (7, 'bob@example.org', 'fork', NULL, NULL)",
    )
    take_snapshot(shop, REGION, s3_endpoint, NIGHTS[1], policy, KEY)
    before = raw_rows(s3_endpoint)
    assert {r["order_id"] for r in before["orders"]} == {1, 2, 3, 4, 5, 6, 7}, "the backup holds her and Bob"
    bob_before = bobs(before)
    assert all(bob_before.values()), "the backup holds Bob's rows of every table"

    q(shop, "UPDATE customers SET email = 'anna@example.com' WHERE email::text = 'Anna@Example.com'")
    assert q(shop, "SELECT email::text FROM customers ORDER BY 1") == [("anna@example.com",), ("bob@example.org",)]
    assert erase(shop, "anna@example.com")["outcomes"] == {"erased": 1}

    result = propagate_region(shop, REGION, s3_endpoint, key=KEY)
    # the cost, for the record (pytest -s): objects read in all, of them read to match re-cased keys
    print(
        f"objects read: {result.objects_read} ({result.as_dict().get('folded_key_objects_read')} for re-cased keys)"
        f" of {data_objects(s3_endpoint)} data objects"
    )
    assert result.tombstoned_rows_left == 0 and result.mentions_left == 0

    after = raw_rows(s3_endpoint)
    # her e-mail in no spelling, in no row of any version of any object
    leaks = sorted({t for t, rows in after.items() for r in rows if "anna@example" in repr(r).lower()})
    assert leaks == [], "tables with rows still naming her"  # the tables only: her address is not printed
    # none of her rows: her customer row, orders, their addresses and deliveries are gone
    live = {t: [r for r in rows if not r.get("_lethe_gone")] for t, rows in after.items()}
    assert {r["email"] for r in live["customers"]} == {"bob@example.org"}
    assert {r["order_id"] for r in live["orders"]} == {4, 7}
    assert {r["address_id"] for r in live["addresses"]} == {103}
    assert {r["delivery_id"] for r in live["deliveries"]} == {204}
    # her invoices are kept for tax, linked to the placeholder only, as on the primary
    assert {(r["invoice_no"], r["customer"], r["amount"]) for r in live["invoices"]} == {
        (10, PLACEHOLDER, 500),
        (11, PLACEHOLDER, 700),
        (12, "BOB@example.org", 900),
    }
    # every row of Bob's kept exactly as the backup held it, in every object holding it
    assert bobs(after) == bob_before
