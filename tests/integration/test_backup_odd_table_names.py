"""Backups of tables whose names are not plain words, checked with this test's own reads of S3 and PostgreSQL.

PostgreSQL takes any name in double quotes: `"a/b"`, `"with space"`, `"100%"`, `"a%2Fb"`, `"Übung/名前"`, a schema
`"../../.."`, a schema `"a/b0000"` holding a table `"parquet"`. Lethe names its backup objects after the tables
(`snapshots/<id>/data/<table>/...`, `digests/<table>.parquet`), so each of these names, put in a key as it is,
makes one table's objects look like another's (`a` and `a/b`; `a/b0000.parquet` is both table `a`'s object and a
folder of `a/b0000.parquet`'s), lands on another's (`a/`: SeaweedFS reads `data/a//b0000.parquet` as
`data/a/b0000.parquet`), or climbs out of the snapshot (`data/../../../`, which SeaweedFS refuses). And `100%`:
psycopg2 read the `%` of a name in a composed statement as a placeholder, so erasing anyone failed (lethe.db.Cursor).

A snapshot (two, the second incremental in one case) is taken, one person erased and the erasure propagated, and
each snapshot restored. Then, without Lethe's code: every object version in the bucket lies under its snapshot's
prefix; every current data object holds the rows of one table only and each table's rows are all there (its
objects read with pyarrow); no version of any object holds a row of the erased person; every restored table holds
exactly its own rows (plain SQL).
"""

from __future__ import annotations

import io
import json
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

KEY = b"odd-names-key"
REGION = "us-east-1"
FIRST, SECOND = "20261201T020000Z", "20261202T020000Z"
ANNA, BERT, CLARA = 1, 2, 3  # Anna is erased

# (schema, table) of every table the person's rows are kept in besides `a`, under the policy's name
TABLES: dict[str, tuple[str, str]] = {
    "a/b": ("public", "a/b"),
    "a/": ("public", "a/"),
    "with space": ("public", "with space"),
    "100%": ("public", "100%"),
    "a%2Fb": ("public", "a%2Fb"),
    "Übung/名前": ("public", "Übung/名前"),
    "../../...up": ("../../..", "up"),
    "a/b0000.parquet": ("a/b0000", "parquet"),
}


def ident(name: str) -> sql.Identifier:
    return sql.Identifier(*TABLES[name]) if name in TABLES else sql.Identifier("public", name)


def schema_sql() -> sql.Composable:
    parts: list[sql.Composable] = [
        sql.SQL("CREATE TABLE public.a (id bigint PRIMARY KEY, email text UNIQUE, tag text NOT NULL);")
    ]
    for schema in sorted({s for s, _ in TABLES.values()} - {"public"}):
        parts.append(sql.SQL("CREATE SCHEMA {};").format(sql.Identifier(schema)))
    for name in TABLES:
        parts.append(
            sql.SQL(
                "CREATE TABLE {} (id bigint PRIMARY KEY, person bigint REFERENCES public.a (id), note text,"
                " tag text NOT NULL);"
            ).format(ident(name))
        )
    return sql.SQL("\n").join(parts)


def add_rows(cur: Any, ids: list[int], start: int) -> None:
    """People `ids` in `a`, and in every other table one row of each of them and one of no one, from id `start`."""
    for person in ids:
        cur.execute(
            "INSERT INTO public.a VALUES (%s, %s, 'a')",
            (person, f"p{person}@odd.test" if person != ANNA else "anna@odd.test"),
        )
    for name in TABLES:
        rows = [(start + i, person, f"note of {person}", name) for i, person in enumerate([*ids, None])]
        for row in rows:  # no parameters: psycopg2 would read the `%` of a name as one
            values = sql.SQL(", ").join(map(sql.Literal, row))
            cur.execute(sql.SQL("INSERT INTO {} VALUES ({})").format(ident(name), values))


def quoted(name: str) -> str:
    return "'" + name.replace("'", "''") + "'"


def policy_yaml(incremental: bool) -> str:
    tables = "".join(
        f"""
  {quoted(name)}:
    description: Things of a person
    purpose: service
    legal_basis: contract
    subject: person
    backup: true
    columns: {{id: identifier, person: identifier, note: name, tag: attribute}}
    retain_indefinitely: "While the account exists"
    erasure: {{action: delete}}"""
        for name in TABLES
    )
    return f"""
version: "2026.12.0"
source: "Odd names test notice"
subject:
  table: a
  key: id
  identifiers: {{user_id: id, email: email}}
purposes:
  service: The service
consent_purposes: []
backups: {{incremental: {str(incremental).lower()}}}
tables:
  a:
    description: People
    purpose: service
    legal_basis: contract
    subject: id
    backup: true
    columns: {{id: identifier, email: email, tag: attribute}}
    retain_indefinitely: "While the account exists"
    erasure: {{action: delete}}{tables}
"""


