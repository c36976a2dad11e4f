"""Lint the policy against the live schema: every column classified, nothing unknown.

Problems are located: policy-side ones at the file line of the rule, schema-side
ones (a column nobody classified) at the table's `columns:` line.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import psycopg2.extensions
import yaml

from lethe.db import LETHE_TABLES, PLATFORM_SCHEMA, lethe_schema
from lethe.policy.model import PERSONAL_CATEGORIES, Policy, _line_index

# Types a retention clock can count from.
CLOCK_TYPES = ("timestamp with time zone", "timestamp without time zone", "date")
# Erasure and anonymisation strategies that leave the column NULL.
NULLING = ("null", "pseudonym_link")


class LiveColumn(NamedTuple):
    type: str
    not_null: bool


def live_schema(
    cur: psycopg2.extensions.cursor, lethe_tables: list[str] | None = None
) -> dict[str, dict[str, LiveColumn]]:
    """Ordinary and partitioned tables of the platform's schema (not partitions) -> columns in order,
    plus those of `lethe_tables` that live in Lethe's own schema (its state the policy governs)."""
    cur.execute(
        """
        SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, NULL), a.attnotnull
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
          AND (n.nspname = %(platform)s OR (n.nspname = %(lethe)s AND c.relname = ANY(%(named)s)))
        ORDER BY n.nspname = %(platform)s DESC, c.relname, a.attnum
        """,
        {"platform": PLATFORM_SCHEMA, "lethe": lethe_schema(), "named": lethe_tables or []},
    )
    schema: dict[str, dict[str, LiveColumn]] = {}
    home: dict[str, str] = {}
    for namespace, table, column, type_, not_null in cur.fetchall():
        if home.setdefault(table, namespace) == namespace:  # a platform table shadows Lethe's of the same name
            schema.setdefault(table, {})[column] = LiveColumn(type_, not_null)
    return schema


def subject_foreign_keys(cur: psycopg2.extensions.cursor, subject_table: str) -> set[tuple[str, str]]:
    """(table, column) pairs with a foreign key to the subject table."""
    cur.execute(
        """
        SELECT src.relname, a.attname
        FROM pg_constraint con
        JOIN pg_class src ON src.oid = con.conrelid
        JOIN pg_class dst ON dst.oid = con.confrelid
        JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = con.conkey[1]
        WHERE con.contype = 'f' AND dst.relname = %s AND array_length(con.conkey, 1) = 1
        """,
        (subject_table,),
    )
    return {(t, c) for t, c in cur.fetchall()}


def lint(policy: Policy, cur: psycopg2.extensions.cursor) -> list[str]:
    path = policy.path
    node = yaml.compose(path.read_text()) if path else None
    lines: dict[tuple[Any, ...], int] = _line_index(node) if node else {}

    def at(*loc: Any) -> str:
        for end in range(len(loc), -1, -1):
            if loc[:end] in lines:
                return f"{path}:{lines[loc[:end]]}"
        return str(path)

    schema = live_schema(cur, [t for t in policy.tables if t in LETHE_TABLES])
    fks = subject_foreign_keys(cur, policy.subject.table)
    problems: list[str] = []
    for table in sorted(set(schema) - set(policy.tables) - set(policy.system_tables)):
        problems.append(f"{at('tables')}: table {table!r} exists in the database but no rule of the policy covers it")
    for table, rule in policy.tables.items():
        if table not in schema:
            problems.append(f"{at('tables', table)}: tables.{table}: unknown table: not in the database")
            continue
        live = schema[table]
        for column in rule.columns:
            if column not in live:
                problems.append(
                    f"{at('tables', table, 'columns', column)}: tables.{table}.columns.{column}: unknown column"
                )
        for column in live:
            if column not in rule.columns:
                problems.append(
                    f"{at('tables', table, 'columns')}: tables.{table}.columns: column {column!r} exists in the "
                    "database but is not classified"
                )
        problems += _impossible(policy, table, live, at)
        personal = sorted(c for c, cls in rule.columns.items() if cls in PERSONAL_CATEGORIES)
        if personal and rule.subject is None and table != policy.subject.table:
            problems.append(
                f"{at('tables', table, 'subject')}: tables.{table}.subject: holds personal data "
                f"({', '.join(personal)}) but is not linked to the data subject"
            )
        erasure = rule.erasure
        if erasure and erasure.action != "delete":
            loose = [c for c in personal if c not in erasure.columns and c not in erasure.keep]
            if loose:
                problems.append(
                    f"{at('tables', table, 'erasure')}: tables.{table}.erasure: kept rows would keep personal "
                    f"column(s) {', '.join(loose)} unnamed: mask each under `columns` or list it under `keep` "
                    "with its legal reason"
                )
        if rule.subject and table != policy.subject.table and (table, rule.subject) not in fks:
            problems.append(
                f"{at('tables', table, 'subject')}: tables.{table}.subject: column {rule.subject!r} has no foreign key "
                f"to {policy.subject.table}.{policy.subject.key}, so the subject cannot be reached through it"
            )
    return problems


def _impossible(policy: Policy, table: str, live: dict[str, LiveColumn], at: Any) -> list[str]:
    """Rules the database cannot carry out: a NULL into a NOT NULL column, a clock that is not a time."""
    rule = policy.tables[table]
    problems: list[str] = []
    for i, r in enumerate(rule.retention):
        if r.event is None and r.after not in live:
            problems.append(
                f"{at('tables', table, 'retention', i, 'after')}: tables.{table}.retention.{i}.after: rule {r.name} "
                f"counts from {r.after!r}, which is not a column of {table} in the database"
            )
        elif r.event is None and live[r.after].type not in CLOCK_TYPES:
            problems.append(
                f"{at('tables', table, 'retention', i, 'after')}: tables.{table}.retention.{i}.after: rule {r.name} "
                f"counts from {r.after!r}, which is {live[r.after].type}, not a timestamp or date"
            )
        for column, strategy in r.columns.items():
            if strategy in NULLING and column in live and live[column].not_null:
                problems.append(
                    f"{at('tables', table, 'retention', i, 'columns', column)}: "
                    f"tables.{table}.retention.{i}.columns.{column}: rule {r.name} sets {column!r} to null, "
                    "but the column is NOT NULL"
                )
    erasure_columns = rule.erasure.columns if rule.erasure else {}
    for column, strategy in erasure_columns.items():
        if strategy in NULLING and column in live and live[column].not_null:
            problems.append(
                f"{at('tables', table, 'erasure', 'columns', column)}: tables.{table}.erasure.columns.{column}: "
                f"erasure sets {column!r} to null ({strategy}), but the column is NOT NULL"
            )
    return problems
