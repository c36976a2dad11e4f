"""A backed-up table whose foreign keys point at tables the snapshot does not hold, restored (real PostgreSQL, S3).

The works keep customers and contracts, both backed up; a contract points at a site (`"Werk".standorte`, in the
policy with `backup: false`, composite key) and at a tariff (`"Werk".tarife`, not in the policy at all). Neither
parent is in the snapshot: a restore can only load the contracts into a database that already holds the rows they
point at (the live database after an accident, or a copy the engineer loaded them into).

Before, a restore into a database without those rows failed with psycopg2's bare ForeignKeyViolation, its DETAIL
quoting the key's values, and nothing naming what to do. Now it stops, before anything is committed, with an error
naming the table, its link's columns, the table it needs and what to do; the same restore rerun once the parent
rows are there loads everything; and restoring into the live database, whose parent rows are there, works.
The rows are read back here with plain SQL.
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

pytestmark = pytest.mark.integration

KEY = b"outside-parent-key"
REGION = "us-east-1"
SID = "20261201T020000Z"

SCHEMA = """
CREATE SCHEMA "Werk";
CREATE TABLE "Werk"."Kunden" (kunde_id bigint PRIMARY KEY, email text UNIQUE, name text);
CREATE TABLE "Werk".standorte (land text NOT NULL, nr int NOT NULL, stadt text NOT NULL, PRIMARY KEY (land, nr));
CREATE TABLE "Werk".tarife (tarif text PRIMARY KEY, preis int NOT NULL);
CREATE TABLE "Werk"."Vertraege" (
    vertrag_id bigint PRIMARY KEY,
    kunde_id bigint NOT NULL REFERENCES "Werk"."Kunden",
    land text,
    standort int,
    tarif text REFERENCES "Werk".tarife,
    FOREIGN KEY (land, standort) REFERENCES "Werk".standorte (land, nr)
);
"""

STANDORTE = [("AT", 2, "Wien"), ("DE", 1, "Berlin")]
TARIFE = [("basis", 10), ("plus", 20)]
KUNDEN = [(1, "ada@werk.test", "Ada Alt"), (2, "bo@werk.test", "Bo Berg"), (3, "cy@werk.test", "Cy Cis")]
VERTRAEGE = [(100, 1, "DE", 1, "basis"), (101, 2, "AT", 2, "plus"), (102, 3, None, None, None)]

POLICY = """
version: "2026.12.0"
source: "Outside parent test notice"
subject:
  table: Werk.Kunden
  key: kunde_id
  identifiers: {user_id: kunde_id, email: email}
purposes:
  service: Providing the service
consent_purposes: []
tables:
  Werk.Kunden:
    description: Customers
    purpose: service
    legal_basis: contract
    subject: kunde_id
    backup: true
    columns: {kunde_id: identifier, email: email, name: name}
    retain_indefinitely: "While the account exists"
    erasure: {action: delete}
  Werk.Vertraege:
    description: Contracts, each at a site and on a tariff
    purpose: service
    legal_basis: contract
    subject: kunde_id
    backup: true
    columns: {vertrag_id: identifier, kunde_id: identifier, land: attribute, standort: attribute, tarif: attribute}
    retain_indefinitely: "While the contract runs"
    erasure: {action: delete}
  Werk.standorte:
    description: Sites (reference data, rebuilt from the site register, not backed up)
    purpose: service
    legal_basis: contract
    subject: null
    backup: false
    columns: {land: attribute, nr: attribute, stadt: attribute}
    retain_indefinitely: "Reference data"
