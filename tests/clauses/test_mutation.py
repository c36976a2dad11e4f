"""Mutation testing of the policy: every mutant of the policy file must fail a clause test.

The facts of clause_facts.py are planted once into a seeded database. Each table with rules gets
its own copy of it (CREATE DATABASE ... TEMPLATE the seeded one, so nothing is planted twice). For
each mutant of that table (lethe.policy.mutate): the mutant is written to a file, the real purge
loads it (as LETHE_POLICY_FILE would have it loaded) and runs its rules on that table only, the
table's facts check the result, and the table is put back from a pristine copy taken before the
first mutant (verified row for row), ready for the next mutant. Tables run in parallel threads
(LETHE_MUTATION_WORKERS, default 2); the holds-ignored mutants patch code, so they run alone.

A mutant no fact notices fails this test unless equivalent_mutants.txt gives the reason it cannot
be noticed. The report, with the mutation score, is printed at the end of the pytest run.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, nullcontext
from pathlib import Path
from typing import Any

import clause_facts  # noqa: F401  (declares the facts)
import psycopg2
import psycopg2.extensions
import pytest
import yaml
from clause_harness import FACTS, MUTATION_REPORT, Check, check_all, holds_ignored, partitions, plant_all, purge
from lethe import testing
from lethe.config import policy_file
from lethe.db import transaction, url_for_database
from lethe.policy import mutate
from psycopg2 import sql

pytestmark = pytest.mark.integration

EQUIVALENTS = Path(__file__).with_name("equivalent_mutants.txt")
PRISTINE = "mutation_pristine"  # schema of the untouched copy of the table under test


def _admin(url: str) -> Any:
    dsn = psycopg2.extensions.parse_dsn(url)
    conn = psycopg2.connect(**{**dsn, "dbname": "postgres"})
    conn.autocommit = True
    return conn


def clone(seed_url: str) -> str:
    """A copy of the seeded database (a file copy in PostgreSQL: no re-planting)."""
    seed = psycopg2.extensions.parse_dsn(seed_url)["dbname"]
    name = f"lethe_m_{uuid.uuid4().hex[:10]}"
    with closing(_admin(seed_url)) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(seed)))
    return url_for_database(seed_url, name)


def schema(url: str) -> mutate.Schema:
    found: mutate.Schema = {}
    with closing(psycopg2.connect(url)) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT table_name, column_name, data_type, is_nullable = 'YES' FROM information_schema.columns"
            " WHERE table_schema = ANY(current_schemas(false))"  # the platform's and Lethe's own schema
        )
        for table, column, data_type, nullable in cur.fetchall():
            found.setdefault(table, {})[column] = (data_type, nullable)
    return found


class Bench:
    """A copy of the seeded database for one table's mutants; `reset` puts the table back as seeded."""

    def __init__(self, seed_url: str, table: str) -> None:
        self.url, self.table = clone(seed_url), table
        t, p = sql.Identifier(table), sql.Identifier(PRISTINE, table)
        with transaction(self.url) as cur:
            cur.execute(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
                " AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary",
                (table,),
            )
            key = sql.SQL(", ").join(sql.Identifier(r[0]) for r in cur.fetchall())
            cur.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0"
                " AND NOT attisdropped ORDER BY attnum",
                (table,),
            )
            columns = [sql.Identifier(r[0]) for r in cur.fetchall()]
            cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(PRISTINE)))
            cur.execute(sql.SQL("CREATE TABLE {} AS TABLE {}").format(p, t))
        cols = sql.SQL(", ").join(columns)
        excluded = sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(c) for c in columns)
        self._put_back = sql.SQL(
            "INSERT INTO {t} ({c}) SELECT {c} FROM {p} ON CONFLICT ({k}) DO UPDATE SET ({c}) = ROW({e})"
        ).format(t=t, c=cols, p=p, k=key, e=excluded)
        self._differs = sql.SQL(
            "SELECT (SELECT count(*) FROM (TABLE {t} EXCEPT ALL TABLE {p}) a)"
            " + (SELECT count(*) FROM (TABLE {p} EXCEPT ALL TABLE {t}) b)"
        ).format(t=t, p=p)

    def reset(self) -> None:
        with transaction(self.url) as cur:
            partitions(cur)  # months a drop_partitions rule dropped
            cur.execute(self._put_back)
            cur.execute(self._differs)
            differing = cur.fetchone()[0]  # type: ignore[index]
        assert differing == 0, f"{self.table} could not be put back as seeded ({differing} rows differ)"

    def run(self, checks: dict[str, Check], policy: Path, holds: bool = True) -> dict[str, str]:
        """Purge the table with `policy`'s rules; the table's failed facts. The table is put back after."""
        try:
            with nullcontext() if holds else holds_ignored(self.table):
                purge(self.url, policy, {self.table})
            return check_all(self.url, {n: c for n, c in checks.items() if FACTS[n].table == self.table})
        finally:
            self.reset()


