"""`lethe policy check`: the file is valid (load_policy), matches the schema, and no bucket can defeat an erasure.

Read-only: the check runs in a read-only transaction and never migrates or creates anything.
"""

from __future__ import annotations

from typing import Any

from lethe.db import connect
from lethe.policy.lint import lint, trigger_warnings, unnamed_schema_warnings
from lethe.policy.model import Policy, PolicyError, load_policy


def schema_problems(policy: Policy, db_url: str) -> list[str]:
    """Every located problem of the policy against the live database, read in a read-only transaction.

    REPEATABLE READ: the lint's queries see one snapshot of the catalog. Under READ COMMITTED a partition that
    retention detached (`<name>__expired`) and dropped between two of them looked like an uncovered table, and
    the pre_execute check failed a task running beside the purge.
    """
    conn = connect(db_url)
    conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
    try:
        with conn.cursor() as cur:
            return lint(policy, cur)
    finally:
        conn.close()


def warnings(policy: Policy, db_url: str) -> list[str]:
    """What may defeat an erasure without being wrong yet (triggers that copy rows, schemas the policy does not
    name), read-only."""
    conn = connect(db_url)
    conn.set_session(readonly=True)
    try:
        with conn.cursor() as cur:
            return unnamed_schema_warnings(policy, cur) + trigger_warnings(policy, cur)
    finally:
        conn.close()


def check(policy: Policy, db_url: str, s3_endpoint_url: str | None = None) -> list[str]:
    """Every located problem of the policy against the live database (and buckets, when reachable)."""
    problems = schema_problems(policy, db_url)
    try:
        from lethe.backup.locks import object_lock_violations
    except ImportError:  # backups not installed in this deployment
        return problems
    return problems + object_lock_violations(s3_endpoint_url)


def check_before_acting(context: Any = None) -> None:
    """pre_execute of every Lethe task: a policy that cannot be applied fails the task at once, without retries.

    A broken policy file or one that no longer matches the schema is a configuration error:
    retrying cannot fix it, and acting on it could delete what the policy meant to keep.
    """
    from airflow.sdk.exceptions import AirflowFailException

    from lethe.connections import primary_url

    try:
        policy = load_policy()
    except PolicyError as exc:
        raise AirflowFailException(f"the policy file cannot be applied:\n{exc}") from None
    problems = schema_problems(policy, primary_url())
    if problems:
        raise AirflowFailException(
            f"the policy does not match the live schema ({len(problems)} problem(s)); run `lethe policy check`:\n"
            + "\n".join(problems)
        )
