"""`lethe share`: run the sharing pipeline once outside Airflow (same code as the DAG)."""

from __future__ import annotations

import argparse
from datetime import UTC, date, datetime


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("share", help="publish aggregated usage releases to the policy's sharing recipients")
    p.add_argument("--recipient", default=None, help="only this recipient (default: every enabled one)")
    p.add_argument("--until", default=None, help="window end, YYYY-MM-DD, exclusive (default: today, UTC)")
    p.add_argument("--dry-run", action="store_true", help="build and gate; publish and spend nothing")
    p.set_defaults(handler=cmd_share)


def cmd_share(args: argparse.Namespace) -> int:
    from lethe.cli import CommandError
    from lethe.db import migrate
    from lethe.embedded import services
    from lethe.sharing import pipeline
    from lethe.sharing.budget import SharingRefused
    from lethe.sharing.config import recipients
    from lethe.storage import ensure_buckets

    try:
        until = date.fromisoformat(args.until) if args.until else datetime.now(UTC).date()
    except ValueError as exc:
        raise CommandError(f"--until {args.until!r} is not a date (YYYY-MM-DD)") from exc
    refused = 0
    with services() as (db_url, s3_url):
        migrate(db_url)
        ensure_buckets(s3_url)
        configs = recipients(only=args.recipient)
        windows = pipeline.plan(db_url, configs, until)
        if not windows:
            print("every recipient is up to date")
        for window in windows:
            (config,) = [c for c in configs if c.name == window["recipient"]]
            start, end = datetime.fromisoformat(window["start"]), datetime.fromisoformat(window["end"])
            try:
                s = pipeline.run_release(db_url, s3_url, config, start, end, dry_run=args.dry_run)
            except SharingRefused as exc:
                refused += 1
                print(f"{config.name}: {exc}")
                continue
            print(
                f"{config.name}: release {s['release_id']} {s['status']}, {window['days']} day(s), "
                f"{s['cells_published']} cells published, {s['cells_suppressed']} suppressed, "
                f"epsilon {s['epsilon_spent']:g}"
            )
        if not args.dry_run:
            pipeline.advance_watermarks(db_url, recipients())
    return 1 if refused else 0
