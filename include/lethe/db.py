"""Connections to the primary database, and Lethe's own schema in it with its migrations.

All of Lethe's state lives in one schema of its own (`lethe`, or LETHE_SCHEMA). Lethe's
connections search the platform's schema first and then Lethe's, so a statement that names
a platform table resolves there and one that names a Lethe table unqualified still finds it;
code that writes Lethe's state names it qualified (`table()`), so a platform table of the
same name can never receive it.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from datetime import date
from importlib import resources
from typing import Any

import psycopg2
import psycopg2.errorcodes
import psycopg2.extensions
from psycopg2 import sql

MIGRATIONS = "lethe.migrations"
DEFAULT_SCHEMA = "lethe"
PLATFORM_SCHEMA = "public"  # the schema of the platform's tables the policy names
MIGRATIONS_TABLE = "schema_migrations"
# Lethe's own tables and functions. The previous release kept them in the public schema
# (with schema_migrations); migrate moves them into Lethe's schema.
LETHE_TABLES = (
    "erasure_requests",
    "erasure_tombstones",
    "legal_holds",
    "aggregation_watermarks",
    "ledger",
    "retention_progress",
    "backup_snapshots",
    "backup_tombstone_applications",
    "backup_propagation_status",
    "sharing_releases",
    "sharing_budget_spend",
    "audit_runs",
    "audit_alerts",
    "processor_receipts",
    "kept_pseudonyms",
    "restore_drills",
    "held_pseudonyms",
)
LETHE_FUNCTIONS = ("ledger_append_only()",)
# The platform's migration the previous release recorded among Lethe's; the platform is no longer Lethe's to migrate.
LEGACY_PLATFORM_MIGRATION = "001_platform.sql"
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class ConfigurationError(RuntimeError):
    """Something Lethe needs is not set or not reachable; the message says what."""


class DatabaseError(RuntimeError):
    """A database error of a named step (rule and table), told without any value of any row.

    PostgreSQL's own message can quote row values ("Failing row contains (...)", the value
    that broke a type); only the error's code and the names of table, column and constraint are kept.
    """

    def __init__(self, where: str, exc: psycopg2.Error) -> None:
        self.where = where
        self.pgcode = exc.pgcode
        super().__init__(f"{where}: {describe_error(exc)}")


def describe_error(exc: psycopg2.Error) -> str:
    """The error's kind and the objects it names; never PostgreSQL's message text (it can hold values)."""
    kind = (psycopg2.errorcodes.lookup(exc.pgcode) if exc.pgcode else None) or type(exc).__name__
    named = error_objects(exc)
    text = kind.replace("_", " ").lower()
    return f"{text} ({named})" if named else text


def error_objects(exc: psycopg2.Error) -> str:
    """'table t, column c, constraint k': the names a database error carries (empty when none), no value."""
    diag = exc.diag
    pairs = (("table", diag.table_name), ("column", diag.column_name), ("constraint", diag.constraint_name))
    return ", ".join(f"{label} {value}" for label, value in pairs if value)


def database_url() -> str:
    url = os.environ.get("LETHE_DATABASE_URL")
    if not url:
        raise ConfigurationError(
            "LETHE_DATABASE_URL is not set: export it, or run through `lethe` which starts the embedded PostgreSQL"
        )
    return url


def lethe_schema() -> str:
    """The schema that holds all of Lethe's state: LETHE_SCHEMA, default `lethe`."""
    name = os.environ.get("LETHE_SCHEMA") or DEFAULT_SCHEMA
    if not _SCHEMA_NAME.match(name) or name in (PLATFORM_SCHEMA, "pg_catalog", "information_schema"):
        raise ConfigurationError(
            f"LETHE_SCHEMA={name!r}: give a lower-case schema name of Lethe's own (letters, digits, _), "
            f"not {PLATFORM_SCHEMA} or a system schema"
        )
    return name


