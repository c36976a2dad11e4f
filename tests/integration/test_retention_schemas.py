"""drop_partitions on a company's partitioned table outside the search path, under names that need quoting.

The policy names `"Platform Data"."Events"` (or `analytics."Events"`): a schema the connection's search path
does not hold, a mixed-case table, mixed-case partitions. `public` holds tables of the same names, which the
purge must not touch. The end state is read with the test's own SQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import erasure_people as people
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
THIS_MONTH = date(NOW.year, NOW.month, 1)
OLD_MONTH = add_months(THIS_MONTH, -6)  # wholly past the rule's 90 days
OLD = f"Events_{OLD_MONTH:%Y_%m}"
RECENT = "Events_Recent"
RULE = "old_platform_events"
HELD_USER = 1
SCHEMAS = ["Platform Data", "analytics"]

POLICY_ENTRY = {
    "description": "The platform's event stream, partitioned by month, kept in a schema of its own",
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


def build(url: str, schema: str, same_names: bool = True, people_there: bool = False) -> None:
    """The table with an expired month (rows of a held person and of two others) and a recent range; `public`
    holds plain tables named like the table, its expired partition and the names the purge uses on the way
    (unless not `same_names`). With `people_there` (tests/erasure_people.py inserted them), its rows reference
    their accounts."""
    s = sql.Identifier(schema)
    columns = sql.SQL(
        "(event_id bigint NOT NULL, user_id bigint{}, occurred_at timestamptz NOT NULL, kind text NOT NULL,"
        " PRIMARY KEY (event_id, occurred_at))"
    ).format(sql.SQL(" REFERENCES public.accounts (user_id)" if people_there else ""))
    with closing(psycopg2.connect(url)) as conn, conn, conn.cursor() as cur:
        for uid in (1, 2, 3) if not people_there else ():
            cur.execute(
                "INSERT INTO accounts (user_id, name, username, email, password_hash, created_at)"
                " VALUES (%s, 'P', %s, %s, 'x', %s)",
                (uid, f"u{uid}", f"u{uid}@example.com", NOW - timedelta(days=900)),
            )
        if not people_there:
            cur.execute(
                "INSERT INTO legal_holds (hold_id, subject_key, reason, placed_at) VALUES (1, %s, 'case', %s)",
                (str(HELD_USER), NOW - timedelta(days=3)),
            )
        cur.execute(sql.SQL("CREATE SCHEMA {}").format(s))
        cur.execute(
            sql.SQL("CREATE TABLE {} {} PARTITION BY RANGE (occurred_at)").format(
                sql.Identifier(schema, "Events"), columns
            )
        )
        for name, lower, upper in [
            (OLD, OLD_MONTH, add_months(OLD_MONTH, 1)),
            (RECENT, add_months(THIS_MONTH, -1), add_months(THIS_MONTH, 2)),
        ]:
            cur.execute(
                sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                    sql.Identifier(schema, name),
                    sql.Identifier(schema, "Events"),
                    sql.Literal(f"{lower} 00:00+00"),
                    sql.Literal(f"{upper} 00:00+00"),
                )
            )
        old = datetime(OLD_MONTH.year, OLD_MONTH.month, 2, tzinfo=UTC)
        cur.execute(
            sql.SQL(
                "INSERT INTO {} SELECT g, 1 + g %% 3, %s + g * interval '1 hour', 'view' FROM generate_series(1, 30) g"
            ).format(sql.Identifier(schema, "Events")),
            (old,),
        )
        cur.execute(
            sql.SQL(
                "INSERT INTO {} SELECT 1000 + g, 1 + g %% 3, %s - g * interval '1 hour', 'view'"
                " FROM generate_series(1, 12) g"
            ).format(sql.Identifier(schema, "Events")),
            (NOW,),
        )
        for name in ["Events", OLD, f"{OLD}__expired", f"{OLD}__held", f"{OLD}__expired".lower()] * same_names:
            cur.execute(sql.SQL("CREATE TABLE {} {}").format(sql.Identifier("public", name), columns))
            cur.execute(
                sql.SQL("INSERT INTO {} SELECT g, 2, %s, 'decoy' FROM generate_series(1, 5) g").format(
                    sql.Identifier("public", name)
                ),
                (old,),
            )


def decoys(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """The rows of `public`'s same-named tables (absent: None)."""
    out = {}
    for (name,) in q(url, "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'"):
        if name.lower().startswith("events"):
            out[name] = q(url, sql.SQL("SELECT * FROM {} ORDER BY 1").format(sql.Identifier("public", name)))
    return out


