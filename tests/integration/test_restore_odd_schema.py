"""A snapshot of a shop Lethe never saw, restored and drilled, read back with this test's own SQL.

The shop keeps its customers in `"Shop"."Kunden"` (a mixed-case schema no search path names); a customer may
have been referred by another (a nullable link to the same table); addresses are keyed by (customer, number)
and deliveries point to one with a composite key; invoices live in another schema, whose name is given per
case (a `"` in it, say), with a NOT NULL link re-pointed to the placeholder customer on erasure.

A snapshot is taken, one customer erased (the real erasure), and the snapshot from before the erasure restored
into an empty copy of the schema and drilled (the real restore drill, its scratch database copied by pg_dump).
The restored rows are read with plain SQL here: no row of the erased customer, every kept link intact, the
placeholder there, and every foreign key declared among the backed-up tables counted as checked.
"""

from __future__ import annotations

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

KEY = b"odd-schema-key"
REGION = "us-east-1"
PLACEHOLDER = 0
ANNA, BERT, CLARA = 1, 2, 3  # Anna is erased; Bert was referred by her; Clara by Bert
# geworben_von, Adressen->Kunden, Lieferungen->Adressen (composite), Rechnungen->Kunden and ->Adressen (composite),
# Bestellungen->Kunden twice (declared on each partition only)
# Newsletter->Kunden by key and by login (citext: compared case-insensitively), Kunden->Kunden by login too
FKS_DECLARED = 10


def schema_sql(finance: str) -> sql.Composable:
    f = sql.Identifier(finance)
    return sql.SQL(
        """
CREATE EXTENSION IF NOT EXISTS citext;
CREATE SCHEMA "Shop";
CREATE SCHEMA {f};
CREATE TABLE "Shop"."Kunden" (
    "Kunden_Nr" bigint PRIMARY KEY,
    email text UNIQUE,
    login citext UNIQUE,
    name text,
    geworben_von bigint REFERENCES "Shop"."Kunden" ("Kunden_Nr"),
    pate citext REFERENCES "Shop"."Kunden" (login)
);
CREATE TABLE "Shop"."Adressen" (
    "Kunden_Nr" bigint NOT NULL REFERENCES "Shop"."Kunden" ("Kunden_Nr"),
    lfd int NOT NULL,
    strasse text NOT NULL,
    PRIMARY KEY ("Kunden_Nr", lfd)
);
CREATE TABLE "Shop"."Lieferungen" (
    lieferung_id bigint PRIMARY KEY,
    "Kunden_Nr" bigint,
    adresse int,
    kontakt text,
    ip inet,
    FOREIGN KEY ("Kunden_Nr", adresse) REFERENCES "Shop"."Adressen" ("Kunden_Nr", lfd)
);
CREATE TABLE {f}."Rechnungen" (
    rechnung_nr bigint PRIMARY KEY,
    "Kunden_Nr" bigint NOT NULL REFERENCES "Shop"."Kunden" ("Kunden_Nr"),
    adresse_kunde bigint,
    adresse int,
    betrag int NOT NULL,
    FOREIGN KEY (adresse_kunde, adresse) REFERENCES "Shop"."Adressen" ("Kunden_Nr", lfd)
);
CREATE TABLE "Shop"."Newsletter" (
    abo_id bigint PRIMARY KEY,
    "Kunden_Nr" bigint NOT NULL REFERENCES "Shop"."Kunden" ("Kunden_Nr"),
    login citext REFERENCES "Shop"."Kunden" (login)
);
CREATE TABLE "Shop"."Bestellungen" (
    bestell_nr bigint NOT NULL,
    bestellt_am date NOT NULL,
    "Kunden_Nr" bigint NOT NULL,
    geschenk_fuer bigint,
    PRIMARY KEY (bestell_nr, bestellt_am)
) PARTITION BY RANGE (bestellt_am);
CREATE TABLE "Shop"."Bestellungen_2026" PARTITION OF "Shop"."Bestellungen"
    FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE TABLE "Shop"."Bestellungen_2027" PARTITION OF "Shop"."Bestellungen"
    FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');
ALTER TABLE "Shop"."Bestellungen_2026" ADD FOREIGN KEY ("Kunden_Nr") REFERENCES "Shop"."Kunden";
ALTER TABLE "Shop"."Bestellungen_2026" ADD FOREIGN KEY (geschenk_fuer) REFERENCES "Shop"."Kunden";
ALTER TABLE "Shop"."Bestellungen_2027" ADD FOREIGN KEY ("Kunden_Nr") REFERENCES "Shop"."Kunden";
ALTER TABLE "Shop"."Bestellungen_2027" ADD FOREIGN KEY (geschenk_fuer) REFERENCES "Shop"."Kunden";
"""
    ).format(f=f)


