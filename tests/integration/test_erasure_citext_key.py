"""A shop keyed by e-mail in `citext`: one person, her key spelt in several cases, erased as one person.

The shop's customers are keyed by `email citext PRIMARY KEY`; orders (deleted on erasure) and invoices (kept,
their NOT NULL link re-pointed to a placeholder customer) reference it with citext foreign keys, and spell the
key in another case than the customer row does: PostgreSQL says 'Anna@Example.com' and 'anna@example.com' are
the same customer. The request names her in a third spelling. A second customer, Bob, must be kept whole.

What is left is read back with this test's own SQL: none of Anna's orders, her invoices kept with only the
placeholder's key, Bob untouched, one tombstone and one keyed pseudonym for every kept invoice of hers (not one
per spelling), and her address in no log line, no failure reason and no table of Lethe's schema.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import own_schema
import psycopg2
import pytest
from lethe import testing
from psycopg2 import sql

pytestmark = pytest.mark.integration

KEY = b"citext-key"
PLACEHOLDER = "erased@placeholder.invalid"
ANNA = "Anna@Example.com"  # as the customer row stores it

SCHEMA = """
CREATE EXTENSION IF NOT EXISTS citext;
CREATE TABLE customers (
    email citext PRIMARY KEY,
    full_name text
);
CREATE TABLE orders (
    order_id bigint PRIMARY KEY,
    customer citext NOT NULL REFERENCES customers (email),
    item text NOT NULL,
    ship_to text
);
CREATE TABLE invoices (
    invoice_no bigint PRIMARY KEY,
    customer citext NOT NULL REFERENCES customers (email),
    amount int NOT NULL
);
"""

SEED = """
INSERT INTO customers VALUES ('Anna@Example.com', 'Anna Alt'), ('bob@example.org', 'Bob Berg');
INSERT INTO orders VALUES (1, 'anna@example.com', 'kettle', 'Anna Alt'), (2, 'ANNA@EXAMPLE.COM', 'teapot', NULL),
    (3, 'Anna@Example.com', 'cups', NULL), (4, 'Bob@Example.org', 'spoon', 'Bob Berg');
INSERT INTO invoices VALUES (10, 'anna@example.com', 500), (11, 'ANNA@example.com', 700),
    (12, 'BOB@example.org', 900);
"""

POLICY = f"""
version: "2026.12.0"
source: "Citext shop test notice"
subject:
  table: customers
  key: email
  identifiers: {{email: email}}
  placeholder: "{PLACEHOLDER}"
purposes:
  sales: Selling things
  accounting: Tax records
consent_purposes: []
tables:
  customers:
    description: Customers, keyed by their e-mail (citext)
    purpose: sales
    legal_basis: contract
    backup: true
    subject: email
    columns: {{email: email, full_name: name}}
    retain_indefinitely: "While the account exists"
    erasure: {{action: delete}}
  orders:
    description: Orders, naming the customer by e-mail in any case
    purpose: sales
    legal_basis: contract
    backup: true
    subject: customer
    columns: {{order_id: identifier, customer: identifier, item: attribute, ship_to: name}}
    retain_indefinitely: "Order history"
    erasure: {{action: delete}}
  invoices:
    description: Invoices, NOT NULL link to the customer in any case
    purpose: accounting
    legal_basis: legal_obligation
    backup: true
    subject: customer
    columns: {{invoice_no: identifier, customer: identifier, amount: payment}}
    retain_indefinitely: "Tax records"
    erasure:
      action: pseudonymise
      columns: {{customer: placeholder}}
      keep:
        amount: "Amount invoiced: tax record."
      retained_because: "Invoices are kept for seven years."
