"""`lethe backup snapshot` and `lethe restore`: write a snapshot, load one back replaying every erasure tombstone.

Both run on the embedded defaults when LETHE_DATABASE_URL / LETHE_S3_ENDPOINT_URL are unset.
"""

from __future__ import annotations

import argparse
import os
import re

from lethe.config import BACKUP_REGIONS

_DATABASE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    backup = sub.add_parser("backup", help="backup snapshots").add_subparsers(dest="backup_command", required=True)
    p = backup.add_parser(
        "snapshot",
        help="snapshot the primary into each backup region now (what backup_nightly does), print its id",
    )
    p.add_argument(
        "--region", choices=BACKUP_REGIONS, action="append", help="only this region (repeatable; default all)"
    )
    p.set_defaults(handler=cmd_snapshot)

    p = sub.add_parser(
        "restore",
        help="restore a backup snapshot into an empty database; every erased person stays erased",
        description=(
            "Load snapshot ID from region R into the database --target (migrated first, must be empty). "
            "Every erasure tombstone is replayed: the snapshot's own and the live primary's (LETHE_DATABASE_URL "
            "or --primary), so no erased person comes back. Prints what it replayed and verifies the result."
        ),
    )
    p.add_argument("--snapshot", required=True, metavar="ID", help="snapshot id, e.g. 20261130T020000Z")
    p.add_argument("--region", required=True, choices=BACKUP_REGIONS, help="backup region to restore from")
    p.add_argument(
        "--target",
        required=True,
        metavar="URL|NAME",
        help="postgresql:// URL of an empty database, or a database name on the primary's server (created if missing)",
    )
    p.add_argument("--primary", metavar="URL", help="live primary to read tombstones from (default LETHE_DATABASE_URL)")
    p.add_argument("--s3-endpoint", metavar="URL", help="S3 endpoint (default LETHE_S3_ENDPOINT_URL)")
    p.set_defaults(handler=cmd_restore)


def cli_key() -> bytes:
    """The pseudonym key: LETHE_PSEUDONYM_KEY / the lethe_pseudonym_key connection, else the local demo key."""
    from lethe.connections import pseudonym_key
    from lethe.db import ConfigurationError

    try:
        return pseudonym_key()
    except ConfigurationError:
        from lethe.airflow_env import local_pseudonym_key, pseudonym_key_file

        if pseudonym_key_file().exists():
            return local_pseudonym_key().encode()
        raise


def cmd_snapshot(args: argparse.Namespace) -> int:
    from lethe.airflow_env import local_pseudonym_key
    from lethe.backup.layout import region_endpoint
    from lethe.backup.replicate import replicate_snapshot
    from lethe.backup.snapshot import new_snapshot_id, take_snapshot
    from lethe.embedded import services
    from lethe.policy import load_policy

    embedded_primary = not os.environ.get("LETHE_DATABASE_URL")
    with services() as (db_url, s3_url):
        if embedded_primary and not os.environ.get("LETHE_PSEUDONYM_KEY"):
            local_pseudonym_key()  # the embedded primary's key, made once per LETHE_HOME (as the demo does)
        key = cli_key()
        policy = load_policy()
        sid = new_snapshot_id()
        first = BACKUP_REGIONS[0]
        for region in [r for r in BACKUP_REGIONS if r in (args.region or BACKUP_REGIONS)]:
            if region == first or (args.region and first not in args.region):
                summary = take_snapshot(db_url, region, region_endpoint(region, s3_url), sid, policy, key)
            else:  # the primary is read once: the first region's objects, copied server-side
                summary = replicate_snapshot(
                    db_url, sid, first, region_endpoint(first, s3_url), region, region_endpoint(region, s3_url)
                )
            print(f"{region}: snapshot {sid} {summary.get('status', 'written')}, {_counts(summary)}")
    print(sid)
    return 0


def _counts(summary: dict[str, object]) -> str:
    return ", ".join(f"{k} {v}" for k, v in summary.items() if isinstance(v, int) and not isinstance(v, bool))


def cmd_restore(args: argparse.Namespace) -> int:
    from lethe.backup.layout import check_snapshot_id, region_endpoint
    from lethe.backup.restore import restore_snapshot
    from lethe.cli import CommandError
    from lethe.embedded import services

    try:
        check_snapshot_id(args.snapshot)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    is_url = args.target.startswith(("postgresql://", "postgres://"))
    if not is_url and not _DATABASE_NAME.fullmatch(args.target):
        raise CommandError(
            f"--target {args.target!r} is neither a postgresql:// URL nor a database name "
            "(lower-case letters, digits, underscores)"
        )
    # Explicit options win over the environment; what is still unset runs on the embedded defaults.
    if args.primary:
        os.environ["LETHE_DATABASE_URL"] = args.primary
    if args.s3_endpoint:
        os.environ["LETHE_S3_ENDPOINT_URL"] = args.s3_endpoint
    with services() as (primary, endpoint):
        target = args.target if is_url else _database(primary, args.target)
        if target == primary:
            raise CommandError("--target is the primary itself: restore into another, empty database")
        restore_snapshot(
            args.snapshot,
            args.region,
            target,
            endpoint_url=region_endpoint(args.region, endpoint),
            key=cli_key(),
            primary_url=primary,
        )
    return 0


def _database(server_url: str, name: str) -> str:
    """Database `name` on the server of `server_url`, created when missing (restore checks it is empty)."""
    from contextlib import closing

    import psycopg2
    from psycopg2 import sql

    from lethe.db import url_for_database

    dsn = psycopg2.extensions.parse_dsn(server_url)
    with closing(psycopg2.connect(**{**dsn, "dbname": "postgres"})) as admin:
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return url_for_database(server_url, name)
