"""Two expired partitions of one table under one name, in two schemas: both dropped, each counted, each resumed.

`"Platform Data"."Events"` has its expired months in `"Platform Data"."Events_old"` and `archive."Events_old"`
(PostgreSQL lets a partition live in any schema). retention_nightly's progress step was `partition:<name>`: the
two shared one row, so the ledger counted one partition dropped for two, and a run killed while dropping the
second, rerun under the same plan, found the step done and left the second detached (`archive."Events_old__expired"`,
its expired rows kept). Read with the test's own SQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import yaml
from lethe import testing
from lethe.db import DatabaseError, add_months, transaction
from lethe.policy import load_policy
from lethe.retention.execute import execute_rule
from lethe.retention.plan import Plan, build_plan
from psycopg2 import sql

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)
THIS_MONTH = NOW.date().replace(day=1)
RULE = "old_platform_events"
HOME, ARCHIVE = "Platform Data", "archive"
# (schema, name, first month): the two expired months, oldest first, and a recent range
PARTITIONS = [(HOME, "Events_old", -7), (ARCHIVE, "Events_old", -6), (HOME, "Events_Recent", -1)]

POLICY_ENTRY = {
    "description": "The platform's event stream, partitioned by month, old months archived in a schema of their own",
    "purpose": "usage",
    "legal_basis": "legitimate_interest",
    "subject": "user_id",
    "partitioned_by": "occurred_at",
    "backup": False,
    "columns": {"event_id": "identifier", "user_id": "identifier", "occurred_at": "timestamp", "kind": "usage"},
    "retention": [{"name": RULE, "keep": "P90D", "after": "occurred_at", "action": "drop_partitions"}],
    "erasure": {"action": "delete"},
}


def q(url: str, statement: str | sql.Composable, params: Any = ()) -> list[tuple[Any, ...]]:
    with closing(psycopg2.connect(url)) as conn, conn, conn.cursor() as cur:
        cur.execute("SET statement_timeout = '30s'")
        cur.execute(statement, params)
        return cur.fetchall() if cur.description else []


def build(url: str) -> None:
    events = sql.Identifier(HOME, "Events")
    with closing(psycopg2.connect(url)) as conn, conn, conn.cursor() as cur:
        cur.execute("SET statement_timeout = '30s'")
        cur.execute(sql.SQL("CREATE SCHEMA {}; CREATE SCHEMA {}").format(sql.Identifier(HOME), sql.Identifier(ARCHIVE)))
        cur.execute(
            sql.SQL(
                "CREATE TABLE {} (event_id bigint NOT NULL, user_id bigint, occurred_at timestamptz NOT NULL,"
                " kind text NOT NULL, PRIMARY KEY (event_id, occurred_at)) PARTITION BY RANGE (occurred_at)"
            ).format(events)
        )
        for n, (schema, name, month) in enumerate(PARTITIONS):
            lower = add_months(THIS_MONTH, month)
            upper = add_months(lower, 1 if month < -1 else 3)
            cur.execute(
                sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                    sql.Identifier(schema, name),
                    events,
                    sql.Literal(f"{lower} 00:00+00"),
                    sql.Literal(f"{upper} 00:00+00"),
                )
            )
            cur.execute(
                sql.SQL(
                    "INSERT INTO {} SELECT %s + g, 2, %s + g * interval '1 hour', 'view' FROM generate_series(1, 10) g"
                ).format(events),
                (100 * n, datetime(lower.year, lower.month, 2, tzinfo=UTC)),
            )


@pytest.fixture
def platform(services: tuple[str, str], tmp_path: Path) -> Iterator[tuple[str, Path]]:
    url = testing.fresh_database(services[0])
    try:
        build(url)
        data = yaml.safe_load(Path(load_policy().path or "").read_text())
        data["tables"][f"{HOME}.Events"] = POLICY_ENTRY
        path = tmp_path / "policy.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        yield url, path
    finally:
        testing.drop_database(url)


def make_plan(url: str, policy: Path) -> Plan:
    with transaction(url) as cur:
        return build_plan(cur, NOW, policy=load_policy(policy), rules=[RULE])


def assert_purged(url: str) -> None:
    """Only the recent range's rows and partition are left; no expired partition and no leftover in any schema."""
    events = sql.SQL("SELECT event_id FROM {} ORDER BY 1").format(sql.Identifier(HOME, "Events"))
    assert [k for (k,) in q(url, events)] == list(range(201, 211))
    assert q(
        url,
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p') ORDER BY 1, 2",
        ([HOME, ARCHIVE],),
    ) == [(HOME, "Events"), (HOME, "Events_Recent")]


def ledgered_partitions(url: str) -> int:
    [(n,)] = q(
        url,
        "SELECT (payload->'counts'->>'partitions_dropped')::int FROM lethe.ledger WHERE payload->>'rule' = %s",
        (RULE,),
    )
    return int(n)


def test_both_expired_partitions_of_one_name_are_dropped_and_counted(platform: tuple[str, Path]) -> None:
    url, policy = platform
    plan = make_plan(url, policy)
    assert [(p.schema, p.name) for p in plan.rule(RULE).partitions] == [(HOME, "Events_old"), (ARCHIVE, "Events_old")]

    result = execute_rule(url, plan, RULE, policy=load_policy(policy))

    assert (result.partitions_dropped, result.rows) == (2, 20)
    assert ledgered_partitions(url) == 2
    assert_purged(url)


def test_a_run_killed_dropping_the_second_is_finished_by_a_rerun_of_the_same_plan(platform: tuple[str, Path]) -> None:
    url, policy = platform
    plan = make_plan(url, policy)
    q(
        url,
        """
        CREATE FUNCTION fault_kill() RETURNS event_trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF position('"archive"' in current_query()) > 0 AND position('__expired' in current_query()) > 0 THEN
                PERFORM pg_terminate_backend(pg_backend_pid());
            END IF;
        END $$;
        CREATE EVENT TRIGGER fault_kill ON ddl_command_start WHEN TAG IN ('DROP TABLE') EXECUTE FUNCTION fault_kill();
        """,
    )
    try:
        with pytest.raises(DatabaseError) as killed:
            execute_rule(url, plan, RULE, policy=load_policy(policy))
        assert killed.value.pgcode in (None, "57P01"), killed.value
    finally:
        q(url, "DROP EVENT TRIGGER fault_kill; DROP FUNCTION fault_kill()")
    assert q(url, "SELECT to_regclass('archive.\"Events_old__expired\"') IS NOT NULL") == [(True,)]

    result = execute_rule(url, plan, RULE, policy=load_policy(policy))

    assert_purged(url)
    assert (result.partitions_dropped, result.rows) == (2, 20)
    assert ledgered_partitions(url) == 2
