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


def test_erasure_vacuums_every_table_it_changed_and_no_other(db_url: str) -> None:
    from lethe.db import transaction
    from lethe.erasure import lifecycle, request, tasks
    from lethe.policy import load_policy

    people.insert_people(db_url)
    with transaction(db_url) as cur:
        request_id, _ = request.register(cur, "email", people.ASHA["email"])
        lifecycle.claim_one(cur, request_id, "vacuum-run", [])
        lifecycle.move(cur, "plan", [request_id], run_id="vacuum-run")
        lifecycle.move(cur, "approve_unattended", [request_id], run_id="vacuum-run")
    before, started = _vacuums(db_url), _now(db_url)

    summary = tasks.erase_run("vacuum-run", db_url, KEY, load_policy())

    assert summary["outcomes"] == {"erased": 1}
    after = _vacuums(db_url)
    vacuumed = {t for t, (count, last) in after.items() if count > before.get(t, (0, None))[0] and last >= started}
    # Every table Asha had rows in (deleted, or kept and pseudonymised), partitions of the event tables included.
    for table in people.ASHA_ROWS:
        names = {t for t in after if t.startswith(f"{table}_")} or {table}  # a partitioned table: its partitions
        assert names and names <= vacuumed, f"{table} not vacuumed after the erasure"
    # A table the erasure did not change is left to autovacuum.
    assert "sharing_releases" in after and "sharing_releases" not in vacuumed
    # Her rows are gone and nothing of them is waiting for a vacuum in the tables she was in.
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM accounts WHERE email = %s", (people.ASHA["email"],))
        assert cur.fetchone() == (0,)