def leftovers(url: str, schema: str) -> list[str]:
    """Tables of `schema` with the names the purge gives an expired partition and held rows on the way."""
    return [
        name
        for (name,) in q(
            url,
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s"
            " AND (c.relname LIKE '%%\\_\\_expired' OR c.relname LIKE '%%\\_\\_held') ORDER BY 1",
            (schema,),
        )
    ]


def events(url: str, schema: str) -> set[int]:
    return {k for (k,) in q(url, sql.SQL("SELECT event_id FROM {}").format(sql.Identifier(schema, "Events")))}


def policy_file(tmp_path: Path, schema: str) -> Path:
    """The shipped policy with the table added under the name `schema.Events`."""
    data = yaml.safe_load(Path(load_policy().path or "").read_text())
    data["tables"][f"{schema}.Events"] = POLICY_ENTRY
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def make_plan(url: str, policy: Path) -> Plan:
    with transaction(url) as cur:
        return build_plan(cur, NOW, policy=load_policy(policy), rules=[RULE])


@pytest.fixture
def same_names() -> bool:
    return True


@pytest.fixture(params=SCHEMAS)
def platform(
    request: pytest.FixtureRequest, services: tuple[str, str], tmp_path: Path, same_names: bool
) -> Iterator[tuple[str, str, Path]]:
    url = testing.fresh_database(services[0])
    try:
        build(url, request.param, same_names)
        yield url, request.param, policy_file(tmp_path, request.param)
    finally:
        testing.drop_database(url)


def assert_purged(url: str, schema: str, before: set[int], held_old: set[int], public: dict[str, Any]) -> None:
    assert decoys(url) == public, "tables of the same names in public were touched"
    # The expired month's rows of people not held are gone; the held person's stay, in the table's own partition.
    assert events(url, schema) == {k for k in before if k > 1000} | held_old
    partitions = q(
        url,
        "SELECT c.relnamespace::regnamespace::text, c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = format('%%I.%%I', %s::text, 'Events')::regclass ORDER BY 2",
        (schema,),
    )
    assert [name for _, name in partitions] == [OLD, RECENT]
    assert q(url, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, OLD)))[0][0] == len(held_old)
    assert leftovers(url, schema) == []


@pytest.mark.parametrize("same_names", [True, False], ids=["same names in public", "alone"])
def test_expired_partitions_of_a_mixed_case_table_outside_the_search_path_go_and_held_rows_stay(
    platform: tuple[str, str, Path],
) -> None:
    url, schema, policy = platform
    before = events(url, schema)
    held_old = {k for k in before if k <= 30 and 1 + k % 3 == HELD_USER}
    public = decoys(url)
    plan = make_plan(url, policy)
    assert [p.name for p in plan.rule(RULE).partitions] == [OLD]

    result = execute_rule(url, plan, RULE, policy=load_policy(policy))

    assert result.partitions_dropped == 1
    assert_purged(url, schema, before, held_old, public)


