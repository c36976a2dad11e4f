"""Lethe's own schema: migrate creates and upgrades only it, from empty and from the previous release's layout."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from lethe.db import LETHE_TABLES, MIGRATIONS_TABLE, migrate
from lethe.testing import drop_database, empty_database

pytestmark = pytest.mark.integration

PREVIOUS_RELEASE = Path(__file__).with_name("previous_release.sql")
# What public.schema_migrations of the previous release lists besides 001_platform.sql.
PREVIOUS_RELEASE_APPLIED = {
    "010_retention.sql",
    "020_erasure.sql",
    "030_backup.sql",
    "040_sharing.sql",
    "050_audit.sql",
    "060_ledger_truncate.sql",
}
MIGRATION_FILES = sorted(p.name for p in (Path(__file__).parents[2] / "include" / "lethe" / "migrations").glob("*.sql"))


@pytest.fixture
def empty_url(services: tuple[str, str]) -> Iterator[str]:
    url = empty_database(services[0])
    yield url
    drop_database(url)


def query(url: str, statement: str, params: tuple[object, ...] | None = None) -> list[tuple[object, ...]]:
    # search_path of the platform only: every Lethe table below is named with its schema.
    with psycopg2.connect(url, options="-c search_path=public") as conn, conn.cursor() as cur:
        cur.execute(statement, params)
        return cur.fetchall() if cur.description else []


def tables_in(url: str, schema: str) -> set[str]:
    return {
        r[0] for r in query(url, "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,))
    }


def outside_digest(url: str, schema: str = "lethe") -> str:
    """Everything outside Lethe's schema that information_schema and the catalogue describe, as one digest."""
    parts = [
        query(
            url,
            "SELECT table_schema, table_name, table_type FROM information_schema.tables"
            " WHERE table_schema NOT IN (%s, 'pg_catalog', 'information_schema') ORDER BY 1, 2",
            (schema,),
        ),
        query(
            url,
            "SELECT table_schema, table_name, column_name, ordinal_position, data_type, is_nullable, column_default"
            " FROM information_schema.columns WHERE table_schema NOT IN (%s, 'pg_catalog', 'information_schema')"
            " ORDER BY 1, 2, 4",
            (schema,),
        ),
        query(
            url,
            "SELECT constraint_schema, table_name, constraint_name, constraint_type"
            " FROM information_schema.table_constraints"
            " WHERE constraint_schema NOT IN (%s, 'pg_catalog', 'information_schema') ORDER BY 1, 2, 3",
            (schema,),
        ),
        query(
            url,
            "SELECT schemaname, tablename, indexname, indexdef FROM pg_indexes"
            " WHERE schemaname NOT IN (%s, 'pg_catalog', 'information_schema') ORDER BY 1, 2, 3",
            (schema,),
        ),
        query(
            url,
            "SELECT event_object_schema, event_object_table, trigger_name, action_statement"
            " FROM information_schema.triggers WHERE trigger_schema <> %s ORDER BY 1, 2, 3",
            (schema,),
        ),
        query(
            url,
            "SELECT routine_schema, routine_name FROM information_schema.routines"
            " WHERE routine_schema NOT IN (%s, 'pg_catalog', 'information_schema') ORDER BY 1, 2",
            (schema,),
        ),
        query(url, "SELECT nspname FROM pg_namespace WHERE nspname <> %s ORDER BY 1", (schema,)),
    ]
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def test_migrate_from_empty_creates_only_lethes_schema(empty_url: str) -> None:
    before = outside_digest(empty_url)
    assert migrate(empty_url) == MIGRATION_FILES
    assert tables_in(empty_url, "lethe") == {*LETHE_TABLES, MIGRATIONS_TABLE}
    assert tables_in(empty_url, "public") == set()
    assert outside_digest(empty_url) == before
    assert migrate(empty_url) == []  # versions recorded: nothing to do twice
    recorded = query(empty_url, "SELECT name FROM lethe.schema_migrations ORDER BY name")
    assert [r[0] for r in recorded] == MIGRATION_FILES


