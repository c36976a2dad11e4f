"""`lethe objection record`: record an objection to (or withdrawal of consent for) a purpose i) to v)."""

from __future__ import annotations

import argparse

from lethe.embedded import services


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from lethe.objection import IDENTIFIER_KINDS, KINDS
    from lethe.policy.model import CONSENT_PURPOSES

    objection = sub.add_parser("objection", help="objections and withdrawn consents (purposes i to v)")
    commands = objection.add_subparsers(dest="objection_command", required=True)
    p = commands.add_parser(
        "record", help="record an objection (or a withdrawal); the next retention_nightly applies it"
    )
    p.add_argument("--purpose", required=True, choices=CONSENT_PURPOSES, help="the purpose objected to")
    p.add_argument("--kind", choices=KINDS, default="objection", help="objection (default) or withdrawal of consent")
    p.add_argument("--identifier-kind", choices=IDENTIFIER_KINDS, default="user_id", help="how the person is named")
    p.add_argument("--identifier", required=True, help="the person's user id, email or username")
    p.set_defaults(handler=cmd_record)


def cmd_record(args: argparse.Namespace) -> int:
    from lethe.db import migrate
    from lethe.objection import submit

    with services() as (db_url, _):
        migrate(db_url)
        print(submit(db_url, args.identifier_kind, args.identifier, args.purpose, args.kind).line())
    return 0
