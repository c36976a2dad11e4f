"""Retention under faults: a purge killed at each DDL step of a partition drop, and two purges of one table.

The end state is read with the test's own SQL: which rows are left, which tables exist.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from lethe import testing
from lethe.db import DatabaseError, add_months, partition_name, transaction
from lethe.policy import load_policy
from lethe.retention.execute import execute_rule
from lethe.retention.plan import Plan, build_plan

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)
OLD_MONTH = add_months(date(NOW.year, NOW.month, 1), -6)  # wholly past raw_usage_events' 90 days
OLD_PARTITION = partition_name("usage_events", OLD_MONTH)
RULE = "raw_usage_events"
HELD_USER = 1


def fill(url: str, boundary_rows: int = 0) -> None:
    """Three people, one under legal hold; usage in the old month, recent usage, and optionally many
    rows just past the cutoff in the month that is not wholly expired (deleted in batches)."""
    old = datetime(OLD_MONTH.year, OLD_MONTH.month, 2, tzinfo=UTC)
    with transaction(url) as cur:
        for uid in (1, 2, 3):
            cur.execute(
                "INSERT INTO accounts (user_id, name, username, email, password_hash, created_at)"
                " VALUES (%s, 'P', %s, %s, 'x', %s)",
                (uid, f"u{uid}", f"u{uid}@example.com", NOW - timedelta(days=900)),
            )
        cur.execute(
            "INSERT INTO legal_holds VALUES (1, %s, NULL, 'case', %s, NULL)", (HELD_USER, NOW - timedelta(days=3))
        )
        cur.execute(
            "INSERT INTO usage_events SELECT g, 1 + g %% 3, %s + g * interval '1 hour', 'quiz', 10, 0"
            " FROM generate_series(1, 60) g",
            (old,),
        )
        cur.execute(
            "INSERT INTO usage_events SELECT 1000 + g, 1 + g %% 3, %s - g * interval '1 hour', 'quiz', 10, 0"
            " FROM generate_series(1, 30) g",
            (NOW,),
        )
        cur.execute(
            "INSERT INTO usage_events SELECT 100000 + g, 2, %s - g * interval '1 second', 'quiz', 10, 0"
            " FROM generate_series(1, %s) g",
            (NOW - timedelta(days=90, minutes=1), boundary_rows),
        )
        cur.execute("DELETE FROM aggregation_watermarks")  # no clamp: raw usage counts as aggregated


def make_plan(url: str, rules: list[str]) -> Plan:
    with transaction(url) as cur:
        return build_plan(cur, NOW, policy=load_policy(), rules=rules)


def events(url: str) -> set[int]:
    with transaction(url) as cur:
        cur.execute("SELECT event_id FROM usage_events")
        return {k for (k,) in cur.fetchall()}


def leftovers(url: str) -> list[str]:
    with transaction(url) as cur:
        cur.execute(
            "SELECT relname FROM pg_class WHERE relname LIKE 'usage\\_events%%\\_\\_expired'"
            " OR relname LIKE 'usage\\_events%%\\_\\_held' ORDER BY 1"
        )
        return [r for (r,) in cur.fetchall()]


def kill_at_ddl_step(url: str, step: int) -> None:
    """An event trigger that terminates the session running the `step`-th DDL command on the old partition."""
    with transaction(url) as cur:
        cur.execute("CREATE SEQUENCE fault_ddl_steps")
        cur.execute(
            f"""
            CREATE FUNCTION fault_kill() RETURNS event_trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF position('{OLD_PARTITION}' in current_query()) > 0 AND nextval('fault_ddl_steps') = {step} THEN
                    PERFORM pg_terminate_backend(pg_backend_pid());
                END IF;
            END $$
            """
        )
        cur.execute("CREATE EVENT TRIGGER fault_kill ON ddl_command_start EXECUTE FUNCTION fault_kill()")


def heal(url: str) -> None:
    with transaction(url) as cur:
        cur.execute("DROP EVENT TRIGGER fault_kill")
        cur.execute("DROP FUNCTION fault_kill()")
        cur.execute("DROP SEQUENCE fault_ddl_steps")


@pytest.mark.parametrize("rerun", ["same plan", "next plan"])
def test_a_purge_killed_at_each_ddl_step_of_a_partition_drop_is_finished_by_the_rerun(
    services: tuple[str, str], rerun: str
) -> None:
    kills, leftover_seen = 0, False
    for step in range(1, 20):
        url = testing.fresh_database(services[0])
        try:
            fill(url)
            before = events(url)
            with transaction(url) as cur:
                cur.execute("SELECT event_id FROM usage_events WHERE event_id <= 60 AND user_id = %s", (HELD_USER,))
                held_old = {k for (k,) in cur.fetchall()}
            plan = make_plan(url, [RULE])
            kill_at_ddl_step(url, step)
            try:
                execute_rule(url, plan, RULE)
            except DatabaseError as exc:  # the session was terminated: no error code, or admin_shutdown
                assert exc.pgcode in (None, "57P01"), exc
                kills += 1
            else:
                break  # every DDL step of the drop has had its kill
            finally:
                heal(url)
            leftover_seen |= any(name.endswith("__expired") for name in leftovers(url))

            execute_rule(url, plan if rerun == "same plan" else make_plan(url, [RULE]), RULE)

            assert leftovers(url) == [], f"killed at DDL step {step}"
            assert events(url) == {k for k in before if k > 60} | held_old, f"killed at DDL step {step}"
            with transaction(url) as cur:
                cur.execute(
                    "SELECT count(*) FROM pg_inherits WHERE inhparent = 'usage_events'::regclass"
                    " AND inhrelid = to_regclass(%s)",
                    (OLD_PARTITION,),
                )
                assert cur.fetchone()[0] == 1, "the held rows' partition is attached for its month"
        finally:
            testing.drop_database(url)
    # CREATE (held rows' table), DETACH, RENAME, COMMENT, RENAME, ATTACH, DROP
    assert kills >= 7
    assert leftover_seen, "no kill left the detached partition behind: the leftover path went untested"


def test_a_second_purge_of_the_same_table_waits_for_the_first_and_says_so(db_url: str, tmp_path: Path) -> None:
    fill(db_url, boundary_rows=20_000)
    plan = make_plan(db_url, [RULE, "usage_after_analytics_objection"])
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan.to_dict()))
    code = (
        "import json, sys; from lethe.retention.execute import execute_rule; from lethe.retention.plan import Plan;"
        f"execute_rule(sys.argv[1], Plan.from_dict(json.load(open(sys.argv[2]))), {RULE!r}, batch_size=10)"
    )
    first = subprocess.Popen([sys.executable, "-c", code, db_url, str(plan_file)], env=os.environ.copy())
    try:
        deadline = time.monotonic() + 120
        batches = 0
        while batches < 3 and time.monotonic() < deadline and first.poll() is None:
            with transaction(db_url) as cur:
                cur.execute(
                    "SELECT coalesce(sum(batches), 0) FROM retention_progress WHERE plan_id = %s", (plan.plan_id,)
                )
                batches = cur.fetchone()[0]
            time.sleep(0.02)
        first.send_signal(signal.SIGSTOP)  # paused mid-purge, its session still open
        assert first.poll() is None, "the first purge finished before the second could meet it"
        with pytest.raises(RuntimeError, match="another purge of table usage_events is running"):
            execute_rule(db_url, plan, "usage_after_analytics_objection")
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=300) == 0
    assert (
        execute_rule(db_url, plan, "usage_after_analytics_objection").rows
        == plan.rule("usage_after_analytics_objection").rows
    )
    with transaction(db_url) as cur:
        cur.execute("SELECT count(*) FROM usage_events WHERE event_id > 100000")
        assert cur.fetchone()[0] == 0


class RowLocker(threading.Thread):
    """Another transaction (an erasure, say) holding a row of the old partition until told to commit."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.locked, self.release = url, threading.Event(), threading.Event()

    def run(self) -> None:
        with transaction(self.url) as cur:
            cur.execute("SELECT 1 FROM usage_events WHERE event_id = 2 FOR UPDATE")  # old month, not held
            self.locked.set()
            self.release.wait(timeout=600)


