"""Backups of a citext-keyed shop: an address her orders point to, in any spelling of her key, is hers in a backup too.

The citext shop of test_erasure_citext_key, with delivery addresses (no subject column of their own) that orders
point to. Her orders spell her key 'anna@example.com' and 'ANNA@EXAMPLE.COM' (her customer row: 'Anna@Example.com');
PostgreSQL says both are her. Her erasure deletes, on the primary, the addresses only her orders point to: one both
of those orders point to, one only an order of hers spelt in a third case points to, and one only her order spelt
as her customer row points to. Bob's address stays. A backup
taken before must, after propagation of her erasure, hold none of her addresses, nor the deliveries of her orders
(rows pointing at hers, without a subject column either), whatever the case: read back from the objects.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import own_schema
import psycopg2
import pytest
from lethe import testing
from test_erasure_citext_key import ANNA, KEY, POLICY, SCHEMA, SEED, erase, q

pytestmark = pytest.mark.integration

ADDRESS_POLICY = POLICY.replace(
    "columns: {order_id: identifier, customer: identifier, item: attribute, ship_to: name}",
    "columns: {order_id: identifier, customer: identifier, item: attribute, ship_to: name, ship_address: identifier}",
) + (
    """  addresses:
    description: Delivery addresses orders point to (no customer column of their own)
    purpose: sales
    legal_basis: contract
    backup: true
    subject: null
    columns: {address_id: identifier, street: address}
    retain_indefinitely: "While an order points to it"
    erasure: {action: delete}
  deliveries:
    description: Deliveries of orders (no customer column of their own)
    purpose: sales
    legal_basis: contract
    backup: true
    subject: null
    columns: {delivery_id: identifier, order_id: identifier, courier_note: comment}
    retain_indefinitely: "While the order exists"
    erasure: {action: delete}
"""
)

# 100: her orders 1 ('anna@example.com') and 2 ('ANNA@EXAMPLE.COM'); 101: her order 3 ('Anna@Example.com');
# 102: her order 5 ('anna@EXAMPLE.com'); 103: Bob's order 4. Deliveries (no subject column) of her orders 1 and 3
# and of Bob's order 4.
ADDRESSES = """
CREATE TABLE addresses (address_id bigint PRIMARY KEY, street text NOT NULL);
INSERT INTO addresses VALUES (100, '1 Elm Street'), (101, '2 Elm Street'), (102, '3 Elm Street'), (103, '9 Oak Road');
ALTER TABLE orders ADD COLUMN ship_address bigint REFERENCES addresses (address_id);
UPDATE orders SET ship_address = CASE order_id WHEN 1 THEN 100 WHEN 2 THEN 100 WHEN 3 THEN 101 ELSE 103 END;
INSERT INTO orders VALUES (5, 'anna@EXAMPLE.com', 'mug', NULL, 102);
CREATE TABLE deliveries (delivery_id bigint PRIMARY KEY, order_id bigint NOT NULL REFERENCES orders, courier_note text);
INSERT INTO deliveries VALUES (200, 1, 'leave at the back door'), (202, 3, 'ring twice'), (204, 4, 'by the gate');
"""


@pytest.fixture
def shop(services: tuple[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    assert "ship_address: identifier" in ADDRESS_POLICY
    url = testing.empty_database(services[0], "lethe_citext_addresses")
    with closing(psycopg2.connect(url)) as conn, conn, conn.cursor() as cur:
        cur.execute(SCHEMA)
        cur.execute(SEED)
        cur.execute(ADDRESSES)
    path = tmp_path / "policy.yaml"
    path.write_text(ADDRESS_POLICY)
    own_schema.as_primary(monkeypatch, url, path)
    yield url
    testing.drop_database(url)


def test_propagation_leaves_none_of_the_addresses_only_her_orders_point_to_in_a_backup(
    shop: str, s3_endpoint: str
) -> None:
    import pyarrow.parquet as pq
    from lethe.backup.propagate import propagate_region
    from lethe.backup.snapshot import take_snapshot
    from lethe.config import BUCKETS
    from lethe.db import migrate, transaction
    from lethe.erasure import certificate
    from lethe.policy import load_policy
    from lethe.storage import s3_client

    region = "us-east-1"
    migrate(shop)
    take_snapshot(shop, region, s3_endpoint, "20261201T020000Z", load_policy(), KEY)
    assert erase(shop, ANNA)["outcomes"] == {"erased": 1}
    # on the primary her two addresses went with her orders; Bob's stays
    assert q(shop, "SELECT address_id FROM addresses ORDER BY 1") == [(103,)]
    assert q(shop, "SELECT delivery_id FROM deliveries ORDER BY 1") == [(204,)]
    with transaction(shop) as cur:
        cur.execute("SELECT request_id::text, subject_pseudonym FROM erasure_tombstones")
        request_id, pseudonym = cur.fetchone()  # type: ignore[misc]
    request = {"request_id": request_id, "subject_pseudonym": pseudonym, "detail": {"outcome": "erased"}}
    certificate.write(s3_client("ap-south-1", s3_endpoint), certificate.build(request, "test"))
    propagate_region(shop, region, s3_endpoint, key=KEY)

    client, bucket = s3_client(region, s3_endpoint), BUCKETS.backup(region)
    rows: dict[str, list[dict[str, Any]]] = {"orders": [], "addresses": [], "deliveries": []}
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for v in page.get("Versions", []):
            for table, found in rows.items():
                if f"/data/{table}/" in v["Key"]:
                    body = client.get_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])["Body"].read()
                    found += pq.read_table(io.BytesIO(body)).to_pylist()
    assert rows["addresses"] and rows["deliveries"], "the snapshot wrote them"
    assert sorted(r["order_id"] for r in rows["orders"]) == [4], rows["orders"]
    assert sorted((r["address_id"], r["street"]) for r in rows["addresses"]) == [(103, "9 Oak Road")], rows["addresses"]
    assert sorted(r["delivery_id"] for r in rows["deliveries"]) == [204], rows["deliveries"]