def seed_sql(finance: str) -> sql.Composable:
    return sql.SQL(
        """
INSERT INTO "Shop"."Kunden" VALUES (1, 'anna@odd.test', 'anna', 'Anna Alt', NULL, NULL),
    (2, 'bert@odd.test', 'Bert', 'Bert Berg', 1, 'ANNA'), (3, 'clara@odd.test', 'clara', 'Clara Cis', 2, 'BERT');
INSERT INTO "Shop"."Newsletter" VALUES (20, 1, 'ANNA'), (21, 2, 'bert'), (22, 3, 'Clara');
INSERT INTO "Shop"."Adressen" VALUES (1, 1, 'Altweg 1'), (2, 1, 'Bergstr 2'), (3, 1, 'Cisplatz 3');
INSERT INTO "Shop"."Lieferungen" VALUES (10, 1, 1, 'Anna Alt', '198.51.100.7'), (11, 2, 1, 'Bert Berg', NULL),
    (12, 3, 1, NULL, NULL), (13, NULL, NULL, NULL, NULL);
INSERT INTO "Shop"."Bestellungen" VALUES (1000, '2026-03-01', 1, NULL), (1001, '2026-04-01', 2, 1),
    (1002, '2027-02-01', 3, 2);
INSERT INTO {f}."Rechnungen" VALUES (100, 1, 1, 1, 500), (101, 2, 2, 1, 700), (102, 3, NULL, NULL, 900);
"""
    ).format(f=sql.Identifier(finance))


def policy_yaml(finance: str, incremental: bool = False) -> str:
    rechnungen = f"{finance}.Rechnungen".replace("'", "''")
    return f"""
version: "2026.12.0"
source: "Odd shop test notice"
subject:
  table: Shop.Kunden
  key: Kunden_Nr
  identifiers: {{user_id: Kunden_Nr, email: email}}
  placeholder: {PLACEHOLDER}
purposes:
  sales: Selling things
  accounting: Tax records
consent_purposes: []
backups: {{incremental: {str(incremental).lower()}}}
tables:
  Shop.Kunden:
    description: Customers
    purpose: sales
    legal_basis: contract
    subject: Kunden_Nr
    backup: true
    columns:
      {{Kunden_Nr: identifier, email: email, login: username, name: name, geworben_von: identifier, pate: username}}
    retain_indefinitely: "While the account exists"
    erasure: {{action: delete}}
  Shop.Adressen:
    description: Addresses of a customer
    purpose: sales
    legal_basis: contract
    subject: Kunden_Nr
    backup: true
    columns: {{Kunden_Nr: identifier, lfd: attribute, strasse: address}}
    retain_indefinitely: "While the account exists"
    erasure: {{action: delete}}
  Shop.Lieferungen:
    description: Deliveries to an address (composite link)
    purpose: sales
    legal_basis: contract
    subject: null
    backup: true
    columns: {{lieferung_id: identifier, Kunden_Nr: identifier, adresse: attribute, kontakt: name, ip: ip_address}}
    retain_indefinitely: "Delivery records"
    erasure: {{action: delete}}
  Shop.Newsletter:
    description: Newsletter subscriptions, naming the customer by key and by login (citext)
    purpose: sales
    legal_basis: contract
    subject: Kunden_Nr
    backup: true
    columns: {{abo_id: identifier, Kunden_Nr: identifier, login: username}}
    retain_indefinitely: "While subscribed"
    erasure: {{action: delete}}
  Shop.Bestellungen:
    description: Orders, partitioned by year, foreign keys on the partitions only; an order may be a gift
    purpose: sales
    legal_basis: contract
    subject: Kunden_Nr
    backup: true
    columns: {{bestell_nr: identifier, bestellt_am: timestamp, Kunden_Nr: identifier, geschenk_fuer: identifier}}
    retain_indefinitely: "Order history"
    erasure: {{action: delete}}
  '{rechnungen}':
    description: Invoices, NOT NULL link to the customer
    purpose: accounting
    legal_basis: legal_obligation
    subject: Kunden_Nr
    backup: true
    columns:
      {{rechnung_nr: identifier, Kunden_Nr: identifier, adresse_kunde: identifier, adresse: attribute, betrag: payment}}
    retain_indefinitely: "Tax records"
    erasure:
      action: pseudonymise
      columns: {{Kunden_Nr: placeholder}}
      keep:
        betrag: "Amount invoiced: tax record."
      retained_because: "Invoices are kept for seven years."
"""