"""

CONTRACTS_LINK = "Werk.Vertraege(land, standort) -> Werk.standorte(land, nr)"
TARIFF_LINK = "Werk.Vertraege(tarif) -> Werk.tarife(tarif)"


def q(url: str, statement: str, params: Any = ()) -> list[tuple[Any, ...]]:
    with closing(psycopg2.connect(url)) as conn, conn, conn.cursor() as cur:
        cur.execute("SET statement_timeout = '30s'")
        cur.execute(statement, params)
        return cur.fetchall() if cur.description else []


def seed(url: str, *, parents: bool = True, children: bool = True) -> None:
    with closing(psycopg2.connect(url)) as conn, conn, conn.cursor() as cur:
        if parents:
            cur.executemany('INSERT INTO "Werk".standorte VALUES (%s, %s, %s)', STANDORTE)
            cur.executemany('INSERT INTO "Werk".tarife VALUES (%s, %s)', TARIFE)
        if children:
            cur.executemany('INSERT INTO "Werk"."Kunden" VALUES (%s, %s, %s)', KUNDEN)
            cur.executemany('INSERT INTO "Werk"."Vertraege" VALUES (%s, %s, %s, %s, %s)', VERTRAEGE)


def restored(url: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    return (
        q(url, 'SELECT kunde_id, email, name FROM "Werk"."Kunden" ORDER BY 1'),
        q(url, 'SELECT vertrag_id, kunde_id, land, standort, tarif FROM "Werk"."Vertraege" ORDER BY 1'),
    )


@pytest.fixture
def works(services: tuple[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    url = own_schema.database(services[0], monkeypatch, tmp_path, "lethe_outside", SCHEMA, POLICY)
    seed(url)
    yield url
    testing.drop_database(url)


def snapshot(url: str, s3_endpoint: str) -> None:
    from lethe.backup.snapshot import take_snapshot
    from lethe.db import migrate
    from lethe.policy import load_policy

    migrate(url)
    take_snapshot(url, REGION, s3_endpoint, SID, load_policy(), KEY)


def restore(target: str, s3_endpoint: str, primary: str, lines: list[str]) -> Any:
    from lethe.backup.restore import restore_snapshot

    return restore_snapshot(
        SID, REGION, target, endpoint_url=s3_endpoint, key=KEY, primary_url=primary, out=lines.append
    )


def test_a_restore_missing_the_rows_of_tables_outside_the_snapshot_names_them_and_writes_nothing(
    works: str, s3_endpoint: str, services: tuple[str, str]
) -> None:
    """A fresh database with the schema and none of the parents' rows: the restore stops with an error naming both
    links of the contracts, the tables they need and what to do, quoting no value, and leaves no row behind. With
    the tariffs loaded and one site of two, it names the sites' link only (one row). With every parent row there,
    the same restore, rerun, loads every row."""
    from lethe.db import ConfigurationError

    snapshot(works, s3_endpoint)
    target = testing.empty_database(services[0], "lethe_outside_restore")
    try:
        with closing(psycopg2.connect(target)) as conn, conn, conn.cursor() as cur:
            cur.execute(SCHEMA)

        lines: list[str] = []
        with pytest.raises(ConfigurationError) as caught:
            restore(target, s3_endpoint, works, lines)
        message = str(caught.value)
        assert CONTRACTS_LINK in message and TARIFF_LINK in message, message
        assert "2 rows" in message and "not in the snapshot" in message, message
        assert "load" in message and "Nothing was restored." in message, message
        for value in ("Wien", "Berlin", "basis", "plus", "'DE'", "'AT'"):
            assert value not in message, (value, message)
        assert restored(target) == ([], [])  # the customers (loaded first) are not left behind

        with closing(psycopg2.connect(target)) as conn, conn, conn.cursor() as cur:
            cur.executemany('INSERT INTO "Werk".tarife VALUES (%s, %s)', TARIFE)
            cur.execute('INSERT INTO "Werk".standorte VALUES (%s, %s, %s)', STANDORTE[1])  # DE 1 only
        with pytest.raises(ConfigurationError) as caught:
            restore(target, s3_endpoint, works, lines)
        message = str(caught.value)
        assert CONTRACTS_LINK in message and "1 row " in message, message
        assert TARIFF_LINK not in message, message
        assert restored(target) == ([], [])

        with closing(psycopg2.connect(target)) as conn, conn, conn.cursor() as cur:
            cur.execute('INSERT INTO "Werk".standorte VALUES (%s, %s, %s)', STANDORTE[0])
        report = restore(target, s3_endpoint, works, lines)
        assert report.verified
        assert restored(target) == (KUNDEN, VERTRAEGE)
        assert restored(target) == restored(works)
    finally:
        testing.drop_database(target)


def test_restoring_into_the_live_database_whose_parent_rows_are_there_works(works: str, s3_endpoint: str) -> None:
    """The usual case: the backed-up tables were emptied by accident, the reference tables were not; the snapshot
    goes back into the live database and every contract finds its site and tariff."""
    snapshot(works, s3_endpoint)
    with closing(psycopg2.connect(works)) as conn, conn, conn.cursor() as cur:
        cur.execute('DELETE FROM "Werk"."Vertraege"')
        cur.execute('DELETE FROM "Werk"."Kunden"')
    assert restored(works) == ([], [])

    report = restore(works, s3_endpoint, works, [])
    assert report.verified
    assert report.rows_loaded == {"Werk.Kunden": 3, "Werk.Vertraege": 3}
    assert restored(works) == (KUNDEN, VERTRAEGE)
    assert q(works, 'SELECT land, nr, stadt FROM "Werk".standorte ORDER BY 1') == STANDORTE


def erase(url: str, email: str) -> dict[str, Any]:
    from lethe.db import transaction
    from lethe.erasure import lifecycle, request, tasks
    from lethe.policy import load_policy

    with transaction(url) as cur:
        request_id, _ = request.register(cur, "email", email)
        lifecycle.claim_one(cur, request_id, "outside-run", [])
        lifecycle.move(cur, "plan", [request_id], run_id="outside-run")
        lifecycle.move(cur, "approve_unattended", [request_id], run_id="outside-run")
    return tasks.erase_run("outside-run", url, KEY, load_policy())


def test_the_rows_of_a_person_erased_since_the_snapshot_need_no_parent_in_the_target(
    works: str, s3_endpoint: str, services: tuple[str, str]
) -> None:
    """Bo's contract is the only one at the Vienna site; Bo is erased after the snapshot. A target without that site
    takes the restore: the check asks only for the parents of the rows that are loaded, after the erasure."""
    snapshot(works, s3_endpoint)
    assert erase(works, "bo@werk.test")["outcomes"] == {"erased": 1}
    target = testing.empty_database(services[0], "lethe_outside_restore")
    try:
        with closing(psycopg2.connect(target)) as conn, conn, conn.cursor() as cur:
            cur.execute(SCHEMA)
            cur.executemany('INSERT INTO "Werk".tarife VALUES (%s, %s)', TARIFE)
            cur.execute('INSERT INTO "Werk".standorte VALUES (%s, %s, %s)', STANDORTE[1])  # DE 1, not AT 2
        report = restore(target, s3_endpoint, works, [])
        assert report.verified and report.tombstones_replayed == 1
        assert restored(target) == ([KUNDEN[0], KUNDEN[2]], [VERTRAEGE[0], VERTRAEGE[2]])
        assert restored(target) == restored(works)
    finally:
        testing.drop_database(target)