"""


def q(url: str, statement: str | sql.Composable, params: Any = ()) -> list[tuple[Any, ...]]:
    with closing(psycopg2.connect(url)) as conn, conn, conn.cursor() as cur:
        cur.execute("SET statement_timeout = '30s'")
        cur.execute(statement, params)
        return cur.fetchall() if cur.description else []


@pytest.fixture
def shop(services: tuple[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    url = testing.empty_database(services[0], "lethe_citext")
    with closing(psycopg2.connect(url)) as conn, conn, conn.cursor() as cur:
        cur.execute(SCHEMA)
        cur.execute(SEED)
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    own_schema.as_primary(monkeypatch, url, path)
    yield url
    testing.drop_database(url)


def erase(url: str, email: str) -> dict[str, Any]:
    from lethe.db import transaction
    from lethe.erasure import lifecycle, request, tasks
    from lethe.policy import load_policy

    with transaction(url) as cur:
        request_id, _ = request.register(cur, "email", email)
        lifecycle.claim_one(cur, request_id, "citext-run", [])
        lifecycle.move(cur, "plan", [request_id], run_id="citext-run")
        lifecycle.move(cur, "approve_unattended", [request_id], run_id="citext-run")
    summary = tasks.erase_run("citext-run", url, KEY, load_policy())
    summary["verify"] = tasks.verify_run("citext-run", url, load_policy())
    return summary


def lethe_text(url: str) -> str:
    """Every row of every table in Lethe's schema, as text; but the identifier of the open request (erasure_requests
    keeps it until the request closes, by design)."""
    tables = q(
        url,
        "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'lethe' AND c.relkind IN ('r', 'p')",
    )
    return "\n".join(
        str(row)
        for (t,) in tables
        for row in q(url, sql.SQL("SELECT (to_jsonb(x) - 'identifier')::text FROM {} x").format(sql.SQL(t)))
    )


# The request spells her as the customer row does, as an order does, and in a spelling stored nowhere.
@pytest.mark.parametrize("given", [ANNA, "anna@example.com", "aNNa@EXAMPLE.com"])
def test_a_citext_key_spelt_in_other_cases_is_one_person_erased_once(
    shop: str, given: str, caplog: pytest.LogCaptureFixture
) -> None:
    from lethe.db import migrate

    migrate(shop)
    caplog.set_level(logging.DEBUG)
    summary = erase(shop, given)
    reasons = q(shop, "SELECT status, detail->>'error' FROM lethe.erasure_requests")
    assert summary["outcomes"] == {"erased": 1}, (summary, reasons)
    assert summary["verify"] == {"requests": 1, "verified": 1, "failed": 0}, (summary, reasons)

    # her customer row and every order of hers, whatever the case, are gone; Bob's are there as they were
    assert q(shop, "SELECT email::text, full_name FROM customers ORDER BY 1") == [
        ("bob@example.org", "Bob Berg"),
        (PLACEHOLDER, None),
    ]
    assert q(shop, "SELECT order_id, customer::text, item, ship_to FROM orders ORDER BY 1") == [
        (4, "Bob@Example.org", "spoon", "Bob Berg")
    ]
    # her invoices stay, with the placeholder's key and the amount; Bob's in his own spelling
    assert q(shop, "SELECT invoice_no, customer::text, amount FROM invoices ORDER BY 1") == [
        (10, PLACEHOLDER, 500),
        (11, PLACEHOLDER, 700),
        (12, "BOB@example.org", 900),
    ]

    # one person: one tombstone, and the one pseudonym of her key (its stored spelling) for each kept invoice
    tombstones = q(shop, "SELECT subject_pseudonym FROM lethe.erasure_tombstones")
    assert len(tombstones) == 1, tombstones
    [(pseudonym,)] = tombstones
    assert pseudonym == hmac.new(KEY, f"user_id:{ANNA}".encode(), hashlib.sha256).hexdigest()
    kept = q(shop, "SELECT table_name, row_key::text, subject_pseudonym FROM lethe.kept_pseudonyms ORDER BY 2")
    assert [(t, p) for t, _, p in kept] == [("invoices", pseudonym), ("invoices", pseudonym)], kept

    # her address in no spelling anywhere: not in Lethe's tables, not in a log line
    leaks = [line for line in lethe_text(shop).lower().splitlines() if "anna@example" in line]
    assert not leaks, leaks
    logged = [r.getMessage() for r in caplog.records if "anna@example" in r.getMessage().lower()]
    assert not logged, logged


# Her rows spelt otherwise than her customer row are hers in a backup too: a snapshot pseudonymises the key as the
# customer row stores it (the tombstone's), so propagation erases every spelling.
def test_propagation_leaves_none_of_her_rows_in_a_backup_whatever_their_spelling(shop: str, s3_endpoint: str) -> None:
    import io

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
    with transaction(shop) as cur:
        cur.execute("SELECT request_id::text, subject_pseudonym FROM erasure_tombstones")
        request_id, pseudonym = cur.fetchone()  # type: ignore[misc]
    request = {"request_id": request_id, "subject_pseudonym": pseudonym, "detail": {"outcome": "erased"}}
    certificate.write(s3_client("ap-south-1", s3_endpoint), certificate.build(request, "test"))
    propagate_region(shop, region, s3_endpoint, key=KEY)

    client, bucket = s3_client(region, s3_endpoint), BUCKETS.backup(region)
    rows: dict[str, list[dict[str, Any]]] = {"orders": [], "invoices": []}
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for v in page.get("Versions", []):
            for table, found in rows.items():
                if f"/data/{table}/" in v["Key"]:
                    body = client.get_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])["Body"].read()
                    found += pq.read_table(io.BytesIO(body)).to_pylist()
    assert sorted(r["order_id"] for r in rows["orders"]) == [4], rows["orders"]
    assert sorted((r["invoice_no"], r["customer"]) for r in rows["invoices"]) == [
        (10, PLACEHOLDER),
        (11, PLACEHOLDER),
        (12, "BOB@example.org"),
    ], rows["invoices"]