def table(name: str) -> sql.Identifier:
    """One of Lethe's own tables, qualified with Lethe's schema."""
    return sql.Identifier(lethe_schema(), name)


def search_path() -> str:
    """The platform's schema, then Lethe's (both validated names, safe in a connection option)."""
    return f"{PLATFORM_SCHEMA},{lethe_schema()}"


def _bindable(query: Any, cur: psycopg2.extensions.cursor) -> Any:
    """A composed statement as text parameters can be bound into: the `%` of its names and literals doubled."""
    if isinstance(query, sql.Composed):
        return "".join(_bindable(part, cur) for part in query.seq)
    if isinstance(query, (sql.Identifier, sql.Literal)):
        return query.as_string(cur).replace("%", "%%")
    return query.as_string(cur) if isinstance(query, sql.Composable) else query


class Cursor(psycopg2.extensions.cursor):
    """Lethe's cursor: binds parameters into a composed statement that names a table or column holding a `%`.

    psycopg2 renders a `sql.Composable` to text and then reads every `%` in it as a placeholder when parameters
    are given: a company's table `"100%"` failed with IndexError (or took a parameter's place). The `%` of names
    and literals are doubled first, as psycopg2 reads a literal `%`; a statement without parameters goes as is."""

    def execute(self, query: Any, vars: Any = None) -> Any:
        return super().execute(query if vars is None else _bindable(query, self), vars)

    def executemany(self, query: Any, vars_list: Any) -> Any:
        return super().executemany(_bindable(query, self), vars_list)

    def mogrify(self, query: Any, vars: Any = None) -> bytes:
        return super().mogrify(query if vars is None else _bindable(query, self), vars)


def connect(url: str | None = None) -> psycopg2.extensions.connection:
    url = url or database_url()
    try:
        return psycopg2.connect(url, options=f"-c search_path={search_path()}", cursor_factory=Cursor)
    except psycopg2.OperationalError as exc:
        host = psycopg2.extensions.parse_dsn(url).get("host", "?")
        raise ConfigurationError(f"cannot reach the primary database at host {host}: {exc}".strip()) from exc


@contextlib.contextmanager
def session_lock(url: str, name: str, *, wait: bool = True) -> Iterator[bool]:
    """Hold the advisory lock `name` in a session of its own for the block; yields whether it is held (always,
    when `wait`). The lock ends with the session: on exit, on a kill, or (keepalives) ~1.5 min after a worker
    host vanishes without closing its socket."""
    conn = connect(url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SET tcp_keepalives_idle = 60; SET tcp_keepalives_interval = 10; SET tcp_keepalives_count = 3")
            fn = "pg_advisory_lock" if wait else "pg_try_advisory_lock"
            cur.execute(f"SELECT {fn}(hashtextextended(%s, 0))", (name,))
            held = True if wait else bool(cur.fetchone()[0])  # type: ignore[index]
        yield held
    finally:
        conn.close()


@contextlib.contextmanager
def transaction(url: str | None = None) -> Iterator[psycopg2.extensions.cursor]:
    """A cursor in one transaction: committed on success, rolled back on error."""
    conn = connect(url)
    try:
        with conn, conn.cursor() as cur:
            yield cur
    finally:
        conn.close()


def migrate(url: str | None = None) -> list[str]:
    """Create or upgrade Lethe's own schema; return the migrations applied.

    Creates, alters and drops nothing outside that schema. The only thing it does outside is
    the one-time move of the previous release's Lethe tables out of the public schema into it.
    """
    schema = lethe_schema()
    applied: list[str] = []
    files = sorted((f for f in resources.files(MIGRATIONS).iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    with transaction(url) as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('lethe.migrate'))")
        cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        _adopt_previous_layout(cur, schema)
        cur.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (name text PRIMARY KEY, applied_at timestamptz DEFAULT now())"
            ).format(table(MIGRATIONS_TABLE))
        )
        cur.execute(sql.SQL("SELECT name FROM {}").format(table(MIGRATIONS_TABLE)))
        done = {row[0] for row in cur.fetchall()}
        # The migration files name tables unqualified: they resolve to, and are created in, Lethe's schema only.
        cur.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
        for f in files:
            if f.name in done:
                continue
            cur.execute(f.read_text())
            cur.execute(sql.SQL("INSERT INTO {} (name) VALUES (%s)").format(table(MIGRATIONS_TABLE)), (f.name,))
            applied.append(f.name)
    return applied


