"""`lethe purge [--dry-run] [--rule NAME]`: run the retention rules now, outside Airflow."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from lethe.embedded import services


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("purge", help="delete and anonymise rows past their retention (as retention_nightly does)")
    p.add_argument("--dry-run", action="store_true", help="print the plan with counts per rule; change nothing")
    p.add_argument("--rule", action="append", metavar="NAME", help="only this retention rule (repeatable)")
    p.add_argument("--now", type=_timestamp, help="the moment retention is computed for (default: now, UTC)")
    p.add_argument("--batch-size", type=int, default=10_000, help="keys per batch transaction (default 10000)")
    p.set_defaults(handler=cmd_purge)


def _timestamp(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--now {value!r} is not an ISO-8601 timestamp (e.g. 2026-11-29T01:00Z)"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def cmd_purge(args: argparse.Namespace) -> int:
    from lethe.cli import CommandError
    from lethe.db import migrate, transaction
    from lethe.policy import load_policy
    from lethe.policy.check import schema_problems
    from lethe.retention.checks import postconditions
    from lethe.retention.execute import execute_rule
    from lethe.retention.plan import MAX_STAGES, build_plan

    if args.batch_size < 1:
        raise CommandError(f"--batch-size must be at least 1, not {args.batch_size}")
    policy = load_policy()
    with services() as (db_url, _):
        migrate(db_url)
        problems = schema_problems(policy, db_url)
        if problems:
            raise CommandError("the policy does not match the live schema; nothing purged:\n" + "\n".join(problems))
        with transaction(db_url) as cur:
            plan = build_plan(cur, args.now or datetime.now(UTC), policy=policy, rules=args.rule, dry_run=args.dry_run)
        print("\n".join(plan.lines()))
        for k in range(MAX_STAGES):
            for rule in plan.stage(k):
                result = execute_rule(db_url, plan, rule, batch_size=args.batch_size, policy=policy)
                if not plan.dry_run:
                    print(f"{rule}: {result.rows} rows {'anonymised' if result.action == 'anonymise' else 'deleted'}")
        if plan.dry_run:
            print("dry run: nothing changed; the plan is recorded in the ledger")
            return 0
        failed = [c for c in postconditions(db_url, plan) if not c.success]
    for check in failed:
        print(f"post-condition {check.suite} failed: {'; '.join(check.failures())}")
    return 1 if failed else 0
