"""`lethe services status|stop`: the embedded PostgreSQL and S3 server under $LETHE_HOME."""

from __future__ import annotations

import argparse

from lethe.embedded import EmbeddedPostgres, EmbeddedS3


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    services = sub.add_parser(
        "services",
        help="the embedded PostgreSQL and S3 server (started on demand, kept running between commands)",
    ).add_subparsers(dest="services_command", required=True)
    services.add_parser("status", help="show whether each embedded server runs, where, and its data").set_defaults(
        handler=cmd_status
    )
    services.add_parser("stop", help="stop both embedded servers (their data stays under $LETHE_HOME)").set_defaults(
        handler=cmd_stop
    )


def _servers() -> list[tuple[str, EmbeddedPostgres | EmbeddedS3]]:
    return [("postgresql", EmbeddedPostgres()), ("s3", EmbeddedS3())]


def cmd_status(args: argparse.Namespace) -> int:
    for name, server in _servers():
        if server.running():
            print(f"{name:<10} running  pid {server.pid}  {server.url}  data {server.data_dir}")
        else:
            print(f"{name:<10} stopped  data {server.data_dir}")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    for name, server in _servers():
        was_running = server.running()
        server.stop()
        print(f"{name:<10} {'stopped' if was_running else 'was not running'}")
    return 0