def q(url: str, statement: str | sql.Composable, params: Any = ()) -> list[tuple[Any, ...]]:
    with closing(psycopg2.connect(url)) as conn, conn, conn.cursor() as cur:
        cur.execute("SET statement_timeout = '30s'")
        cur.execute(statement, params)
        return cur.fetchall() if cur.description else []


def declared_fks(url: str, schemas: list[str]) -> int:
    """Foreign keys declared among tables of these schemas, counted from the catalogue here: a key declared on
    each partition counts once, as its partitioned table's (by the names of its columns)."""
    [(n,)] = q(
        url,
        "SELECT count(DISTINCT (coalesce(pg_partition_root(c.conrelid), c.conrelid),"
        "  coalesce(pg_partition_root(c.confrelid), c.confrelid),"
        "  ARRAY(SELECT a.attname FROM unnest(c.conkey) k(n) JOIN pg_attribute a"
        "        ON a.attrelid = c.conrelid AND a.attnum = k.n)::text))"
        " FROM pg_constraint c"
        " JOIN pg_class r ON r.oid = c.conrelid JOIN pg_namespace rn ON rn.oid = r.relnamespace"
        " JOIN pg_class p ON p.oid = c.confrelid JOIN pg_namespace pn ON pn.oid = p.relnamespace"
        " WHERE c.contype = 'f' AND rn.nspname = ANY(%s) AND pn.nspname = ANY(%s)",
        (schemas, schemas),
    )
    return int(n)


