"""Connections to the primary database and its migrations."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import date
from importlib import resources

import psycopg2
import psycopg2.errorcodes
import psycopg2.extensions
from psycopg2 import sql

MIGRATIONS = "lethe.migrations"

# Monthly partitions kept ready around "now" for the time-partitioned tables.
PARTITIONED_TABLES = ("usage_events", "visitor_logs")


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
    diag = exc.diag
    named = [
        f"{label} {value}"
        for label, value in (
            ("table", diag.table_name),
            ("column", diag.column_name),
            ("constraint", diag.constraint_name),
        )
        if value
    ]
    text = kind.replace("_", " ").lower()
    return f"{text} ({', '.join(named)})" if named else text


def database_url() -> str:
    url = os.environ.get("LETHE_DATABASE_URL")
    if not url:
        raise ConfigurationError(
            "LETHE_DATABASE_URL is not set: export it, or run through `lethe` which starts the embedded PostgreSQL"
        )
    return url


def connect(url: str | None = None) -> psycopg2.extensions.connection:
    url = url or database_url()
    try:
        return psycopg2.connect(url)
    except psycopg2.OperationalError as exc:
        host = psycopg2.extensions.parse_dsn(url).get("host", "?")
        raise ConfigurationError(f"cannot reach the primary database at host {host}: {exc}".strip()) from exc


@contextlib.contextmanager
def transaction(url: str | None = None) -> Iterator[psycopg2.extensions.cursor]:
    """A cursor in one transaction: committed on success, rolled back on error."""
    conn = connect(url)
    try:
        with conn, conn.cursor() as cur:
            yield cur
    finally:
        conn.close()


def migrate(url: str | None = None, *, months_back: int = 30, months_ahead: int = 3) -> list[str]:
    """Apply every SQL migration not yet applied; return the names applied."""
    applied: list[str] = []
    files = sorted((f for f in resources.files(MIGRATIONS).iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    with transaction(url) as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('lethe.migrate'))")
        cur.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (name text PRIMARY KEY, applied_at timestamptz DEFAULT now())"
        )
        cur.execute("SELECT name FROM schema_migrations")
        done = {row[0] for row in cur.fetchall()}
        for f in files:
            if f.name in done:
                continue
            cur.execute(f.read_text())
            cur.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (f.name,))
            applied.append(f.name)
        today = date.today()
        for table in PARTITIONED_TABLES:
            start = add_months(today, -months_back)
            # Never bring back months that retention already dropped: start at the oldest partition left.
            oldest = oldest_partition_month(cur, table)
            if oldest is not None and oldest > start:
                start = min(oldest, date(today.year, today.month, 1))
            ensure_month_partitions(cur, table, start, add_months(today, months_ahead))
    return applied


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


def oldest_partition_month(cur: psycopg2.extensions.cursor, table: str) -> date | None:
    """The month of the oldest monthly partition of `table` (by its lethe naming), or None."""
    cur.execute(
        "SELECT min(c.relname) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = %s AND c.relname ~ %s",
        (table, f"^{table}_[0-9]{{4}}_[0-9]{{2}}$"),
    )
    name = cur.fetchone()[0]  # type: ignore[index]
    if name is None:
        return None
    year, month = name.rsplit("_", 2)[-2:]
    return date(int(year), int(month), 1)


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
