"""The restore drill's scratch database beside retention's partition drop (real PostgreSQL, real pg_dump).

The drill copies the schemas holding the policy's tables with `pg_dump --schema-only`. Retention's detached
`<name>__expired` leftovers (marked, dropped in a transaction of their own) are no table of the platform: the
copy leaves them out, so it neither carries them into the scratch database nor fails when the purge's DROP
commits between pg_dump's listing and its lock of the table.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg2
import pytest

pytestmark = pytest.mark.integration


def _query(url: str, q: str, args: Any = None) -> list[tuple[Any, ...]]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SET statement_timeout = '30s'")
        cur.execute(q, args)
        return cur.fetchall()


def _tables(url: str) -> set[str]:
    """Tables and partitioned tables of the public schema (the platform's)."""
    q = (
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')"
    )
    return {name for (name,) in _query(url, q)}


def _partition(url: str, parent: str) -> str:
    q = "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass"
    return str(sorted(_query(url, q, (parent,)))[0][0])


def _detach_like_retention(url: str, part: str) -> str:
    """Retention's first transaction for partition `part`: detached, renamed `<part>__expired`, marked."""
    from lethe.retention.catalog import expired_marker

    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SET statement_timeout = '30s'")
        cur.execute("SET lock_timeout = '5s'")
        cur.execute("SELECT inhparent::regclass::text FROM pg_inherits WHERE inhrelid = %s::regclass", (part,))
        (parent,) = cur.fetchone()  # type: ignore[misc]
        cur.execute(f'ALTER TABLE "{parent}" DETACH PARTITION "{part}"')
        cur.execute(f'ALTER TABLE "{part}" RENAME TO "{part}__expired"')
        cur.execute(f'COMMENT ON TABLE "{part}__expired" IS %s', (expired_marker(parent),))
    return f"{part}__expired"


def _marked_table(url: str, name: str, marked: bool) -> None:
    """A table `name` in public, with retention's mark when `marked` (a name pg_dump's patterns read specially)."""
    from lethe.retention.catalog import expired_marker

    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SET statement_timeout = '30s'")
        quoted = '"' + name.replace('"', '""') + '"'
        cur.execute(f"CREATE TABLE public.{quoted} (id bigint PRIMARY KEY)")
        if marked:
            cur.execute(f"COMMENT ON TABLE public.{quoted} IS %s", (expired_marker("usage_events"),))


def test_the_scratch_copy_leaves_out_retention_s_marked_leftovers_and_copies_the_rest(db_url: str) -> None:
    """Leftovers present while the schema is copied (a killed purge, or one between its two transactions) are not
    in the scratch database, whatever their names; every other table of the schema is, unmarked look-alikes
    included (the exclusions match exactly, not as wildcards)."""
    from lethe.audit import scratch

    expired = _detach_like_retention(db_url, _partition(db_url, "usage_events"))
    # pg_dump's patterns: `"` quotes, `.` separates, `*` and `?` match anything; unquoted names fold to lower case
    odd_marked = ['we"ird.x__expired', "a*b?__expired", "Upper__expired"]
    look_alikes = ["axbx__expired", "upper__expired"]  # what those three would match if passed unquoted
    for name in odd_marked:
        _marked_table(db_url, name, marked=True)
    for name in look_alikes:
        _marked_table(db_url, name, marked=False)
    primary = _tables(db_url)
    assert {expired, *odd_marked, *look_alikes} <= primary

    name = scratch.default_name(db_url)
    target = scratch.create(db_url, name)
    try:
        copied = _tables(target)
    finally:
        scratch.drop(db_url, name)

    assert copied == primary - {expired, *odd_marked}
    assert {"usage_events", "accounts", *look_alikes} <= copied


def test_a_leftover_the_purge_drops_while_pg_dump_lists_the_tables_does_not_fail_the_copy(db_url: str) -> None:
    """The purge's DROP of its leftover is under way (its lock held, not committed) while the drill copies the
    schema, and commits once pg_dump waits for a lock: pg_dump had listed the leftover, then found it gone when
    it locked it, and the drill failed. Left out, the copy succeeds and holds the rest of the schema."""
    from lethe.audit import scratch

    expired = _detach_like_retention(db_url, _partition(db_url, "usage_events"))
    primary = _tables(db_url)
    name = scratch.default_name(db_url)
    outcome: dict[str, Any] = {}

    def copy() -> None:
        try:
            outcome["tables"] = _tables(scratch.create(db_url, name))
        except Exception as exc:  # reported by the assertion below
            outcome["error"] = exc

    purge = psycopg2.connect(db_url)
    try:
        with purge.cursor() as cur:
            cur.execute("SET statement_timeout = '30s'")
            cur.execute(f'DROP TABLE "{expired}"')  # retention's second transaction, not committed yet
        worker = threading.Thread(target=copy, daemon=True)
        worker.start()
        deadline = time.monotonic() + 60
        while worker.is_alive() and time.monotonic() < deadline:
            (waiting,) = _query(
                db_url,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name = 'pg_dump' AND wait_event_type = 'Lock'",
            )[0]
            if waiting:
                outcome["pg_dump_waited"] = True
                break
            time.sleep(0.05)
        purge.commit()  # the DROP commits while pg_dump waits for a lock (or once the copy is done)
        worker.join(timeout=120)
        assert not worker.is_alive(), "the schema copy did not finish"
    finally:
        purge.close()
        scratch.drop(db_url, name)

    assert "error" not in outcome, outcome
    assert outcome["tables"] == primary - {expired}


def test_a_schema_whose_name_pg_dump_reads_as_a_pattern_is_copied_and_no_other(db_url: str) -> None:
    """The schemas are passed to pg_dump as patterns: unquoted, `Re.Skill` named no schema (folded to lower case,
    `.` a separator) and `re*` every schema starting so."""
    from lethe.audit import scratch

    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SET statement_timeout = '30s'")
        for schema, table in (("Re.Skill", "courses"), ("re*", "lessons"), ("rex", "other")):
            cur.execute(f'CREATE SCHEMA "{schema}"')
            cur.execute(f'CREATE TABLE "{schema}"."{table}" (id bigint PRIMARY KEY)')

    script = scratch.schema_script(db_url, ["Re.Skill", "re*"])

    assert 'CREATE TABLE "Re.Skill".courses' in script
    assert 'CREATE TABLE "re*".lessons' in script
    assert "rex.other" not in script and "CREATE SCHEMA rex" not in script