@pytest.fixture
def shop(
    request: pytest.FixtureRequest, services: tuple[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[tuple[str, str, bool]]:
    finance, _, mode = str(request.param).partition(" ")
    url = testing.empty_database(services[0], "lethe_odd")
    with closing(psycopg2.connect(url)) as conn, conn, conn.cursor() as cur:
        cur.execute(schema_sql(finance))
        cur.execute(seed_sql(finance))
    path = tmp_path / "policy.yaml"
    path.write_text(policy_yaml(finance, incremental=mode == "incremental"))
    own_schema.as_primary(monkeypatch, url, path)
    yield url, finance, mode == "incremental"
    testing.drop_database(url)


def erase(url: str, email: str) -> dict[str, Any]:
    from lethe.db import transaction
    from lethe.erasure import lifecycle, request, tasks
    from lethe.policy import load_policy

    with transaction(url) as cur:
        request_id, _ = request.register(cur, "email", email)
        lifecycle.claim_one(cur, request_id, "odd-run", [])
        lifecycle.move(cur, "plan", [request_id], run_id="odd-run")
        lifecycle.move(cur, "approve_unattended", [request_id], run_id="odd-run")
    return tasks.erase_run("odd-run", url, KEY, load_policy())


# "incremental": the snapshot after the erasure stores a delta over the one before (lethe.backup.chain)
@pytest.mark.parametrize("shop", ['Fi"nanz', "Finanz", "Buch.Haltung", "Buch.Haltung incremental"], indirect=True)
def test_an_odd_schema_restores_and_drills_without_the_erased_customer(
    shop: tuple[str, str, bool], s3_endpoint: str, services: tuple[str, str]
) -> None:
    from lethe.audit import drill, scratch
    from lethe.backup import store
    from lethe.backup.manifest import read as read_manifest
    from lethe.backup.restore import restore_snapshot
    from lethe.backup.snapshot import take_snapshot
    from lethe.config import BUCKETS
    from lethe.db import migrate
    from lethe.policy import load_policy

    url, finance, incremental = shop
    rechnungen = sql.Identifier(finance, "Rechnungen")
    schemas = ["Shop", finance]
    assert declared_fks(url, schemas) == FKS_DECLARED
    migrate(url)
    policy = load_policy()
    take_snapshot(url, REGION, s3_endpoint, "20261201T020000Z", policy, KEY)

    summary = erase(url, "anna@odd.test")
    assert summary["outcomes"] == {"erased": 1}, (
        summary,
        q(url, "SELECT detail->>'error' FROM lethe.erasure_requests"),
    )
    assert q(url, 'SELECT "Kunden_Nr" FROM "Shop"."Kunden" ORDER BY 1') == [(PLACEHOLDER,), (BERT,), (CLARA,)]
    assert q(url, sql.SQL('SELECT rechnung_nr, "Kunden_Nr" FROM {} ORDER BY 1').format(rechnungen)) == [
        (100, PLACEHOLDER),
        (101, BERT),
        (102, CLARA),
    ]

    target = testing.empty_database(services[0], "lethe_odd_restore")
    try:
        with closing(psycopg2.connect(target)) as conn, conn, conn.cursor() as cur:
            cur.execute(schema_sql(finance))
        report = restore_snapshot(
            "20261201T020000Z", REGION, target, endpoint_url=s3_endpoint, key=KEY, primary_url=url, out=lambda _: None
        )
        kunden = 'SELECT "Kunden_Nr", email, name, geworben_von, pate::text FROM "Shop"."Kunden" ORDER BY 1'
        assert q(target, kunden) == [
            (PLACEHOLDER, None, None, None, None),
            (BERT, "bert@odd.test", "Bert Berg", None, None),  # his links to Anna are cut
            (CLARA, "clara@odd.test", "Clara Cis", BERT, "BERT"),  # hers to Bert ("Bert") is his
        ]
        # the links by login are the shop's own, in the case it wrote them: citext compares them case-insensitively
        assert q(target, 'SELECT abo_id, "Kunden_Nr", login::text FROM "Shop"."Newsletter" ORDER BY 1') == [
            (21, BERT, "bert"),
            (22, CLARA, "Clara"),
        ]
        assert q(target, 'SELECT "Kunden_Nr", lfd FROM "Shop"."Adressen" ORDER BY 1') == [(BERT, 1), (CLARA, 1)]
        # Anna's delivery (to her address; its table has no link of its own) goes as on the primary, her IP with it
        lieferungen = 'SELECT lieferung_id, "Kunden_Nr", adresse, kontakt, ip::text FROM "Shop"."Lieferungen"'
        assert q(target, lieferungen + " ORDER BY 1") == q(url, lieferungen + " ORDER BY 1")
        assert [r[0] for r in q(target, lieferungen + " ORDER BY 1")] == [11, 12, 13]
        assert q(
            target,
            sql.SQL('SELECT rechnung_nr, "Kunden_Nr", adresse_kunde, adresse FROM {} ORDER BY 1').format(rechnungen),
        ) == [
            (100, PLACEHOLDER, None, None),
            (101, BERT, BERT, 1),
            (102, CLARA, None, None),
        ]
        assert (report.foreign_keys_checked, report.orphan_rows, report.foreign_keys_missing) == (
            declared_fks(target, schemas),
            {},
            [],
        )
        assert report.foreign_keys_checked == FKS_DECLARED
    finally:
        testing.drop_database(target)

    name = scratch.default_name(url)
    take_snapshot(url, REGION, s3_endpoint, "20261202T020000Z", policy, KEY)  # the newest: after the erasure
    newest = read_manifest(store.region_client(REGION, s3_endpoint), BUCKETS.backup(REGION), "20261202T020000Z")
    assert newest.incremental == incremental
    counts, _, details = drill.drill_region(url, s3_endpoint, KEY, REGION, name)
    assert {details[f"restore_failed.{w}"]["snapshot_id"] for w in drill.LABELS} == {
        "20261201T020000Z",
        "20261202T020000Z",
    }
    assert not any(counts.values()), (counts, details)
    assert details["orphan_rows.oldest"]["foreign_keys_checked"] == FKS_DECLARED, details
    assert details["orphan_rows.newest"]["foreign_keys_checked"] == FKS_DECLARED, details
    assert q(url, "SELECT count(*) FROM pg_database WHERE datname = %s", (name,)) == [(0,)]


@pytest.mark.parametrize("shop", ["Buch.Haltung"], indirect=True)
def test_the_drill_s_checks_find_the_erased_customer_and_a_broken_link_under_these_names(
    shop: tuple[str, str, bool], services: tuple[str, str]
) -> None:
    """The other way round: a restored copy that still holds Anna, and an invoice whose key the copy lost and whose
    customer is not there, fails the drill's checks (they read these tables, they are not vacuous)."""
    from lethe.audit import drill
    from lethe.backup import links
    from lethe.backup.restore import RestoreReport, verify_links
    from lethe.db import migrate, transaction
    from lethe.policy import load_policy

    url, finance, _ = shop
    migrate(url)
    assert erase(url, "anna@odd.test")["outcomes"] == {"erased": 1}
    bad = testing.empty_database(services[0], "lethe_odd_bad")
    try:
        with closing(psycopg2.connect(bad)) as conn, conn, conn.cursor() as cur:
            cur.execute(schema_sql(finance))
            cur.execute(seed_sql(finance))  # Anna still there
            rechnungen = sql.Identifier(finance, "Rechnungen")
            cur.execute(
                "SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND confkey = ARRAY[1::int2]"
                " AND contype = 'f' AND array_length(conkey, 1) = 1",
                (rechnungen.as_string(cur),),
            )
            [(name,)] = cur.fetchall()
            cur.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(rechnungen, sql.Identifier(name)))
            cur.execute(sql.SQL("INSERT INTO {} VALUES (103, 99, NULL, NULL, 1)").format(rechnungen))
        migrate(bad)
        info: dict[str, Any] = {}
        found = drill.check_restored(url, bad, load_policy(), KEY, info)
        assert found["erased_rows"] > 0 and found["erased_found_by_value"] > 0, info
        assert (found["orphan_rows"], found["foreign_keys_missing"]) == (1, 1), info
        assert info["foreign_keys_checked"] == FKS_DECLARED

        with transaction(url) as cur:
            expected = links.foreign_keys(cur, list(load_policy().tables))
        report = RestoreReport("x", REGION)
        verify_links(bad, list(load_policy().tables), expected, report)
        assert report.foreign_keys_missing == [f"{finance}.Rechnungen(Kunden_Nr) -> Shop.Kunden(Kunden_Nr)"]
        assert report.orphan_rows == {f"{finance}.Rechnungen(Kunden_Nr) -> Shop.Kunden(Kunden_Nr)": 1}
        assert report.foreign_keys_checked == FKS_DECLARED
    finally:
        testing.drop_database(bad)


@pytest.mark.parametrize("shop", ["Finanz"], indirect=True)
def test_propagation_leaves_no_version_of_a_row_that_was_the_erased_customer_s_through_her_address(
    shop: tuple[str, str, bool], s3_endpoint: str
) -> None:
    """Her delivery (its table has no subject link; it points at her address) is hers on the primary, which deletes
    it: after propagation no version of any backup object holds it, her IP and her key in it."""
    import io

    import pyarrow.parquet as pq
    from lethe.backup.propagate import propagate_region
    from lethe.backup.snapshot import take_snapshot
    from lethe.config import BUCKETS
    from lethe.db import migrate, transaction
    from lethe.erasure import certificate
    from lethe.policy import load_policy
    from lethe.storage import s3_client

    url, _, _ = shop
    migrate(url)
    take_snapshot(url, REGION, s3_endpoint, "20261201T020000Z", load_policy(), KEY)
    assert erase(url, "anna@odd.test")["outcomes"] == {"erased": 1}
    with transaction(url) as cur:
        cur.execute("SELECT request_id::text, subject_pseudonym FROM erasure_tombstones")
        request_id, pseudonym = cur.fetchone()  # type: ignore[misc]
    request = {"request_id": request_id, "subject_pseudonym": pseudonym, "detail": {"outcome": "erased"}}
    certificate.write(s3_client("ap-south-1", s3_endpoint), certificate.build(request, "test"))
    propagate_region(url, REGION, s3_endpoint, key=KEY)

    client, bucket = s3_client(REGION, s3_endpoint), BUCKETS.backup(REGION)
    rows = []
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for v in page.get("Versions", []):
            if "/data/Shop.Lieferungen/" in v["Key"]:
                body = client.get_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])["Body"].read()
                rows += pq.read_table(io.BytesIO(body)).to_pylist()
    assert sorted(r["lieferung_id"] for r in rows) == [11, 12, 13]
    assert not [r for r in rows if r["ip"] is not None or r["Kunden_Nr"] == ANNA]


