"""Test support shared by the test suite and the benchmarks: real services, fresh databases.

A template database is built once per session: the demo's platform (re:Skill's tables,
in public, as `lethe seed` creates them) and Lethe's migrated schema. Each test gets its
own copy (CREATE DATABASE ... TEMPLATE), so tests never see each other's rows.
"""

from __future__ import annotations

import os
import uuid
from contextlib import closing
from typing import Any

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from lethe.config import BUCKETS
from lethe.db import lethe_schema, migrate, transaction, url_for_database
from lethe.storage import ensure_buckets, s3_client

# One template per test process, so parallel sessions on one server never collide.
TEMPLATE = f"lethe_tpl_{os.getpid()}"


def _admin(url: str) -> psycopg2.extensions.connection:
    dsn = psycopg2.extensions.parse_dsn(url)
    dsn["dbname"] = "postgres"
    conn = psycopg2.connect(**dsn)
    conn.autocommit = True
    return conn


def build_template(url: str) -> None:
    """(Re)create the migrated template database."""
    with closing(_admin(url)) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (TEMPLATE,),
        )
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(TEMPLATE)))
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE)))
    from lethe.seed import create_platform

    template = url_for_database(url, TEMPLATE)
    with transaction(template) as cur:
        create_platform(cur)
    migrate(template)


def drop_template(url: str) -> None:
    drop_database(url_for_database(url, TEMPLATE))


def fresh_database(url: str, prefix: str = "lethe_t") -> str:
    """A new database cloned from the template; return its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with closing(_admin(url)) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(TEMPLATE)))
    return url_for_database(url, name)


def empty_database(url: str, prefix: str = "lethe_e") -> str:
    """A new database with nothing in it (not even Lethe's schema); return its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with closing(_admin(url)) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    return url_for_database(url, name)


def drop_database(url: str) -> None:
    name = psycopg2.extensions.parse_dsn(url)["dbname"]
    with closing(_admin(url)) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def empty_buckets(endpoint_url: str) -> None:
    """Create Lethe's buckets if needed and delete every object version in them."""
    ensure_buckets(endpoint_url)
    for bucket, region in BUCKETS.all().items():
        client: Any = s3_client(region, endpoint_url)
        for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
            doomed = [
                {"Key": v["Key"], "VersionId": v["VersionId"]}
                for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
            ]
            if doomed:
                # Tests lock ledger anchors in GOVERNANCE mode (tests/conftest.py), which this may bypass.
                client.delete_objects(
                    Bucket=bucket, Delete={"Objects": doomed, "Quiet": True}, BypassGovernanceRetention=True
                )


def seeded_platform(server_url: str, endpoint_url: str, name: str, users: int) -> str:
    """A bench's starting point: database `name` made afresh and migrated, every bucket emptied, `users` people
    seeded; its URL."""
    from lethe.db import migrate, recreate_database
    from lethe.seed import seed

    url = recreate_database(server_url, name)
    migrate(url)
    empty_buckets(endpoint_url)
    seed(url, users)
    return url


def primary_reads(url: str) -> tuple[int, int]:
    """(rows, bytes) the platform's tables (every schema but Lethe's) have served since the database was made.

    Rows: sequential-scan rows plus index fetches (pg_stat_user_tables). Bytes: heap, TOAST and index
    blocks read or found in shared buffers, times the block size (pg_statio_user_tables). A session's
    counts reach the statistics when it ends, so this waits until no other session is in the database.
    """
    import time

    with closing(psycopg2.connect(url)) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            for _ in range(100):
                cur.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
                if cur.fetchone()[0] == 0:  # type: ignore[index]
                    break
                time.sleep(0.1)
            cur.execute("SELECT pg_stat_clear_snapshot()")
            cur.execute(
                "SELECT coalesce(sum(seq_tup_read + coalesce(idx_tup_fetch, 0)), 0) FROM pg_stat_user_tables"
                " WHERE schemaname <> %s",
                (lethe_schema(),),
            )
            rows = int(cur.fetchone()[0])  # type: ignore[index]
            cur.execute(
                "SELECT coalesce(sum(heap_blks_read + heap_blks_hit + coalesce(idx_blks_read, 0)"
                " + coalesce(idx_blks_hit, 0) + coalesce(toast_blks_read, 0) + coalesce(toast_blks_hit, 0)"
                " + coalesce(tidx_blks_read, 0) + coalesce(tidx_blks_hit, 0)), 0)"
                " * current_setting('block_size')::bigint FROM pg_statio_user_tables WHERE schemaname <> %s",
                (lethe_schema(),),
            )
            return rows, int(cur.fetchone()[0])  # type: ignore[index]


def insert_tombstones(
    cur: psycopg2.extensions.cursor, key: bytes, user_ids: list[int], *, prefilter: bool = True
) -> None:
    """Tombstones of seeded accounts as subject_erasure writes them (without erasing anything): the subject's
    pseudonym, those of their email, username and phone, and the keyed prefilter terms of those (NULL when not
    `prefilter`, as tombstones written before them)."""
    from lethe.pseudonym import pseudonym, subject_pseudonym
    from lethe.residue import tombstone_prefilter

    cur.execute("SELECT user_id, email, username, phone FROM accounts WHERE user_id = ANY(%s)", (user_ids,))
    rows = []
    for user_id, *values in cur.fetchall():
        given = {kind: v for kind, v in zip(("email", "username", "phone"), values, strict=True) if v}
        ids = sorted(pseudonym(key, kind, v) for kind, v in given.items())
        terms = tombstone_prefilter(key, None, given) if prefilter else None
        rows.append((subject_pseudonym(key, user_id), ids, terms))
    cur.executemany(
        "INSERT INTO erasure_tombstones (subject_pseudonym, identifier_pseudonyms, prefilter_pseudonyms)"
        " VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
        rows,
    )
