"""`lethe policy check`: the file is valid (load_policy), matches the schema, and no bucket can defeat an erasure."""

from __future__ import annotations

from lethe.db import connect, migrate
from lethe.policy.lint import lint
from lethe.policy.model import Policy


def check(policy: Policy, db_url: str, s3_endpoint_url: str | None = None) -> list[str]:
    """Every located problem of the policy against the live database (and buckets, when reachable)."""
    migrate(db_url)
    conn = connect(db_url)
    try:
        with conn.cursor() as cur:
            problems = lint(policy, cur)
    finally:
        conn.close()
    try:
        from lethe.backup.locks import object_lock_violations
    except ImportError:  # backups not installed in this deployment
        return problems
    return problems + object_lock_violations(s3_endpoint_url)
