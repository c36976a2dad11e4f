"""Sibling races of retention's partition drop: Lethe code reading the catalog or the partitioned tables in
several statements while a purge's detach, rename and drop commit in between (real PostgreSQL)."""

from __future__ import annotations

import erasure_people as people
import psycopg2
import pytest

pytestmark = pytest.mark.integration

KEY = b"sibling-race-key"


def detach_like_retention(db_url: str, part: str) -> None:
    """Retention's first transaction for partition `part`: detached, renamed `<part>__expired`, marked. Refused
    (LockNotAvailable) when the partition cannot be locked within a second."""
    from lethe.retention.catalog import expired_marker

    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SET statement_timeout = '30s'")
        cur.execute("SET lock_timeout = '1s'")
        cur.execute("SELECT inhparent::regclass::text FROM pg_inherits WHERE inhrelid = %s::regclass", (part,))
        (parent,) = cur.fetchone()  # type: ignore[misc]
        cur.execute(f'ALTER TABLE "{parent}" DETACH PARTITION "{part}"')
        cur.execute(f'ALTER TABLE "{part}" RENAME TO "{part}__expired"')
        cur.execute(f'COMMENT ON TABLE "{part}__expired" IS %s', (expired_marker(parent),))


def her_partitions(db_url: str, table: str) -> list[str]:
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute(
            f"SELECT DISTINCT tableoid::regclass::text FROM {table} WHERE user_id = %s ORDER BY 1",  # noqa: S608
            (people.ASHA["user_id"],),
        )
        return [r[0] for r in cur.fetchall()]


def approved_request(db_url: str, run_id: str) -> str:
    from lethe.db import transaction
    from lethe.erasure import lifecycle, request

    with transaction(db_url) as cur:
        request_id, _ = request.register(cur, "email", people.ASHA["email"])
        lifecycle.claim_one(cur, request_id, run_id, [])
        lifecycle.move(cur, "plan", [request_id], run_id=run_id)
        lifecycle.move(cur, "approve_unattended", [request_id], run_id=run_id)
    return str(request_id)