@pytest.mark.parametrize("shop", ["Finanz"], indirect=True)
def test_a_target_without_the_primary_s_keys_is_loaded_in_the_primary_s_order_and_refused_by_the_check(
    shop: tuple[str, str, bool], s3_endpoint: str, services: tuple[str, str]
) -> None:
    """The target lacks the invoices' keys (a schema copied without constraints): the restore still loads parents
    first, by the primary's keys, cuts the links to Anna as the primary did, and its check names the missing keys
    (before, Finanz.Rechnungen sorted before Shop.Kunden was loaded first and the restore failed with a KeyError)."""
    from lethe.backup.restore import restore_snapshot
    from lethe.backup.snapshot import take_snapshot
    from lethe.db import ConfigurationError, migrate
    from lethe.policy import load_policy

    url, finance, _ = shop
    migrate(url)
    take_snapshot(url, REGION, s3_endpoint, "20261201T020000Z", load_policy(), KEY)
    assert erase(url, "anna@odd.test")["outcomes"] == {"erased": 1}
    target = testing.empty_database(services[0], "lethe_odd_restore")
    lines: list[str] = []
    try:
        with closing(psycopg2.connect(target)) as conn, conn, conn.cursor() as cur:
            cur.execute(schema_sql(finance))
            cur.execute(
                "SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'f'",
                (sql.Identifier(finance, "Rechnungen").as_string(cur),),
            )
            for (name,) in cur.fetchall():
                cur.execute(
                    sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                        sql.Identifier(finance, "Rechnungen"), sql.Identifier(name)
                    )
                )
        with pytest.raises(ConfigurationError, match="foreign keys are not intact"):
            restore_snapshot(
                "20261201T020000Z", REGION, target, endpoint_url=s3_endpoint, key=KEY, primary_url=url, out=lines.append
            )
        missing = [line for line in lines if "declared in the primary, absent in the target" in line]
        assert len(missing) == 2, lines
        assert not [line for line in lines if "point at no parent row" in line], lines
        rechnungen = sql.SQL('SELECT rechnung_nr, "Kunden_Nr", adresse_kunde FROM {} ORDER BY 1').format(
            sql.Identifier(finance, "Rechnungen")
        )
        assert q(target, rechnungen) == [(100, PLACEHOLDER, None), (101, BERT, BERT), (102, CLARA, None)]
    finally:
        testing.drop_database(target)