def test_a_purge_waits_for_another_transactions_locks_and_finishes_without_failing(db_url: str) -> None:
    fill(db_url)
    plan = make_plan(db_url, [RULE])
    locker = RowLocker(db_url)
    locker.start()
    assert locker.locked.wait(timeout=30)
    threading.Timer(12.0, locker.release.set).start()  # more than two lock timeouts of 5 s
    result = execute_rule(db_url, plan, RULE)
    locker.join(timeout=30)
    assert result.rows == plan.rule(RULE).rows and result.partitions_dropped >= 1
    old_month = {k for k in events(db_url) if k <= 60}
    assert old_month == {k for k in range(1, 61) if 1 + k % 3 == HELD_USER}, "only the held person's rows are left"
    assert leftovers(db_url) == []


def test_a_purge_that_cannot_get_its_locks_in_time_fails_naming_the_table_and_resumes_later(db_url: str) -> None:
    fill(db_url)
    before = events(db_url)
    plan = make_plan(db_url, [RULE])
    locker = RowLocker(db_url)
    locker.start()
    assert locker.locked.wait(timeout=30)
    try:
        with pytest.raises(RuntimeError, match=f"retention rule {RULE} on table usage_events: other transactions"):
            execute_rule(db_url, plan, RULE, lock_patience_s=8)
        assert events(db_url) == before, "nothing changed while the lock was held"
    finally:
        locker.release.set()
        locker.join(timeout=30)
    assert execute_rule(db_url, plan, RULE).rows == plan.rule(RULE).rows
    assert not any(k <= 60 and 1 + k % 3 != HELD_USER for k in events(db_url))


