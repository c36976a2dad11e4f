"""`lethe restore`: load a backup snapshot into a database, replaying every erasure tombstone."""

from __future__ import annotations

import argparse
import os

from lethe.config import BACKUP_REGIONS


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "restore",
        help="restore a backup snapshot into an empty database; every erased person stays erased",
        description=(
            "Load snapshot ID from region R into the database at --target (migrated first, must be empty). "
            "Every erasure tombstone is replayed: the snapshot's own and the live primary's (LETHE_DATABASE_URL "
            "or --primary), so no erased person comes back. Prints what it replayed and verifies the result."
        ),
    )
    p.add_argument("--snapshot", required=True, metavar="ID", help="snapshot id, e.g. 20261130T020000Z")
    p.add_argument("--region", required=True, choices=BACKUP_REGIONS, help="backup region to restore from")
    p.add_argument("--target", required=True, metavar="URL", help="postgresql:// URL of the (empty) target database")
    p.add_argument("--primary", metavar="URL", help="live primary to read tombstones from (default LETHE_DATABASE_URL)")
    p.add_argument("--s3-endpoint", metavar="URL", help="S3 endpoint (default LETHE_S3_ENDPOINT_URL)")
    p.set_defaults(handler=cmd_restore)


def restore_key() -> bytes:
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


def cmd_restore(args: argparse.Namespace) -> int:
    from lethe.backup.layout import check_snapshot_id, region_endpoint
    from lethe.backup.restore import restore_snapshot
    from lethe.cli import CommandError

    try:
        check_snapshot_id(args.snapshot)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    if not args.target.startswith(("postgresql://", "postgres://")):
        raise CommandError(f"--target {args.target!r} is not a postgresql:// URL")
    endpoint = args.s3_endpoint or os.environ.get("LETHE_S3_ENDPOINT_URL") or None
    if endpoint is None:
        raise CommandError("no S3 endpoint: pass --s3-endpoint or set LETHE_S3_ENDPOINT_URL")
    restore_snapshot(
        args.snapshot,
        args.region,
        args.target,
        endpoint_url=region_endpoint(args.region, endpoint),
        key=restore_key(),
        primary_url=args.primary or os.environ.get("LETHE_DATABASE_URL"),
    )
    return 0
