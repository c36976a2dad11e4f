"""The `lethe` command line: what an operator does outside the Airflow UI.

Commands that need the database or S3 start the embedded defaults when
LETHE_DATABASE_URL / LETHE_S3_ENDPOINT_URL are unset.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

import psycopg2

from lethe.db import ConfigurationError, DatabaseError, describe_error
from lethe.policy import PolicyError

# Feature modules add their own sub-commands: register(subparsers) in each; an absent one is skipped.
FEATURE_COMMANDS = (
    "lethe.commands.platform",
    "lethe.commands.services",
    "lethe.commands.local_airflow",
    "lethe.retention.cli",
    "lethe.erasure.cli",
    "lethe.commands.objection",
    "lethe.backup.cli",
    "lethe.sharing.cli",
    "lethe.commands.bench",
)


class CommandError(RuntimeError):
    """A command failed for a reason the operator can act on; printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lethe", description="Enforce the privacy policy over the platform's data.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in FEATURE_COMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a broken import inside the module is a bug, not an absent feature
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int | None] = args.handler
    try:
        return int(handler(args) or 0)
    except (CommandError, ConfigurationError, DatabaseError, PolicyError, FileNotFoundError) as exc:
        print(f"lethe {args.command}: {exc}", file=sys.stderr)
        return 2
    except psycopg2.Error as exc:  # a step that did not name itself: still no traceback, no row values
        print(f"lethe {args.command}: database error: {describe_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lethe {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