class AccountsReader(threading.Thread):
    """A long reader of accounts and then of the partition being dropped (as the erasure's residue scan reads
    every table in one transaction): it holds accounts while the purge's DROP of `<part>__expired` waits for
    accounts (the dropped foreign key's table), then asks for the partition the DROP holds: a deadlock."""

    def __init__(self, url: str, expired: str) -> None:
        super().__init__(daemon=True)
        self.url, self.expired = url, expired
        self.drop_waited = False
        self.outcome = ""

    def run(self) -> None:
        import psycopg2
        from psycopg2 import sql

        conn = psycopg2.connect(self.url)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM accounts")
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and not self.drop_waited:
                    with psycopg2.connect(self.url) as probe, probe.cursor() as q:
                        q.execute("SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'accounts'::regclass")
                        self.drop_waited = q.fetchone()[0] > 0  # type: ignore[index]
                    time.sleep(0.05)
                try:
                    cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(self.expired)))
                    self.outcome = "read"
                except psycopg2.errors.DeadlockDetected:
                    self.outcome = "deadlock victim"
        finally:
            conn.rollback()
            conn.close()


def test_a_purge_chosen_as_a_deadlocks_victim_resumes_and_drops_the_partition(db_url: str) -> None:
    """CI (e2e, a retention run beside an erasure): the DROP of a detached partition deadlocked with the residue
    scan's reads, and the purge failed, leaving `<name>__expired` behind for the erasure to trip on. A deadlock's
    victim is rolled back like a lock wait given up: the rule resumes from its checkpoint and finishes."""
    fill(db_url)
    plan = make_plan(db_url, [RULE])
    (part,) = [p.name for p in plan.rule(RULE).partitions][:1]
    reader = AccountsReader(db_url, f"{part}__expired")
    reader.start()
    result = execute_rule(db_url, plan, RULE)
    reader.join(timeout=60)
    assert reader.drop_waited, "the DROP never waited for accounts: the deadlock was not set up"
    assert reader.outcome == "read", "the purge, which waited first, should have been the victim"
    assert result.partitions_dropped >= 1 and leftovers(db_url) == []
