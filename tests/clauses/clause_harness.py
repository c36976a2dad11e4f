"""Clause facts: how a clause test is declared, planted, purged and checked.

A fact is a function decorated with @fact(clause, table=..., rules=..., says=...). It plants rows
with its own SQL and returns a check that reads the database with its own SQL. Expectations are
literal (an invoice issued 7 years ago is still there), never computed from the policy file.

The same fact runs two ways:
- as a pytest test (test_clauses.py): planted with every other fact, the whole retention purge
  run as retention_nightly runs it, then checked;
- against every mutant of the policy (test_mutation.py): planted once into a seeded template
  database, cloned per mutant, purged on the mutated table only, checked.

Row ids are literal and disjoint per fact (fact number x 100 + n for people, x 10 + k for rows),
so facts never see each other's rows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg2.extensions
from lethe.db import add_months, ensure_month_partitions, transaction
from lethe.policy import load_policy
from lethe.retention import predicates
from lethe.retention.execute import execute_rule
from lethe.retention.plan import MAX_STAGES, build_plan
from policy_clauses import CLAUSES
from psycopg2 import sql

# The night of the purge. Fixed, so every fact's dates are literal.
NOW = datetime(2026, 6, 1, 3, 0, tzinfo=UTC)
PARTITIONED = ("usage_events", "visitor_logs")

Cursor = psycopg2.extensions.cursor
Check = Callable[[Cursor], None]


def days_ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def years_ago(years: float) -> datetime:
    return NOW - timedelta(days=365 * years)


YESTERDAY_EVENING = NOW - timedelta(hours=8)  # "the next morning" is NOW


@dataclass(frozen=True)
class Fact:
    name: str
    clause: str
    table: str  # whose retention rules the fact's purge runs (the mutation run scopes by it)
    rules: tuple[str, ...]  # the policy rules the fact pins (coverage and the report only)
    says: str  # the assertion, in words
    plant: Callable[[Cursor], Check]

    @property
    def quote(self) -> str:
        return CLAUSES[self.clause][1]


FACTS: dict[str, Fact] = {}

# Set by test_mutation.py: the mutation report, printed at the end of the pytest run (CI's output).
MUTATION_REPORT: list[str] = []


def fact(clause: str, *, table: str, rules: tuple[str, ...] | list[str], says: str) -> Callable[..., Any]:
    """Declare a clause test: the clause it pins (by id, see policy_clauses.py), the rules, the assertion's words."""

    def declare(plant: Callable[[Cursor], Check]) -> Callable[[Cursor], Check]:
        register(Fact(plant.__name__, clause, table, tuple(rules), says, plant))
        return plant

    return declare


def register(f: Fact) -> None:
    if f.clause not in CLAUSES:
        raise ValueError(f"unknown clause id {f.clause!r}; add it to tests/clauses/policy_clauses.py")
    if f.name in FACTS:
        raise ValueError(f"clause fact {f.name} is declared twice")
    FACTS[f.name] = f


# ---- planting helpers (plain SQL) ------------------------------------------------------------


def account(cur: Cursor, user_id: int, *, closed: datetime | None = None) -> None:
    cur.execute(
        "INSERT INTO accounts (user_id, name, username, email, phone, password_hash, age, address, city, interests,"
        " created_at, last_active_at, closed_at)"
        " VALUES (%s, %s, %s, %s, '+91 98450 00000', 'pbkdf2$secret', 34, '12 MG Road', 'Bengaluru',"
        " ARRAY['python'], %s, %s, %s)",
        (
            user_id,
            f"Person {user_id}",
            f"person{user_id}",
            f"person{user_id}@example.com",
            years_ago(12),
            closed or days_ago(1),
            closed,
        ),
    )


def consent(
    cur: Cursor, consent_id: int, user_id: int, purpose: str, *, withdrawn: datetime | None = None, objected=None
) -> None:
    cur.execute(
        "INSERT INTO consents (consent_id, user_id, purpose, granted_at, withdrawn_at, objected_at)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (consent_id, user_id, purpose, years_ago(3), withdrawn, objected),
    )


def hold(cur: Cursor, hold_id: int, user_id: int) -> None:
    cur.execute(
        "INSERT INTO legal_holds (hold_id, subject_key, reason, placed_at) VALUES (%s, %s, 'pending litigation', %s)",
        (hold_id, str(user_id), years_ago(1)),
    )


def partitions(cur: Cursor) -> None:
    """Monthly partitions covering every date a fact plants into the partitioned tables."""
    for table in PARTITIONED:
        ensure_month_partitions(cur, table, date(2025, 11, 1), add_months(NOW.date(), 1))


def ids(cur: Cursor, query: str, *params: Any) -> set[Any]:
    cur.execute(query, params)
    return {row[0] for row in cur.fetchall()}


def one(cur: Cursor, query: str, *params: Any) -> tuple[Any, ...]:
    cur.execute(query, params)
    row = cur.fetchone()
    assert row is not None, f"no row for {query!r} {params!r}"
    return tuple(row)


def expect(got: Any, want: Any, what: str = "") -> None:
    assert got == want, f"{what + ': ' if what else ''}got {got!r}, expected {want!r}"


# ---- running -------------------------------------------------------------------------------


def plant_all(url: str, facts: list[Fact]) -> dict[str, Check]:
    checks = {}
    with transaction(url) as cur:
        partitions(cur)
        for f in facts:
            checks[f.name] = f.plant(cur)
    return checks


def purge(url: str, policy_file: Path | None, tables: set[str] | None = None) -> None:
    """The real retention purge as of NOW: plan (lethe.retention.plan), then every stage's rules in order.

    `tables`: only the rules on these tables (the mutation run's scope); None: every rule, as the DAG does.
    """
    policy = load_policy(policy_file)
    rules = [r.name for t, r in policy.rules() if tables is None or t in tables]
    if not rules:
        return
    with transaction(url) as cur:
        plan = build_plan(cur, NOW, policy=policy, rules=rules)
    for k in range(MAX_STAGES):
        for rule in plan.stage(k):
            execute_rule(url, plan, rule, policy=policy)


def check_all(url: str, checks: dict[str, Check]) -> dict[str, str]:
    """Run each check; return the failed ones, each with the fact's words and what was found."""
    failed = {}
    with transaction(url) as cur:
        for name, check in checks.items():
            try:
                check(cur)
            except AssertionError as exc:
                failed[name] = f"{FACTS[name].says}. {str(exc).splitlines()[0]}"
    return failed


@contextlib.contextmanager
def holds_ignored(table: str) -> Iterator[None]:
    """A code mutant: the retention predicates forget legal holds on `table` (holds are not in the YAML)."""
    cls = predicates.Predicates
    held, held_where = cls.held, cls.held_where

    def no_held(self: Any, t: str, alias: str) -> sql.Composable:
        return sql.SQL("false") if t == table else held(self, t, alias)

    def no_held_where(self: Any, t: str, alias: str) -> sql.Composable:
        return sql.SQL("false") if t == table else held_where(self, t, alias)

    cls.held, cls.held_where = no_held, no_held_where  # type: ignore[method-assign]
    try:
        yield
    finally:
        cls.held, cls.held_where = held, held_where  # type: ignore[method-assign]
