"""Issue 13's acceptance: Lethe on a database it did not invent (examples/bookshop), end to end.

Lantern Books is shaped unlike re:Skill: a uuid subject key, the subject pointing to its
address, orders partitioned by year with foreign keys declared on the partitions only,
invoices in schema `billing` with a NOT NULL link to the customer, `sessions` and `comments`
of other shapes, consent as a (customer, topic) log and closure as `customers.closed_on`.

The real DAGs run on it (dag.test()): migrate, policy check, retention_nightly,
backup_nightly, subject_erasure, backup_erasure_propagation, compliance_audit, then a
restore of the snapshot taken before the erasure. What is left is read back with this
test's own SQL and Parquet reads, and the shape of everything outside Lethe's schema is
compared, as a digest of information_schema and pg_indexes, before and after.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import own_schema
import psycopg2
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.dags

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "bookshop"
REGIONS = ("us-east-1", "ap-southeast-1")
PLACEHOLDER = "00000000-0000-0000-0000-000000000000"
# The only places Ada may stay after her erasure: what the policy keeps of an issued invoice.
KEPT = {("invoices", "billed_name"), ("invoices", "billed_address")}


def _example() -> Any:
    spec = importlib.util.spec_from_file_location("bookshop_seed", EXAMPLE / "seed.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["bookshop_seed"] = module
    spec.loader.exec_module(module)
    return module


bookshop = _example()
ADA, BRAM, CATO, DIRK, EVA, FENNA = bookshop.NAMED


def ada_traces(value: str) -> bool:
    """Whether a stored value holds anything of Ada, by patterns written here."""
    low = value.lower()
    digits = re.sub(r"\D", "", value)
    return (
        "ada.visser" in low
        or "visser" in low
        or "lindenlaan 12" in low
        or "198.51.100.23" in value
        or digits.endswith("612345678")
        or ADA.key in low
    )


def q(url: str, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(statement, params)
        return cur.fetchall() if cur.description else []


def shape_digest(url: str) -> str:
    """The shape of everything outside Lethe's schema (tables, columns, constraints, indexes, schemas)."""
    parts = [
        q(
            url,
            "SELECT table_schema, table_name, table_type FROM information_schema.tables"
            " WHERE table_schema NOT IN ('lethe', 'information_schema') AND table_schema NOT LIKE 'pg%%' ORDER BY 1, 2",
        ),
        q(
            url,
            "SELECT table_schema, table_name, column_name, ordinal_position, data_type, is_nullable, column_default"
            " FROM information_schema.columns WHERE table_schema NOT IN ('lethe', 'information_schema')"
            " AND table_schema NOT LIKE 'pg%%' ORDER BY 1, 2, 4",
        ),
        q(
            url,
            "SELECT constraint_schema, table_name, constraint_name, constraint_type"
            " FROM information_schema.table_constraints WHERE constraint_schema NOT IN ('lethe', 'information_schema')"
            " AND constraint_schema NOT LIKE 'pg%%' ORDER BY 1, 2, 3",
        ),
        q(
            url,
            "SELECT schemaname, tablename, indexname, indexdef FROM pg_indexes"
            " WHERE schemaname NOT IN ('lethe', 'information_schema') AND schemaname NOT LIKE 'pg%%' ORDER BY 1, 2, 3",
        ),
        # pg_temp_N / pg_toast_temp_N come and go with sessions' temporary tables: not the shop's shape
        q(
            url,
            "SELECT nspname FROM pg_namespace WHERE nspname NOT IN ('lethe', 'information_schema')"
            " AND nspname NOT LIKE 'pg%%' ORDER BY 1",
        ),
    ]
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def sql_traces(url: str) -> dict[tuple[str, str], int]:
    """(table, column) -> rows holding a trace of Ada, over every text-like column outside Lethe's schema."""
    found: dict[tuple[str, str], int] = {}
    columns = q(
        url,
        "SELECT c.table_schema, c.table_name, c.column_name FROM information_schema.columns c"
        " JOIN information_schema.tables t USING (table_schema, table_name)"
        " WHERE c.table_schema NOT IN ('lethe', 'pg_catalog', 'information_schema') AND t.table_type = 'BASE TABLE'",
    )
    for schema, table, column in columns:
        rows = q(url, f'SELECT "{column}"::text FROM "{schema}"."{table}" WHERE "{column}" IS NOT NULL')  # noqa: S608
        n = sum(1 for (value,) in rows if ada_traces(value))
        if n:
            found[(table, column)] = n
    return found