def kill_at_the_drop(url: str) -> None:
    """An event trigger that terminates the session dropping the detached expired partition (its own transaction,
    after the one that detached it): the purge dies between the detach and the drop."""
    q(
        url,
        """
        CREATE FUNCTION fault_kill() RETURNS event_trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF position('__expired' in current_query()) > 0 THEN
                PERFORM pg_terminate_backend(pg_backend_pid());
            END IF;
        END $$;
        CREATE EVENT TRIGGER fault_kill ON ddl_command_start WHEN TAG IN ('DROP TABLE') EXECUTE FUNCTION fault_kill();
        """,
    )


def heal(url: str) -> None:
    q(url, "DROP EVENT TRIGGER fault_kill; DROP FUNCTION fault_kill()")


@pytest.mark.parametrize("rerun", ["same plan", "next plan"])
def test_a_purge_killed_between_the_detach_and_the_drop_is_finished_by_the_rerun(
    platform: tuple[str, str, Path], rerun: str
) -> None:
    url, schema, policy = platform
    before = events(url, schema)
    held_old = {k for k in before if k <= 30 and 1 + k % 3 == HELD_USER}
    public = decoys(url)
    plan = make_plan(url, policy)
    kill_at_the_drop(url)
    try:
        with pytest.raises(DatabaseError) as killed:
            execute_rule(url, plan, RULE, policy=load_policy(policy))
        assert killed.value.pgcode in (None, "57P01"), killed.value  # terminated: no error code, or admin_shutdown
    finally:
        heal(url)
    # Detached and marked, not dropped: the held rows are back in the table, the rest waits in the leftover.
    assert decoys(url) == public, "tables of the same names in public were touched"
    assert leftovers(url, schema) == [f"{OLD}__expired"]
    assert events(url, schema) == {k for k in before if k > 1000} | held_old

    execute_rule(url, plan if rerun == "same plan" else make_plan(url, policy), RULE, policy=load_policy(policy))

    assert_purged(url, schema, before, held_old, public)


@pytest.mark.parametrize("schema", SCHEMAS)
def test_an_erasure_beside_a_killed_purges_leftover_outside_the_search_path_deletes_the_persons_rows_there(
    services: tuple[str, str], tmp_path: Path, schema: str
) -> None:
    """The leftover `<name>__expired` keeps its foreign key to accounts: the erasure deletes the person's rows in
    it before her account (lethe.relations.expired_partition_keys), by a name it must quote and qualify."""
    from lethe.erasure import lifecycle, request, tasks

    url = testing.fresh_database(services[0])
    try:
        people.insert_people(url)
        build(url, schema, same_names=False, people_there=True)
        policy = policy_file(tmp_path, schema)
        plan = make_plan(url, policy)
        kill_at_the_drop(url)
        try:
            with pytest.raises(DatabaseError):
                execute_rule(url, plan, RULE, policy=load_policy(policy))
        finally:
            heal(url)
        assert leftovers(url, schema) == [f"{OLD}__expired"]
        with transaction(url) as cur:
            request_id, _ = request.register(cur, "email", people.ASHA["email"])
            lifecycle.claim_one(cur, request_id, "schemas-run", [])
            lifecycle.move(cur, "plan", [request_id], run_id="schemas-run")
            lifecycle.move(cur, "approve_unattended", [request_id], run_id="schemas-run")

        summary = tasks.erase_run("schemas-run", url, b"schemas-key", load_policy(policy))

        assert summary["outcomes"] == {"erased": 1}, summary
        assert q(url, "SELECT status FROM erasure_requests WHERE request_id = %s", (request_id,)) == [("erased",)]
        left = q(
            url, sql.SQL("SELECT DISTINCT user_id FROM {} ORDER BY 1").format(sql.Identifier(schema, f"{OLD}__expired"))
        )
        assert left == [(people.BHAVIN["user_id"],), (people.CHITRA["user_id"],)]  # the others' are the purge's
        assert (people.ASHA["user_id"],) not in q(
            url, sql.SQL("SELECT user_id FROM {}").format(sql.Identifier(schema, "Events"))
        )
    finally:
        testing.drop_database(url)
