"""`lethe up` / `lethe down`: a real local Airflow with Lethe's DAGs and the Privacy compliance page."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "up",
        help="start a real local Airflow (api-server, scheduler, dag-processor, triggerer) with Lethe's DAGs and UI",
    )
    p.add_argument("--port", type=int, default=8080, help="the UI's port (default 8080; a free one if it is taken)")
    p.add_argument("--users", type=int, default=2000, help="people in the demo data seeded on first start (2000)")
    seeding = p.add_mutually_exclusive_group()
    seeding.add_argument(
        "--seed",
        action="store_true",
        default=None,
        help="seed the demo platform into LETHE_DATABASE_URL's database too when it has no accounts",
    )
    seeding.add_argument("--no-seed", dest="seed", action="store_false", help="never seed demo data")
    p.add_argument(
        "--triggered-only",
        action="store_true",
        help="run only triggered DAG runs, none on a schedule (the end-to-end tests start it this way)",
    )
    p.add_argument(
        "--metadata-database",
        default="airflow",
        metavar="NAME",
        help="Airflow's metadata database on the primary's server (default airflow; kept by `lethe down`)",
    )
    p.set_defaults(handler=cmd_up)

    p = sub.add_parser("down", help="stop the local Airflow and the embedded services; no process is left")
    p.add_argument("--keep-services", action="store_true", help="leave the embedded PostgreSQL and S3 server running")
    p.set_defaults(handler=cmd_down)


def cmd_up(args: argparse.Namespace) -> int:
    from lethe.cli import CommandError
    from lethe.ops.local import up
    from lethe.ops.stack import StackError

    if args.users < 1:
        raise CommandError("--users must be at least 1")
    try:
        running = up(
            port=args.port,
            users=args.users,
            seed=args.seed,
            triggered_only=args.triggered_only,
            metadata_database=args.metadata_database,
            progress=lambda line: print(f"lethe up: {line}", file=sys.stderr, flush=True),
        )
    except StackError as exc:
        raise CommandError(f"Airflow did not come up: {exc}") from None
    print(f"Airflow {'is already running' if running.already_running else 'is up'}: {running.url}")
    print(f"  user      {running.user}")
    print(f"  password  {running.password}  (generated on first start, kept in {running.password_file})")
    print(f"  approver  {running.approver} / {running.approver_password}  (a second person approves erasures)")
    print(f"  logs      {running.logs}")
    print(f"  page      {running.url}/lethe-compliance/  (Browse > Privacy compliance)")
    if running.seeded_users:
        print(f"  seeded    the demo platform with {running.seeded_users:,} people")
    print("  stop it with `lethe down` (or `make down`)")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from lethe.ops.local import down

    ended, services = down(keep_services=args.keep_services)
    print(f"Airflow: {f'stopped ({len(ended)} processes)' if ended else 'was not running'}")
    for name in services:
        print(f"{name}: stopped (its data stays under $LETHE_HOME)")
    return 0