def test_migrate_and_check_leave_a_foreign_database_untouched(
    empty_url: str, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lethe.policy import load_policy
    from lethe.policy.check import check

    # A company's own tables that share names with re:Skill's, in other shapes.
    query(
        empty_url,
        "CREATE TABLE sessions (token text PRIMARY KEY, payload jsonb NOT NULL, expires timestamptz);"
        " CREATE TABLE comments (id uuid PRIMARY KEY, author text NOT NULL, thread_id bigint, body text);"
        " CREATE INDEX comments_thread ON comments (thread_id);"
        " CREATE SCHEMA billing; CREATE TABLE billing.invoices (no text PRIMARY KEY, total numeric);",
    )
    before = outside_digest(empty_url)
    migrate(empty_url)
    assert outside_digest(empty_url) == before
    problems = check(load_policy(), empty_url, s3_endpoint)
    assert any("tables.sessions.columns: column 'token' exists in the database" in p for p in problems)
    assert outside_digest(empty_url) == before


def test_migrate_moves_the_previous_releases_tables_into_lethes_schema(empty_url: str) -> None:
    query(empty_url, PREVIOUS_RELEASE.read_text())
    query(
        empty_url,
        "INSERT INTO accounts (user_id, name, username, email, password_hash, created_at)"
        " VALUES (7, 'A', 'a7', 'a7@example.com', 'x', now());"
        " INSERT INTO disputes VALUES (70, 7, 'refund', now(), NULL);"
        " INSERT INTO legal_holds (hold_id, user_id, dispute_id, reason, placed_at) VALUES (1, 7, 70, 'case', now());"
        " INSERT INTO erasure_tombstones (subject_pseudonym, identifier_pseudonyms) VALUES ('p1', '{p2}');"
        " INSERT INTO ledger (kind, payload, prev_hash, entry_hash) VALUES ('retention', '{}', 'g', 'h1');",
    )
    platform = sorted(tables_in(empty_url, "public") - {*LETHE_TABLES, MIGRATIONS_TABLE})
    digest_of_platform = query(
        empty_url,
        "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns"
        " WHERE table_schema = 'public' AND table_name = ANY(%s) ORDER BY 1, ordinal_position",
        (platform,),
    )

    applied = migrate(empty_url)

    assert applied == [f for f in MIGRATION_FILES if f not in PREVIOUS_RELEASE_APPLIED]
    assert tables_in(empty_url, "public") == set(platform)
    assert tables_in(empty_url, "lethe") == {*LETHE_TABLES, MIGRATIONS_TABLE}
    assert (
        query(
            empty_url,
            "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns"
            " WHERE table_schema = 'public' ORDER BY 1, ordinal_position",
        )
        == digest_of_platform
    )
    # Rows came along; the hold is keyed by the subject key's value, with no link into the platform.
    assert query(empty_url, "SELECT hold_id, subject_key, reference FROM lethe.legal_holds") == [(1, "7", "dispute 70")]
    assert query(empty_url, "SELECT subject_pseudonym FROM lethe.erasure_tombstones") == [("p1",)]
    assert query(
        empty_url,
        "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND conrelid = 'lethe.legal_holds'::regclass",
    ) == [(0,)]
    recorded = {r[0] for r in query(empty_url, "SELECT name FROM lethe.schema_migrations")}
    assert recorded == set(MIGRATION_FILES)
    # The ledger still refuses to be rewritten in its new home.
    with pytest.raises(psycopg2.Error, match="append-only"):
        query(empty_url, "UPDATE lethe.ledger SET kind = 'x'")
    assert migrate(empty_url) == []


def test_a_configured_schema_name_holds_everything(empty_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LETHE_SCHEMA", "privacy_ops")
    migrate(empty_url)
    assert tables_in(empty_url, "privacy_ops") == {*LETHE_TABLES, MIGRATIONS_TABLE}
    assert tables_in(empty_url, "lethe") == set()
    assert tables_in(empty_url, "public") == set()


def test_legal_holds_name_any_subject_by_key_value_with_no_link_into_the_platform(db_url: str) -> None:
    assert query(
        db_url,
        "SELECT count(*) FROM pg_constraint WHERE contype = 'f'"
        " AND (conrelid = 'lethe.legal_holds'::regclass OR confrelid = 'lethe.legal_holds'::regclass)",
    ) == [(0,)]
    assert query(
        db_url,
        "SELECT data_type FROM information_schema.columns WHERE table_schema = 'lethe'"
        " AND table_name = 'legal_holds' AND column_name = 'subject_key'",
    ) == [("text",)]
