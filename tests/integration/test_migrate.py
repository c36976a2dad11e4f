"""Migrations are idempotent and never undo retention's partition drops."""

from __future__ import annotations

import pytest
from lethe.db import migrate, transaction
from psycopg2 import sql

pytestmark = pytest.mark.integration

PARTITIONS = (
    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
    "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'usage_events' ORDER BY 1"
)


def test_migrate_twice_changes_nothing_and_keeps_dropped_months_dropped(db_url: str) -> None:
    assert migrate(db_url) == []  # the fixture's database is migrated already
    with transaction() as cur:
        cur.execute(PARTITIONS)
        before = [r[0] for r in cur.fetchall()]
        cur.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(before[0])))  # as retention would
    migrate(db_url)
    with transaction() as cur:
        cur.execute(PARTITIONS)
        after = [r[0] for r in cur.fetchall()]
    assert after == before[1:]


def test_legal_holds_name_any_subject_by_key_value_with_no_link_into_the_platform(db_url: str) -> None:
    with transaction() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_constraint WHERE contype = 'f'"
            " AND (conrelid = 'legal_holds'::regclass OR confrelid = 'legal_holds'::regclass)"
        )
        assert cur.fetchone()[0] == 0
        cur.execute(
            "SELECT data_type FROM information_schema.columns WHERE table_name = 'legal_holds'"
            " AND column_name = 'subject_key'"
        )
        assert cur.fetchone()[0] == "text"