@pytest.fixture(scope="module")
def seeded(services: tuple[str, str]) -> Iterator[tuple[str, dict[str, Check]]]:
    url = testing.fresh_database(services[0], prefix="lethe_seed")
    try:
        yield url, plant_all(url, list(FACTS.values()))
    finally:
        testing.drop_database(url)


def _outcome(bench: Bench, checks: dict[str, Check], mutant: mutate.Mutant, path: Path) -> mutate.Outcome:
    try:
        failed = bench.run(checks, path, holds=not mutant.holds_ignored)
    except AssertionError:
        raise  # the bench itself broke: not a verdict on the mutant
    except Exception as exc:  # a mutant the model or the planner rejects cannot weaken anything
        return mutate.Outcome(mutant, True, f"error: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    by = next(iter(failed.items()), None)
    return mutate.Outcome(mutant, bool(failed), f"{by[0]}: {by[1]}" if by else "")


def test_every_policy_mutant_is_killed(seeded: tuple[str, dict[str, Check]], tmp_path: Path) -> None:
    seed_url, checks = seeded
    original = policy_file()
    document = yaml.safe_load(original.read_text())
    mutants, notes = mutate.generate(document, schema(seed_url))
    equivalents = mutate.load_equivalents(EQUIVALENTS)
    paths = {}
    for m in mutants:
        paths[m.id] = original
        if m.document is not None:
            paths[m.id] = tmp_path / f"{m.id.replace(':', '_').replace('>', '')}.yaml"
            paths[m.id].write_text(yaml.safe_dump(m.document, sort_keys=False))
    tables = sorted({m.table for m in mutants})
    benches: dict[str, Bench] = {}
    outcomes: dict[str, mutate.Outcome] = {}

    def table_mutants(table: str) -> None:
        bench = benches[table]
        # The unmutated policy must pass every fact in this scoped mode, or a "kill" would mean nothing.
        failed = bench.run(checks, original)
        assert not failed, f"the unmutated policy fails clause facts when purging {table} alone: {failed}"
        for m in mutants:
            if m.table == table and not m.holds_ignored:
                outcomes[m.id] = _outcome(bench, checks, m, paths[m.id])

    try:
        for table in tables:  # one at a time: a template database takes one copy at a time
            benches[table] = Bench(seed_url, table)
        with ThreadPoolExecutor(int(os.environ.get("LETHE_MUTATION_WORKERS", "2"))) as pool:
            for future in [pool.submit(table_mutants, t) for t in tables]:
                future.result()
        for m in mutants:  # code mutants: one at a time, nothing else running
            if m.holds_ignored:
                outcomes[m.id] = _outcome(benches[m.table], checks, m, paths[m.id])
    finally:
        for bench in benches.values():
            testing.drop_database(bench.url)

    lines, problems = mutate.report([outcomes[m.id] for m in mutants], equivalents, notes)
    MUTATION_REPORT[:] = [f"policy {original}", *lines]
    assert not problems, "\n".join(problems)


def test_the_weakening_of_issue_15_fails_clause_tests(seeded: tuple[str, dict[str, Check]], tmp_path: Path) -> None:
    """The policy weakened as in issue 15 (which passed the old retention and audit tests), with the
    whole nightly purge: closed_account_details removed, invoices and payments P8Y -> P1Y, communications
    P3Y -> P30D."""
    seed_url, checks = seeded
    document = yaml.safe_load(policy_file().read_text())
    accounts = document["tables"]["accounts"]["retention"]
    accounts[:] = [r for r in accounts if r["name"] != "closed_account_details"]
    for table, keep in (("invoices", "P1Y"), ("payments", "P1Y"), ("communications", "P30D")):
        document["tables"][table]["retention"][0]["keep"] = keep
    weakened = tmp_path / "weakened.yaml"
    weakened.write_text(yaml.safe_dump(document, sort_keys=False))
    url = clone(seed_url)
    try:
        purge(url, weakened)
        failed = check_all(url, checks)
    finally:
        testing.drop_database(url)
    assert set(failed) == {
        "closed_account_details_blank_after_31_days",
        "invoices_kept_for_the_statutory_period",
        "invoices_kept_from_the_financial_years_end",
        "payments_kept_for_the_statutory_period",
        "payments_kept_from_the_financial_years_end_of_a_refund",
        "communications_kept_three_years",
    }, failed