def _adopt_previous_layout(cur: psycopg2.extensions.cursor, schema: str) -> None:
    """Move the previous release's Lethe tables (in public, listed in public.schema_migrations) into `schema`."""
    cur.execute(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = %s AND table_name = %s"
        " AND column_name = 'name')",
        (PLATFORM_SCHEMA, MIGRATIONS_TABLE),
    )
    if not cur.fetchone()[0]:  # type: ignore[index]
        return
    cur.execute("SELECT to_regclass(format('%%I.%%I', %s::text, %s::text)) IS NOT NULL", (schema, MIGRATIONS_TABLE))
    if cur.fetchone()[0]:  # type: ignore[index]
        return  # both exist: the public one is not ours to move
    target = sql.Identifier(schema)
    for name in (MIGRATIONS_TABLE, *LETHE_TABLES):
        cur.execute("SELECT to_regclass(format('%%I.%%I', %s::text, %s::text)) IS NOT NULL", (PLATFORM_SCHEMA, name))
        if cur.fetchone()[0]:  # type: ignore[index]
            cur.execute(sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(sql.Identifier(PLATFORM_SCHEMA, name), target))
    for signature in LETHE_FUNCTIONS:
        cur.execute("SELECT to_regprocedure(%s) IS NOT NULL", (f"{PLATFORM_SCHEMA}.{signature}",))
        if cur.fetchone()[0]:  # type: ignore[index]
            cur.execute(
                sql.SQL("ALTER FUNCTION {}.{} SET SCHEMA {}").format(
                    sql.Identifier(PLATFORM_SCHEMA), sql.SQL(signature), target
                )
            )
    cur.execute(sql.SQL("DELETE FROM {} WHERE name = %s").format(table(MIGRATIONS_TABLE)), (LEGACY_PLATFORM_MIGRATION,))


def recreate_database(server_url: str, name: str) -> str:
    """Drop and create database `name` on the server of `server_url`; return its URL."""
    dsn = psycopg2.extensions.parse_dsn(server_url)
    admin = psycopg2.connect(**{**dsn, "dbname": "postgres"})
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        admin.close()
    url = url_for_database(server_url, name)
    migrate(url)
    return url


def url_for_database(server_url: str, name: str) -> str:
    """The URL of database `name` on the same server, as the same user."""
    dsn = psycopg2.extensions.parse_dsn(server_url)
    host, port, user = dsn.get("host", "127.0.0.1"), dsn.get("port", "5432"), dsn.get("user", "postgres")
    password = f":{dsn['password']}" if dsn.get("password") else ""
    return f"postgresql://{user}{password}@{host}:{port}/{name}"


def add_months(d: date, months: int) -> date:
    index = d.year * 12 + d.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def partition_name(table: str, month: date) -> str:
    return f"{table}_{month:%Y_%m}"


def ensure_month_partitions(cur: psycopg2.extensions.cursor, table: str, start: date, end: date) -> None:
    """Create the monthly partitions of `table` covering [start, end]."""
    month = date(start.year, start.month, 1)
    while month <= end:
        nxt = add_months(month, 1)
        cur.execute(
            sql.SQL("CREATE TABLE IF NOT EXISTS {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                sql.Identifier(partition_name(table, month)),
                sql.Identifier(table),
                sql.Literal(month.isoformat()),
                sql.Literal(nxt.isoformat()),
            )
        )
        month = nxt
