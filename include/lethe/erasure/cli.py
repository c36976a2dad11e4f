"""`lethe erasure submit`: queue an erasure request and, where Airflow's API is reachable, trigger it.

The identifier goes into erasure_requests only; the DAG run is triggered with
the request id, so it never reaches Airflow's metadata. Output names the
request id and counts, never the identifier.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request
from typing import Any

DAG_ID = "subject_erasure"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    erasure = sub.add_parser("erasure", help="erasure requests (removal on request)")
    cmds = erasure.add_subparsers(dest="erasure_command", required=True)
    p = cmds.add_parser("submit", help="register a request to erase one person; a dry run unless --execute")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--email")
    who.add_argument("--phone")
    who.add_argument("--username")
    who.add_argument("--user-id", dest="user_id")
    p.add_argument(
        "--reference", help="your ticket or case number (shown on the certificate; no email, phone or @handle)"
    )
    p.add_argument("--reason", help="why the person asked (no email, phone or @handle)")
    p.add_argument("--execute", action="store_true", help="erase for real (default: dry run, changes nothing)")
    p.add_argument(
        "--require-approval",
        action="store_true",
        help="no run erases it before someone other than you approves it in Airflow (stored on the request)",
    )
    p.add_argument(
        "--airflow-url",
        default=os.environ.get("AIRFLOW_API_URL"),
        help="Airflow API base URL, e.g. http://localhost:8080 (default: AIRFLOW_API_URL); "
        "credentials from AIRFLOW_API_USERNAME / AIRFLOW_API_PASSWORD, or AIRFLOW_API_TOKEN",
    )
    p.set_defaults(handler=cmd_submit)


def _post(url: str, body: dict[str, Any], token: str | None = None) -> dict[str, Any]:
    if not url.startswith(("http://", "https://")):
        raise ValueError("the Airflow API URL must start with http:// or https://")
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=15) as response:
        return dict(json.loads(response.read() or b"{}"))


def trigger(base_url: str, request_id: str, dry_run: bool) -> str:
    """Trigger subject_erasure for one request through Airflow 3's REST API; return the dag_run_id."""
    base = base_url.rstrip("/")
    token = os.environ.get("AIRFLOW_API_TOKEN")
    if not token:
        user, password = os.environ.get("AIRFLOW_API_USERNAME"), os.environ.get("AIRFLOW_API_PASSWORD")
        if not user or not password:
            from lethe.cli import CommandError

            raise CommandError("set AIRFLOW_API_TOKEN, or AIRFLOW_API_USERNAME and AIRFLOW_API_PASSWORD")
        token = _post(f"{base}/auth/token", {"username": user, "password": password})["access_token"]
    run = _post(
        f"{base}/api/v2/dags/{DAG_ID}/dagRuns",
        {"logical_date": None, "conf": {"request_id": request_id, "dry_run": dry_run}},
        token,
    )
    return str(run.get("dag_run_id", "?"))


def requester() -> str:
    """Who asks: the Airflow user the CLI triggers as (AIRFLOW_API_USERNAME), else the operating system user.

    That user may not approve the request."""
    import getpass

    return os.environ.get("AIRFLOW_API_USERNAME") or getpass.getuser()


def cmd_submit(args: argparse.Namespace) -> int:
    from lethe.cli import CommandError
    from lethe.db import migrate, transaction
    from lethe.embedded import services
    from lethe.erasure import request

    kind, value = next(
        (k, getattr(args, k)) for k in ("email", "phone", "username", "user_id") if getattr(args, k) is not None
    )
    try:
        value = request.validate_identifier(kind, value)
    except request.InvalidIdentifier as exc:
        raise CommandError(f"--{kind.replace('_', '-')}: {exc}") from None
    try:  # reference and reason end up on the compliance page and the certificate: no identifier in them
        reference = request.validate_note("reference", args.reference, 200)
        reason = request.validate_note("reason", args.reason, 500)
    except request.InvalidNote as exc:
        raise CommandError(str(exc)) from None
    dry_run = not args.execute
    with services() as (db_url, _):
        migrate(db_url)
        with transaction(db_url) as cur:
            request_id, created = request.register(
                cur,
                kind,
                value,
                reference=reference,
                reason=reason,
                dry_run=dry_run,
                require_approval=args.require_approval,
                requested_by=requester(),
            )
            cur.execute("SELECT due_at::date FROM erasure_requests WHERE request_id = %s", (request_id,))
            due = cur.fetchone()[0]  # type: ignore[index]
    mode = "dry run (plan only)" if dry_run else "erasure"
    print(f"request {request_id} {'registered' if created else 'already open'}: {mode}, due {due}")
    if not args.airflow_url:
        print(
            "no Airflow API configured (AIRFLOW_API_URL): the request is queued for the nightly subject_erasure batch"
        )
        return 0
    try:
        run_id = trigger(args.airflow_url, request_id, dry_run)
    except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
        reason = getattr(exc, "code", None) or type(exc).__name__
        print(f"Airflow API not reachable ({reason}): the request is queued for the nightly subject_erasure batch")
        return 0
    print(
        f"triggered {DAG_ID} run {run_id}; "
        f"the certificate will be certificates/{request_id}.json in the evidence bucket"
    )
    return 0