def q(url: str, statement: str | sql.Composable, params: Any = ()) -> list[tuple[Any, ...]]:
    with closing(psycopg2.connect(url)) as conn, conn, conn.cursor() as cur:
        cur.execute("SET statement_timeout = '30s'")
        cur.execute(statement, params or None)  # no parameters, no `%` read as one
        return cur.fetchall() if cur.description else []


def rows_of(url: str) -> dict[str, set[tuple[Any, ...]]]:
    """Every table's rows, by the policy's name, as (id, person, note, tag) (the people's as (id, id, email, tag))."""
    found = {"a": set(q(url, "SELECT id, id, email, tag FROM public.a"))}
    for name in TABLES:
        found[name] = set(q(url, sql.SQL("SELECT id, person, note, tag FROM {}").format(ident(name))))
    return found


def without(rows: dict[str, set[tuple[Any, ...]]], person: int) -> dict[str, set[tuple[Any, ...]]]:
    return {name: {r for r in kept if r[1] != person} for name, kept in rows.items()}


@pytest.fixture
def primary(
    request: pytest.FixtureRequest, services: tuple[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[tuple[str, bool]]:
    incremental = request.param == "incremental"
    url = testing.empty_database(services[0], "lethe_names")
    with closing(psycopg2.connect(url)) as conn, conn, conn.cursor() as cur:
        cur.execute("SET statement_timeout = '30s'")
        cur.execute(schema_sql())
        add_rows(cur, [ANNA, BERT], 100)
    path = tmp_path / "policy.yaml"
    path.write_text(policy_yaml(incremental))
    own_schema.as_primary(monkeypatch, url, path)
    yield url, incremental
    testing.drop_database(url)


def erase(url: str, email: str) -> dict[str, Any]:
    from lethe.db import transaction
    from lethe.erasure import lifecycle, request, tasks
    from lethe.policy import load_policy

    with transaction(url) as cur:
        request_id, _ = request.register(cur, "email", email)
        lifecycle.claim_one(cur, request_id, "names-run", [])
        lifecycle.move(cur, "plan", [request_id], run_id="names-run")
        lifecycle.move(cur, "approve_unattended", [request_id], run_id="names-run")
    return tasks.erase_run("names-run", url, KEY, load_policy())


def versions(client: Any, bucket: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
        found += page.get("Versions", [])
    return found


def current_keys(client: Any, bucket: str, prefix: str) -> list[str]:
    found: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found += [o["Key"] for o in page.get("Contents", [])]
    return found


def parquet_rows(client: Any, bucket: str, key: str, version: str | None = None) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    extra = {"VersionId": version} if version else {}
    body = client.get_object(Bucket=bucket, Key=key, **extra)["Body"].read()
    return pq.read_table(io.BytesIO(body)).to_pylist()


def manifest_objects(client: Any, bucket: str, sid: str) -> dict[str, list[str]]:
    """The keys of the objects snapshot `sid`'s manifest names, per table: its JSON (gzipped when incremental, its
    entries then in index objects) fetched and parsed here."""
    import gzip

    def fetch(key: str) -> Any:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return json.loads(gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body)

    manifest = fetch(f"snapshots/{sid}/manifest.json")
    objects: dict[str, list[str]] = {
        name: [o["key"] for o in t.get("objects", [])] for name, t in manifest["tables"].items()
    }
    for ref in manifest.get("index_objects") or []:
        for name, entries in fetch(ref["key"])["tables"].items():
            objects.setdefault(name, []).extend(o["key"] for o in entries)
    return objects


def stored_rows(client: Any, bucket: str, sid: str) -> dict[str, set[tuple[Any, ...]]]:
    """What snapshot `sid` holds of each table, read from the objects its manifest names, each object checked to
    hold the rows of one table only: the one the manifest files it under."""
    objects = manifest_objects(client, bucket, sid)
    assert set(objects) == {"a", *TABLES}, sorted(objects)
    every = [k for keys in objects.values() for k in keys]
    assert len(every) == len(set(every)), f"two tables name one object: {sorted(every)}"
    found: dict[str, set[tuple[Any, ...]]] = {}
    for name, keys in objects.items():
        found[name] = set()
        for key in keys:
            rows = parquet_rows(client, bucket, key)
            tags = {r["tag"] for r in rows}
            assert tags <= {name}, f"{key}, filed under {name!r}, holds rows of {tags}"
            if name == "a":
                found[name] |= {(r["id"], r["id"], r["email"], r["tag"]) for r in rows}
            else:
                found[name] |= {(r["id"], r["person"], r["note"], r["tag"]) for r in rows}
    return found


@pytest.mark.parametrize("primary", ["full", "incremental"], indirect=True)
def test_tables_with_odd_names_are_backed_up_erased_and_restored_each_into_its_own_objects(
    primary: tuple[str, bool], s3_endpoint: str, services: tuple[str, str]
) -> None:
    from lethe.backup.manifest import read as read_manifest
    from lethe.backup.propagate import propagate_region
    from lethe.backup.restore import restore_snapshot
    from lethe.backup.snapshot import take_snapshot
    from lethe.config import BUCKETS
    from lethe.db import migrate, transaction
    from lethe.erasure import certificate
    from lethe.policy import load_policy
    from lethe.storage import s3_client

    url, incremental = primary
    migrate(url)
    policy = load_policy()
    client, bucket = s3_client(REGION, s3_endpoint), BUCKETS.backup(REGION)

    before = rows_of(url)
    take_snapshot(url, REGION, s3_endpoint, FIRST, policy, KEY)
    with closing(psycopg2.connect(url)) as conn, conn, conn.cursor() as cur:
        cur.execute("SET statement_timeout = '30s'")
        add_rows(cur, [CLARA], 200)
    later = rows_of(url)
    take_snapshot(url, REGION, s3_endpoint, SECOND, policy, KEY)
    assert read_manifest(client, bucket, SECOND).incremental == incremental

    # each table's rows in the objects its manifest names, and in no other table's, before any erasure
    assert stored_rows(client, bucket, FIRST) == before
    assert stored_rows(client, bucket, SECOND) == later

    assert erase(url, "anna@odd.test")["outcomes"] == {"erased": 1}
    assert rows_of(url) == without(later, ANNA)
    with transaction(url) as cur:
        cur.execute("SELECT request_id::text, subject_pseudonym FROM erasure_tombstones")
        request_id, pseudonym = cur.fetchone()  # type: ignore[misc]
    request = {"request_id": request_id, "subject_pseudonym": pseudonym, "detail": {"outcome": "erased"}}
    certificate.write(s3_client("ap-south-1", s3_endpoint), certificate.build(request, "test"))
    propagate_region(url, REGION, s3_endpoint, key=KEY)

    # every object version lies under its snapshot's prefix
    listed = versions(client, bucket)
    assert listed
    strays = sorted(
        v["Key"] for v in listed if not v["Key"].startswith((f"snapshots/{FIRST}/", f"snapshots/{SECOND}/"))
    )
    assert not strays, strays
    # no version of any object holds a row of Anna's (the digests of an incremental night hold no rows)
    for v in listed:
        if v["Key"].endswith(".parquet"):
            rows = parquet_rows(client, bucket, v["Key"], v["VersionId"])
            assert not [r for r in rows if r.get("person") == ANNA or r.get("email") == "anna@odd.test"], v["Key"]
    # the current data objects are exactly the ones the manifests name, each holding its own table's rows
    named = set()
    for sid, rows in ((FIRST, before), (SECOND, later)):
        assert stored_rows(client, bucket, sid) == without(rows, ANNA)
        named |= {k for keys in manifest_objects(client, bucket, sid).values() for k in keys}
    data = {k for sid in (FIRST, SECOND) for k in current_keys(client, bucket, f"snapshots/{sid}/data/")}
    assert data == named, sorted(data ^ named)

    for sid, rows in ((FIRST, before), (SECOND, later)):
        target = testing.empty_database(services[0], "lethe_names_restore")
        try:
            with closing(psycopg2.connect(target)) as conn, conn, conn.cursor() as cur:
                cur.execute("SET statement_timeout = '30s'")
                cur.execute(schema_sql())
            restore_snapshot(
                sid, REGION, target, endpoint_url=s3_endpoint, key=KEY, primary_url=url, out=lambda _: None
            )
            assert rows_of(target) == without(rows, ANNA), sid
        finally:
            testing.drop_database(target)
