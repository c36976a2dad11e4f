"""Foundation commands: db migrate, seed, policy check/report, demo."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lethe.embedded import services


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    db = sub.add_parser("db", help="the primary database").add_subparsers(dest="db_command", required=True)
    p = db.add_parser("migrate", help="apply the SQL migrations and create the S3 buckets")
    p.set_defaults(handler=cmd_migrate)
    p = db.add_parser(
        "indexes",
        help="create Lethe's search indexes on the platform's tables the policy names (free text, identifiers)",
    )
    p.add_argument("--file", type=Path, help="policy file (default: LETHE_POLICY_FILE or the shipped one)")
    p.set_defaults(handler=cmd_indexes)

    p = sub.add_parser("seed", help="fill an empty database with deterministic synthetic data")
    p.add_argument("--users", type=int, default=1000, help="number of accounts (default 1000)")
    p.add_argument("--events-per-user", type=int, default=20, help="usage events per account (default 20)")
    p.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    p.add_argument("--platform-only", action="store_true", help="create the demo platform's tables, add no rows")
    p.add_argument("--database", metavar="NAME", help="another database on the same server (created when missing)")
    p.set_defaults(handler=cmd_seed)

    policy = sub.add_parser("policy", help="the policy file").add_subparsers(dest="policy_command", required=True)
    p = policy.add_parser("check", help="validate the policy file and lint it against the live schema")
    p.add_argument("--file", type=Path, help="policy file (default: LETHE_POLICY_FILE or the shipped one)")
    p.add_argument("--no-db", action="store_true", help="validate the file only, without the live schema")
    p.set_defaults(handler=cmd_policy_check)
    p = policy.add_parser("init", help="draft a policy file from the live database, every guess marked for review")
    p.add_argument("--subject", required=True, help="the table of the data subject (`table` or `schema.table`)")
    p.add_argument(
        "--schema", action="append", default=[], help="schema to read (repeatable; default: all but Lethe's)"
    )
    p.add_argument("--out", type=Path, help="write the draft here (refuses to overwrite); default: print it")
    p.set_defaults(handler=cmd_policy_init)
    p = policy.add_parser("report", help="print the traceability matrix: clause -> rule -> DAG -> test")
    p.add_argument("--file", type=Path)
    p.set_defaults(handler=cmd_policy_report)
    p = policy.add_parser(
        "mutate", help="mutation-test the policy: every mutant of the file must fail a clause test (tests/clauses)"
    )
    p.add_argument("--file", type=Path, help="policy file to mutate (default: LETHE_POLICY_FILE or the shipped one)")
    p.set_defaults(handler=cmd_policy_mutate)

    p = sub.add_parser("demo", help="migrate, seed a small dataset and run every DAG with dag.test()")
    p.add_argument("--users", type=int, default=2000, help="accounts to seed (default 2000)")
    p.set_defaults(handler=cmd_demo)


def cmd_migrate(args: argparse.Namespace) -> int:
    from lethe.db import migrate
    from lethe.storage import ensure_buckets

    with services() as (db_url, s3_url):
        applied = migrate(db_url)
        buckets = ensure_buckets(s3_url)
    print(f"migrations applied: {', '.join(applied) or 'none (up to date)'}")
    print(f"buckets ready: {', '.join(sorted(buckets))}")
    return 0


def cmd_indexes(args: argparse.Namespace) -> int:
    """Lethe's search indexes (lethe.erasure.indexes), the only objects it creates on the platform's tables."""
    import os

    from lethe.embedded import EmbeddedPostgres
    from lethe.erasure import indexes
    from lethe.policy import load_policy

    db_url = os.environ.get("LETHE_DATABASE_URL") or EmbeddedPostgres().start()  # no S3 needed
    done = indexes.ensure(db_url, load_policy(args.file))
    for index, what in done:
        on = f"{index.table} ({index.column})" if what.startswith("dropped") else f"{index.table}.{index.column}"
        print(f"search index {index.name} on {on}: {what}")
    if any(what.startswith("skipped: pg_trgm") for _, what in done):
        print("pg_trgm is not available: the erasure's mention search reads the free-text tables whole")
    return 0


def cmd_seed(args: argparse.Namespace) -> int:
    import time

    from lethe.db import migrate
    from lethe.seed import seed

    with services() as (db_url, _):
        if args.database:
            from lethe.backup.cli import _database

            db_url = _database(db_url, args.database)
        migrate(db_url)
        if args.platform_only:
            from lethe.db import transaction
            from lethe.seed import create_platform

            with transaction(db_url) as cur:
                create_platform(cur)
            print("demo platform tables ready (no rows)")
            return 0
        print(f"seeding {args.users:,} users ...", file=sys.stderr)
        started = time.perf_counter()
        counts = seed(db_url, args.users, random_seed=args.seed, events_per_user=args.events_per_user, progress=True)
    elapsed = time.perf_counter() - started
    total = sum(counts.values())
    print(f"seeded {total:,} rows in {len(counts)} tables in {elapsed:.1f} s ({total / elapsed:,.0f} rows/s)")
    return 0


def cmd_policy_check(args: argparse.Namespace) -> int:
    from lethe.policy import load_policy
    from lethe.policy.check import check, warnings

    policy = load_policy(args.file)  # PolicyError is printed, located, by the CLI
    if args.no_db:
        print(f"{policy.path}: valid ({len(policy.tables)} tables, {len(policy.rules())} retention rules)")
        return 0
    with services() as (db_url, s3_url):
        problems = check(policy, db_url, s3_url)
        for warning in warnings(policy, db_url):
            print(f"warning: {warning}", file=sys.stderr)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"lethe policy check: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(
        f"{policy.path}: valid and matches the live schema ({len(policy.tables)} tables, {len(policy.rules())} rules)"
    )
    return 0


def cmd_policy_init(args: argparse.Namespace) -> int:
    from lethe.cli import CommandError
    from lethe.db import connect
    from lethe.policy.draft import MARKER, draft

    if args.out and args.out.exists():
        raise CommandError(f"{args.out} exists: the draft never overwrites a policy file; give another --out")
    with services() as (db_url, _s3):
        conn = connect(db_url)
        conn.set_session(readonly=True)
        try:
            with conn.cursor() as cur:
                text = draft(cur, args.subject, args.schema)
        except ValueError as exc:
            raise CommandError(f"lethe policy init: {exc}") from None
        finally:
            conn.close()
    if args.out:
        args.out.write_text(text)
        print(f"{args.out}: drafted, {text.count(MARKER)} guesses marked {MARKER!r} to review", file=sys.stderr)
    else:
        print(text, end="")
    return 0


def cmd_policy_report(args: argparse.Namespace) -> int:
    from lethe.policy import load_policy
    from lethe.policy.report import render

    print(render(load_policy(args.file)))
    return 0


def cmd_policy_mutate(args: argparse.Namespace) -> int:
    """Run the mutation harness (a pytest module of the clause tests) and pass its verdict on."""
    import os
    import subprocess

    from lethe.cli import CommandError
    from lethe.config import PROJECT_DIR
    from lethe.policy import load_policy

    harness = PROJECT_DIR / "tests" / "clauses" / "test_mutation.py"
    if not harness.exists():
        raise CommandError(f"{harness} not found: policy mutation testing needs a source checkout")
    policy = load_policy(args.file)  # a broken file is reported, located, before anything runs
    env = {**os.environ, "LETHE_POLICY_FILE": str(Path(policy.path or "").resolve())}
    command = [sys.executable, "-m", "pytest", str(harness), "-q", "-p", "no:cacheprovider"]
    return subprocess.run(command, cwd=PROJECT_DIR, env=env, check=False).returncode


def cmd_demo(args: argparse.Namespace) -> int:
    from lethe.demo import run_demo

    return run_demo(users=args.users)