def parquet_traces(s3: str) -> dict[tuple[str, str], int]:
    """(table, column) -> rows holding a trace of Ada in every version of every backup object in both regions."""
    from lethe.config import BUCKETS
    from lethe.storage import s3_client

    found: dict[tuple[str, str], int] = {}
    for region in REGIONS:
        client = s3_client(region, s3)
        bucket = BUCKETS.backup(region)
        for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
            for v in page.get("Versions", []):
                body = client.get_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])["Body"].read()
                if not v["Key"].endswith(".parquet"):
                    assert not ada_traces(body.decode(errors="replace")), v["Key"]
                    continue
                frame = pq.read_table(io.BytesIO(body))
                match = re.search(r"/data/([^/]+)/", v["Key"])
                table = (match.group(1) if match else v["Key"]).rsplit(".", 1)[-1]
                for name in frame.column_names:
                    column = frame.column(name)
                    if not (pa.types.is_string(column.type) or pa.types.is_dictionary(column.type)):
                        continue
                    n = sum(1 for value in column.to_pylist() if value and ada_traces(str(value)))
                    if n:
                        found[(table, name)] = found.get((table, name), 0) + n
    return found


@pytest.fixture
def shop(services: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A database with nothing but Lantern Books in it (no Lethe schema yet), as Lethe's primary."""
    from lethe import testing

    url = testing.empty_database(services[0], "lethe_shop")
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        bookshop.create_schema(cur)
        bookshop.seed(cur)
    own_schema.as_primary(monkeypatch, url, EXAMPLE / "policy.yaml")
    yield url
    testing.drop_database(url)


def _key() -> bytes:
    return json.loads(os.environ["AIRFLOW_CONN_LETHE_PSEUDONYM_KEY"])["password"].encode()


# Seven DAG runs and a restore in one story: the suite's 900 s default is for one DAG.
@pytest.mark.timeout(1800)
def test_lethe_runs_on_a_database_it_did_not_invent(
    shop: str, s3_endpoint: str, airflow_home: Path, services: tuple[str, str]
) -> None:
    from lethe import testing
    from lethe.backup.restore import restore_snapshot
    from lethe.dagrun import run_dag
    from lethe.db import migrate
    from lethe.policy import load_policy
    from lethe.policy.check import schema_problems

    before = shape_digest(shop)
    assert sql_traces(shop)  # Ada is there, in several tables (sanity of the patterns)

    migrate(shop)
    assert schema_problems(load_policy(), shop) == []

    # retention_nightly: the clocks the policy declares (closed_on, consent_log.revoked_at) drive it.
    run_dag("retention_nightly")
    assert q(shop, "SELECT count(*) FROM newsletter_subscribers WHERE customer_id = %s", (EVA.key,)) == [(0,)]
    # Dirk closed 60 days ago: no details left, but his row stays while his kept invoice points at it.
    assert q(shop, "SELECT email, phone, full_name, address_id FROM customers WHERE customer_id = %s", (DIRK.key,)) == [
        (None, None, "[redacted]", None)
    ]
    assert q(shop, "SELECT count(*) FROM comments WHERE customer_id = %s", (DIRK.key,)) == [(0,)]
    # The address nobody points to went; addresses still pointed at by orders (FKs on the partitions) stayed.
    assert q(shop, "SELECT count(*) FROM addresses WHERE line1 = 'Kerkstraat 99'") == [(0,)]
    assert q(shop, "SELECT count(*) FROM addresses WHERE line1 = 'Stationsplein 1'") == [(1,)]
    assert q(shop, "SELECT count(*) FROM sessions WHERE last_seen_at < now() - interval '30 days'") == [(0,)]

    run_dag("backup_nightly")
    [(snapshot,)] = q(
        shop, "SELECT snapshot_id FROM lethe.backup_snapshots WHERE region = 'us-east-1' AND status = 'complete'"
    )
    assert parquet_traces(s3_endpoint)  # the snapshot holds Ada before the erasure

    run_dag("subject_erasure", {"identifier_kind": "email", "identifier": "ADA.Visser@example.nl", "dry_run": False})
    run_dag("backup_erasure_propagation")
    run_dag("compliance_audit")  # every check, retention, erasure and backups, passes on the shop

    # Primary: Ada is gone from every table, her own address too; Fenna's review no longer names her.
    for table in ("customers", "orders", "sessions", "comments", "consent_log", "newsletter_subscribers"):
        assert q(shop, f"SELECT count(*) FROM {table} WHERE customer_id = %s", (ADA.key,)) == [(0,)], table  # noqa: S608
    assert q(shop, "SELECT count(*) FROM orders_2025 WHERE customer_id = %s", (ADA.key,)) == [(0,)]
    assert q(shop, "SELECT count(*) FROM addresses WHERE line1 = 'Lindenlaan 12'") == [(0,)]
    assert q(shop, "SELECT body FROM comments WHERE customer_id = %s", (FENNA.key,)) == [
        ("Gift from [erased], thank you [erased]!",)  # her email, and "Ada" of her own display_name
    ]
    # Bram and Cato's shared address and rows are untouched.
    shared = "SELECT count(*) FROM customers WHERE customer_id IN (%s, %s) AND address_id IS NOT NULL"
    assert q(shop, shared, (BRAM.key, CATO.key)) == [(2,)]
    # Her invoice is kept, re-pointed to the placeholder customer, which holds nothing but its key;
    # her keyed pseudonym for it is in Lethe's schema, not in the shop's.
    assert q(
        shop, "SELECT customer_id::text, billed_name FROM billing.invoices WHERE billed_name = %s", (ADA.name,)
    ) == [(PLACEHOLDER, ADA.name)]
    assert q(
        shop,
        "SELECT email, phone, full_name, address_id, closed_on FROM customers WHERE customer_id = %s",
        (PLACEHOLDER,),
    ) == [(None, None, None, None, None)]
    pseudonym = hmac_hex(_key(), f"user_id:{ADA.key}")
    assert q(
        shop,
        "SELECT table_name, subject_pseudonym FROM lethe.kept_pseudonyms WHERE row_key->>'invoice_no' ="
        " (SELECT invoice_no FROM billing.invoices WHERE billed_name = %s)",
        (ADA.name,),
    ) == [("billing.invoices", pseudonym)]
    # Kept rows hold only what the policy keeps: nothing of Ada outside the invoice's kept columns.
    left = sql_traces(shop)
    assert set(left) <= KEPT, {k: v for k, v in left.items() if k not in KEPT}
    [(status, identifier, detail)] = q(shop, "SELECT status, identifier, detail FROM lethe.erasure_requests")
    assert (status, identifier) == ("certified", None)
    assert (
        detail["tables"]["addresses"]["rows"] == 1 and detail["tables"]["billing.invoices"]["action"] == "pseudonymise"
    )
    [(success, failed)] = q(shop, "SELECT success, failed FROM lethe.audit_runs ORDER BY audited_at DESC LIMIT 1")
    assert (success, failed or []) == (True, []), failed

    # Backups: no version of any object in either region holds her outside the kept columns.
    left = parquet_traces(s3_endpoint)
    assert set(left) <= KEPT, {k: v for k, v in left.items() if k not in KEPT}

    # The snapshot taken before the erasure restores into an empty copy of the shop's schema, without her.
    target = testing.empty_database(services[0], "lethe_shop_restore")
    try:
        with psycopg2.connect(target) as conn, conn.cursor() as cur:
            bookshop.create_schema(cur)
        report = restore_snapshot(
            snapshot, "us-east-1", target, endpoint_url=s3_endpoint, key=_key(), primary_url=shop, out=lambda _: None
        )
        assert report.tombstoned_rows_left == 0
        left = sql_traces(target)
        assert set(left) <= KEPT, {k: v for k, v in left.items() if k not in KEPT}
        assert q(target, "SELECT count(*) FROM billing.invoices") == q(shop, "SELECT count(*) FROM billing.invoices")
        assert q(target, "SELECT count(*) FROM orders WHERE customer_id = %s", (BRAM.key,)) == [(1,)]
        # Her kept invoice's NOT NULL link is re-pointed to the placeholder customer, made by the restore (the
        # snapshot predates it), and every link schema.sql declares among the backed-up tables was checked:
        # customers->addresses, billing.invoices->customers, consent_log->customers, comments->customers/products,
        # and orders->customers/addresses, declared on orders' partitions only.
        assert q(target, "SELECT count(*) FROM billing.invoices WHERE customer_id = %s", (PLACEHOLDER,)) == [(1,)]
        assert q(target, "SELECT full_name FROM customers WHERE customer_id = %s", (PLACEHOLDER,)) == [(None,)]
        assert (report.foreign_keys_checked, report.orphan_rows, report.foreign_keys_missing) == (7, {}, [])
    finally:
        testing.drop_database(target)

    # Bram shares his address with Cato: erasing him takes his rows, not the address Cato still lives at.
    [(shared_address,)] = q(shop, "SELECT address_id FROM customers WHERE customer_id = %s", (CATO.key,))
    run_dag("subject_erasure", {"identifier_kind": "phone", "identifier": "+31 6 23 45 67 89", "dry_run": False})
    assert q(shop, "SELECT count(*) FROM customers WHERE customer_id = %s", (BRAM.key,)) == [(0,)]
    assert q(shop, "SELECT count(*) FROM orders WHERE customer_id = %s", (BRAM.key,)) == [(0,)]
    assert q(shop, "SELECT line1 FROM addresses WHERE address_id = %s", (shared_address,)) == [("Molenweg 3",)]

    # Cato asks by her customer number, the shop's uuid key.
    run_dag("subject_erasure", {"identifier_kind": "user_id", "identifier": CATO.key.upper(), "dry_run": False})
    assert q(shop, "SELECT count(*) FROM customers WHERE customer_id = %s", (CATO.key,)) == [(0,)]
    assert q(shop, "SELECT count(*) FROM lethe.erasure_requests WHERE status = 'certified'") == [(3,)]

    # Nothing outside Lethe's schema changed shape: migrate, check, retention, erasure, backups, audit.
    assert shape_digest(shop) == before


def hmac_hex(key: bytes, message: str) -> str:
    import hmac

    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()
