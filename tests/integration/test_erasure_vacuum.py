"""An erasure vacuums the tables it changed, after its commit: the people's old row versions leave the pages.

Read back with the test's own queries of pg_stat_user_tables (the server's record of each VACUUM).
"""

from __future__ import annotations

from typing import Any

import erasure_people as people
import psycopg2
import pytest

pytestmark = pytest.mark.integration

KEY = b"vacuum-test-key"


def _vacuums(url: str) -> dict[str, tuple[int, Any]]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT relname, vacuum_count, last_vacuum FROM pg_stat_user_tables")
        return {name: (int(count), last) for name, count, last in cur.fetchall()}


def _now(url: str) -> Any:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT now()")
        return cur.fetchone()[0]  # type: ignore[index]


def _contents(url: str) -> dict[str, str]:
    """A digest of every platform relation's rows (each partition apart), to see which the erasure changed."""
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind = 'r'"
        )
        out = {}
        for (name,) in cur.fetchall():
            cur.execute(f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM \"{name}\" t")  # noqa: S608 - catalogue names
            out[name] = cur.fetchone()[0]  # type: ignore[index]
        return out


def test_erasure_vacuums_exactly_the_relations_it_changed(db_url: str) -> None:
    from lethe.db import transaction
    from lethe.erasure import lifecycle, request, tasks
    from lethe.policy import load_policy

    people.insert_people(db_url)
    with transaction(db_url) as cur:
        request_id, _ = request.register(cur, "email", people.ASHA["email"])
        lifecycle.claim_one(cur, request_id, "vacuum-run", [])
        lifecycle.move(cur, "plan", [request_id], run_id="vacuum-run")
        lifecycle.move(cur, "approve_unattended", [request_id], run_id="vacuum-run")
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:  # the partitions her rows are in
        cur.execute(
            "SELECT tableoid::regclass::text FROM usage_events WHERE user_id = %s"
            " UNION SELECT tableoid::regclass::text FROM visitor_logs WHERE user_id = %s",
            (people.ASHA["user_id"], people.ASHA["user_id"]),
        )
        her_partitions = {r[0] for r in cur.fetchall()}
    contents = _contents(db_url)
    before, started = _vacuums(db_url), _now(db_url)

    summary = tasks.erase_run("vacuum-run", db_url, KEY, load_policy())

    assert summary["outcomes"] == {"erased": 1}
    after = _vacuums(db_url)
    vacuumed = {t for t, (count, last) in after.items() if count > before.get(t, (0, None))[0] and last >= started}
    changed = {t for t, digest in _contents(db_url).items() if digest != contents.get(t)}
    lethe_tables = {t for t in vacuumed if t not in contents}  # none: Lethe's own tables are left to autovacuum
    assert not lethe_tables
    # Every relation whose rows the erasure changed is vacuumed, and no other: of the event tables
    # (partitioned by month) only the partitions that held her rows, not all of them.
    assert vacuumed == changed
    for table in people.ASHA_ROWS:
        partitions = {t for t in after if t.startswith(f"{table}_")}
        if partitions:
            mine = {p for p in partitions if p in her_partitions}
            assert mine and mine <= vacuumed, f"{table}: a partition holding her rows was not vacuumed"
            assert partitions - vacuumed, f"{table}: partitions without her rows were vacuumed too"
        else:
            assert table in vacuumed, f"{table} not vacuumed after the erasure"
    assert "sharing_releases" in after and "sharing_releases" not in vacuumed
    # Her rows are gone and nothing of them is waiting for a vacuum in the tables she was in.
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM accounts WHERE email = %s", (people.ASHA["email"],))
        assert cur.fetchone() == (0,)