def test_an_erasure_beside_a_partition_retention_detached_deletes_the_persons_rows_there_first(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The purge's first transaction (detach, rename, mark) commits after the erasure read the graph and before
    it deleted her account: the detached `<name>__expired` keeps its foreign key to accounts and her rows in it,
    and the erasure failed on a ForeignKeyViolation (for as long as the DROP waits for the erasures' locks on
    accounts, or a killed purge left it)."""
    from lethe.erasure import tasks
    from lethe.policy import load_policy

    people.insert_people(db_url)
    part = her_partitions(db_url, "usage_events")[0]
    request_id = approved_request(db_url, "sibling-run")
    real_read_graph = tasks.read_graph
    detached = []

    def purge_detaches_now(*args: object, **kwargs: object) -> object:
        graph = real_read_graph(*args, **kwargs)  # type: ignore[arg-type]
        if not detached:  # the graph is read, her account not yet deleted
            detach_like_retention(db_url, part)
            detached.append(part)
        return graph

    monkeypatch.setattr(tasks, "read_graph", purge_detaches_now)
    summary = tasks.erase_run("sibling-run", db_url, KEY, load_policy())

    assert detached == [part]
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT status, detail->>'error' FROM erasure_requests WHERE request_id = %s", (request_id,))
        assert cur.fetchone() == ("erased", None)
        cur.execute(f'SELECT user_id, count(*) FROM "{part}__expired" GROUP BY 1 ORDER BY 1')  # noqa: S608
        left = dict(cur.fetchall())
    assert summary["outcomes"] == {"erased": 1}, summary
    assert people.ASHA["user_id"] not in left  # hers went with her account
    assert left  # the other people's expired rows are the purge's to drop


def drop_like_retention(db_url: str, part: str) -> None:
    """Retention's second transaction for partition `part`: the detached `<part>__expired` dropped."""
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SET statement_timeout = '30s'")
        cur.execute("SET lock_timeout = '1s'")
        cur.execute(f'DROP TABLE "{part}__expired"')


def test_a_partition_dropped_while_the_audit_scans_by_value_is_not_read(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The audit's scan by value listed every table of the schemas, `<name>__expired` included, and read them one
    by one later: the purge's DROP committing in between failed the check on a table that was gone."""
    from lethe import residue
    from lethe.audit import primary
    from lethe.policy import load_policy
    from lethe.pseudonym import pseudonym

    people.insert_people(db_url)
    part = her_partitions(db_url, "visitor_logs")[0]
    detach_like_retention(db_url, part)
    real_scan_rows = residue.scan_rows
    dropped = []

    def purge_drops_it_now(*args: object, **kwargs: object) -> object:
        if not dropped:  # the tables are listed, none read yet
            drop_like_retention(db_url, part)
            dropped.append(part)
        return real_scan_rows(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(residue, "scan_rows", purge_drops_it_now)
    erased = ({"someone"}, {pseudonym(KEY, "email", "gone@example.com")})
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        counts, _ = primary.erasure_residue_scan(cur, load_policy(), KEY, erased)
    assert dropped == [part]
    assert counts == {"erased_found_by_value": 0}


def test_a_partition_the_purge_detaches_after_the_erasure_looked_it_up_is_not_vacuumed(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After its commit the erasure vacuums the partitions it wrote: it asked whether each still exists, then ran
    VACUUM in another statement; the purge detaching and renaming it (or dropping it) in between failed the erase
    task after the erasure had committed."""
    from lethe.erasure import vacuum

    people.insert_people(db_url)
    part = her_partitions(db_url, "usage_events")[0]
    real_relation = vacuum.relation
    detached = []

    def purge_detaches_now(name: str) -> object:
        if name == f"public.{part}" and not detached:  # looked up, not vacuumed yet
            detach_like_retention(db_url, part)
            detached.append(part)
        return real_relation(name)

    monkeypatch.setattr(vacuum, "relation", purge_detaches_now)
    done = vacuum.vacuum(db_url, ["accounts", f"public.{part}"])
    assert detached == [part]
    assert done == ["accounts"]


def detach_keeping_held_like_retention(db_url: str, part: str, held_user: int) -> None:
    """Retention's first transaction for `part` when someone in it is under legal hold: their rows copied into a
    fresh table, the partition detached, renamed and marked, the fresh table attached under its name. Refused
    (LockNotAvailable) when the partition cannot be locked within a second."""
    from lethe.retention.catalog import expired_marker

    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SET statement_timeout = '30s'")
        cur.execute("SET lock_timeout = '1s'")
        cur.execute(
            "SELECT inhparent::regclass::text, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
            " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhrelid = %s::regclass",
            (part,),
        )
        parent, bound = cur.fetchone()  # type: ignore[misc]
        cur.execute(f'LOCK TABLE "{part}" IN SHARE MODE')
        cur.execute(f'CREATE TABLE "{part}__held" (LIKE "{parent}" INCLUDING ALL)')
        cur.execute(f'INSERT INTO "{part}__held" SELECT * FROM "{part}" WHERE user_id = %s', (held_user,))  # noqa: S608
        cur.execute(f'ALTER TABLE "{parent}" DETACH PARTITION "{part}"')
        cur.execute(f'ALTER TABLE "{part}" RENAME TO "{part}__expired"')
        cur.execute(f'COMMENT ON TABLE "{part}__expired" IS %s', (expired_marker(parent),))
        cur.execute(f'ALTER TABLE "{part}__held" RENAME TO "{part}"')
        cur.execute(f'ALTER TABLE "{parent}" ATTACH PARTITION "{part}" {bound}')


def test_a_backup_export_holds_the_partitions_of_its_snapshot_however_the_purge_detaches_meanwhile(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The export reads every table in one REPEATABLE READ snapshot, taken at its first statement, and locked the
    partitions only later (when it sized the tables): a purge detaching a partition in between, its held rows put
    back in a fresh table, left the export with neither the partition's rows as of its snapshot nor the held
    rows (written after it): a legally held person's events missing from the night's backup."""
    from lethe.backup import snapshot
    from lethe.policy import load_policy

    people.insert_people(db_url)
    held = people.CHITRA["user_id"]
    part = her_partitions(db_url, "usage_events")[0]
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*), count(*) FILTER (WHERE user_id = %s) FROM usage_events", (held,))
        before, held_rows = cur.fetchone()  # type: ignore[misc]
    assert held_rows
    real_table_sizes = snapshot.table_sizes
    purge: list[str] = []

    def purge_detaches_now(*args: object, **kwargs: object) -> object:
        if not purge:  # after the export's snapshot, before it sized (and so locked) the tables
            try:
                detach_keeping_held_like_retention(db_url, part, held)
                purge.append("committed")
            except psycopg2.errors.LockNotAvailable:
                purge.append("waited for the export")
        return real_table_sizes(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(snapshot, "table_sizes", purge_detaches_now)

    def sink(table: str, bucket_no: int | None, body: object, last: int | None = None) -> tuple[str, str]:
        return f"{table}/{bucket_no}", ""

    policy = load_policy()
    with snapshot.export_transaction(db_url, lock=snapshot.backed_up_tables(policy)) as cur:
        entries = snapshot.export_tables(cur, snapshot.backed_up_tables(policy), policy, KEY, set(), sink)
    assert purge, "the purge was not placed after the export's snapshot"
    assert entries["usage_events"].rows == before, purge


def test_a_partition_another_purge_detaches_while_this_one_plans_is_not_counted_by_a_name_gone(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plan (a dry run beside the nightly purge, or a second run) listed the table's partitions, then counted
    each by name in statements of their own: the other purge's detach and rename committing in between failed
    the plan on a relation that no longer existed."""
    from datetime import UTC, datetime

    from lethe.db import transaction
    from lethe.retention import catalog, plan

    people.insert_people(db_url)
    real_partitions = catalog.partitions
    purge: list[str] = []

    def other_purge_detaches_now(cur: object, table: str) -> object:
        found = real_partitions(cur, table)  # type: ignore[arg-type]
        if table == "usage_events" and not purge:  # listed, not counted yet
            try:
                detach_like_retention(db_url, found[0].name)
                purge.append("committed")
            except psycopg2.errors.LockNotAvailable:
                purge.append("waited for the plan")
        return found

    monkeypatch.setattr(catalog, "partitions", other_purge_detaches_now)
    with transaction(db_url) as cur:
        p = plan.build_plan(cur, datetime(2031, 1, 1, tzinfo=UTC), rules=["raw_usage_events"], dry_run=True)
    assert purge
    assert p.rule("raw_usage_events").partitions


def test_a_leftover_another_purge_drops_while_this_one_plans_is_not_counted_by_a_name_gone(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plan listed the `<name>__expired` leftovers of a purge (killed, or between its two transactions) and then
    counted each by name: that purge's DROP committing in between failed the plan."""
    from datetime import UTC, datetime

    from lethe.db import transaction
    from lethe.retention import catalog, plan

    people.insert_people(db_url)
    part = catalog_partitions(db_url, "usage_events")[0]
    detach_like_retention(db_url, part)
    real_leftovers = catalog.detached_leftovers
    purge: list[str] = []

    def other_purge_drops_now(cur: object, table: str) -> list[tuple[str, str]]:
        found = real_leftovers(cur, table)  # type: ignore[arg-type]
        if table == "usage_events" and not purge:  # listed, not counted yet
            assert found == [("public", f"{part}__expired")]
            try:
                drop_like_retention(db_url, part)
                purge.append("committed")
            except psycopg2.errors.LockNotAvailable:
                purge.append("waited for the plan")
        return found

    monkeypatch.setattr(catalog, "detached_leftovers", other_purge_drops_now)
    with transaction(db_url) as cur:
        p = plan.build_plan(cur, datetime(2031, 1, 1, tzinfo=UTC), rules=["raw_usage_events"], dry_run=True)
    assert purge
    assert f"{part}__expired" not in [x.name for x in p.rule("raw_usage_events").partitions] or purge == [
        "waited for the plan"
    ]


def catalog_partitions(db_url: str, table: str) -> list[str]:
    from lethe.retention import catalog

    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        return [p.name for p in catalog.partitions(cur, table)]


def test_a_policy_draft_beside_a_purge_neither_drafts_nor_samples_a_partition_retention_is_dropping(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`lethe policy init` listed every table, `<name>__expired` included, then sampled each one's text columns in
    statements of their own: the draft named the leftover as a table of the platform, and the purge's DROP
    between the list and the samples failed the command."""
    from lethe.policy import draft

    people.insert_people(db_url)
    part = catalog_partitions(db_url, "usage_events")[0]
    detach_like_retention(db_url, part)
    real_foreign_keys = draft.relations.foreign_keys
    purge: list[str] = []

    def purge_drops_now(*args: object, **kwargs: object) -> object:
        if not purge:  # the tables are listed, none sampled yet
            drop_like_retention(db_url, part)
            purge.append("committed")
        return real_foreign_keys(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(draft.relations, "foreign_keys", purge_drops_now)
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        tables, _ = draft.draft_tables(cur, "accounts")
    assert purge == ["committed"]
    names = [t.name for t in tables]
    assert "usage_events" in names and not any(n.endswith("__expired") for n in names), names
