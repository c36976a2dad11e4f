"""Anchors of the ledger's chain head, kept in the evidence bucket under S3 Object Lock where it has it.

Whoever owns the ledger table can disable its triggers and cut off its tail; the chain still verifies.
An anchor (the head's position and hash, written after each task of a Lethe DAG) cannot be rewritten
while it is locked, so the audit finds a ledger that no longer holds an anchored entry
(lethe.audit.ledger_checks). Anchors hold hashes and counts only.

Keys: ledger-anchors/<database>/<seq, 12 digits>-<entry hash>.json, so a listing gives every anchor.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg2.extensions
from botocore.exceptions import ClientError

from lethe import ledger
from lethe.db import ConfigurationError

PREFIX = "ledger-anchors/"
LOCK_MODE_ENV = "LETHE_LEDGER_ANCHOR_LOCK_MODE"
RETAIN_DAYS_ENV = "LETHE_LEDGER_ANCHOR_RETAIN_DAYS"
DEFAULT_LOCK_MODE = "COMPLIANCE"  # not even the bucket's owner can shorten it
DEFAULT_RETAIN_DAYS = 3650  # the ledger is kept indefinitely; ten years of locked anchors
NO_LOCK = "unavailable: the bucket has no Object Lock configuration, this anchor can be deleted"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Anchor:
    seq: int
    entry_hash: str
    key: str


def database_prefix(database: str) -> str:
    return f"{PREFIX}{database}/"


def key_for(database: str, seq: int, entry_hash: str) -> str:
    return f"{database_prefix(database)}{seq:012d}-{entry_hash}.json"


def parse_key(key: str) -> Anchor | None:
    """The anchor a key names, or None for a key that is not one."""
    name = key.rsplit("/", 1)[-1].removesuffix(".json")
    seq, _, entry_hash = name.partition("-")
    if not (seq.isdigit() and len(entry_hash) == 64):
        return None
    return Anchor(int(seq), entry_hash, key)


def lock_settings() -> tuple[str, int]:
    """(retention mode, days) from the environment, checked."""
    mode = os.environ.get(LOCK_MODE_ENV, DEFAULT_LOCK_MODE).upper()
    if mode not in ("COMPLIANCE", "GOVERNANCE"):
        raise ConfigurationError(f"{LOCK_MODE_ENV}={mode!r}: must be COMPLIANCE or GOVERNANCE")
    raw = os.environ.get(RETAIN_DAYS_ENV, str(DEFAULT_RETAIN_DAYS))
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigurationError(f"{RETAIN_DAYS_ENV}={raw!r}: must be a whole number of days, at least 1")
    return mode, int(raw)


def object_lock_enabled(client: Any, bucket: str) -> bool:
    try:
        config = client.get_object_lock_configuration(Bucket=bucket).get("ObjectLockConfiguration", {})
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ObjectLockConfigurationNotFoundError":
            return False
        raise
    return bool(config.get("ObjectLockEnabled") == "Enabled")


def write(cur: psycopg2.extensions.cursor, client: Any, bucket: str, now: datetime | None = None) -> Anchor | None:
    """Anchor the current head unless it already is; None while the ledger is empty."""
    head = ledger.head(cur)
    if head is None:
        return None
    cur.execute("SELECT current_database()")
    database = cur.fetchone()[0]  # type: ignore[index]
    anchor = Anchor(head.seq, head.entry_hash, key_for(database, head.seq, head.entry_hash))
    try:
        client.head_object(Bucket=bucket, Key=anchor.key)
        return anchor
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
            raise
    now = now or datetime.now(UTC)
    body = json.dumps(
        {
            "database": database,
            "seq": head.seq,
            "entry_id": head.entry_id,
            "entry_hash": head.entry_hash,
            "anchored_at": now.isoformat(),
        },
        sort_keys=True,
    ).encode()
    kwargs: dict[str, Any] = {"ChecksumAlgorithm": "SHA256", "ContentType": "application/json"}
    if object_lock_enabled(client, bucket):
        mode, days = lock_settings()
        kwargs |= {"ObjectLockMode": mode, "ObjectLockRetainUntilDate": now + timedelta(days=days)}
    else:
        kwargs["Metadata"] = {"object-lock": NO_LOCK}
    client.put_object(Bucket=bucket, Key=anchor.key, Body=body, **kwargs)
    return anchor


def anchors(client: Any, bucket: str, database: str) -> list[Anchor]:
    """Every anchor of this database's ledger, lowest position first."""
    found = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=database_prefix(database)):
        for obj in page.get("Contents", []):
            anchor = parse_key(obj["Key"])
            if anchor is not None:
                found.append(anchor)
    return sorted(found, key=lambda a: a.seq)


def anchor_now(db_url: str, endpoint_url: str | None) -> Anchor | None:
    from lethe.config import BUCKETS, PRIMARY_REGION
    from lethe.db import transaction
    from lethe.storage import s3_client

    with transaction(db_url) as cur:
        if ledger.head(cur) is None:  # nothing to anchor: no S3 round trip
            return None
        return write(cur, s3_client(PRIMARY_REGION, endpoint_url), BUCKETS.evidence)


def after_task(context: Any = None) -> None:
    """Task success callback of every Lethe DAG: anchor what the task appended.

    A failure is logged (class name only) and left to the next task: the audit checks the anchors there are.
    """
    from lethe.connections import primary_url, s3_endpoint_url

    try:
        anchor = anchor_now(primary_url(), s3_endpoint_url())
    except Exception as exc:
        log.warning("ledger head not anchored (%s); the next task will anchor it", type(exc).__name__)
        return
    if anchor is not None:
        log.info("ledger head anchored at position %d", anchor.seq)
