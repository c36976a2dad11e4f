"""Local stand-ins for the processors, spoken to over HTTP by the real clients.

- `local_ses()`: moto's server (ThreadedMotoServer) for sesv2. moto 5.2.5 has contact
  lists but not the account-level suppression list, so PutSuppressedDestination and
  GetSuppressedDestination are added to its sesv2 handler here, per account and region,
  with the request and response shapes of the SES API reference. boto3 is unchanged.
- `Provider`: an http.server in a thread implementing the documented request and response
  of Mixpanel's GDPR API v3 (create a deletion task, check its status) and Mailchimp's
  Marketing API 3.0 (delete-permanent a list member, get a member). It can fail the next
  N calls with 503, or be down (503) for every call.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

MIXPANEL_TOKEN = "project-token-1"
MIXPANEL_OAUTH = "oauth-secret-1"
MAILCHIMP_KEY = "mc-key-us21"
MAILCHIMP_LIST = "list7f3a"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_SUPPRESSED: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}


def _add_suppression_list_to_moto() -> None:
    from moto.core.exceptions import JsonRESTError
    from moto.ses.exceptions import NotFoundException
    from moto.sesv2 import urls
    from moto.sesv2.responses import SESV2Response

    def store(self: Any) -> dict[str, dict[str, Any]]:
        return _SUPPRESSED.setdefault((self.current_account, self.region), {})

    def put_suppressed_destination(self: Any) -> str:
        email = self._get_param("EmailAddress")
        reason = self._get_param("Reason")
        if reason not in ("BOUNCE", "COMPLAINT"):
            raise JsonRESTError("BadRequestException", "Reason must be BOUNCE or COMPLAINT")
        store(self)[email] = {"EmailAddress": email, "Reason": reason, "LastUpdateTime": 1764633600}
        return "{}"

    def get_suppressed_destination(self: Any) -> str:
        email = self._get_param("EmailAddress")
        if email not in store(self):
            raise NotFoundException(f"{email} is not on the suppression list")
        return json.dumps({"SuppressedDestination": store(self)[email]})

    SESV2Response.put_suppressed_destination = put_suppressed_destination  # type: ignore[attr-defined]
    SESV2Response.get_suppressed_destination = get_suppressed_destination  # type: ignore[attr-defined]
    urls.url_paths["{0}/v2/email/suppression/addresses$"] = SESV2Response.dispatch
    urls.url_paths["{0}/v2/email/suppression/addresses/(?P<EmailAddress>[^/]+)$"] = SESV2Response.dispatch


@contextlib.contextmanager
def local_ses() -> Iterator[str]:
    """An SES endpoint over HTTP (its own moto server, so the S3 fixture's state is untouched)."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # its access log would print the addresses
    _add_suppression_list_to_moto()
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        _SUPPRESSED.clear()


def ses_client(endpoint: str, region: str) -> Any:
    import boto3

    return boto3.client(
        "sesv2", region_name=region, endpoint_url=endpoint, aws_access_key_id="lethe", aws_secret_access_key="x"
    )


class Provider:
    """Mixpanel and Mailchimp on one local port; `calls` records (provider, method, path, body)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, Any]] = []
        self.fail_next = {"mixpanel": 0, "mailchimp": 0}
        self.down = {"mixpanel": False, "mailchimp": False}
        self.tasks: dict[str, dict[str, Any]] = {}  # Mixpanel deletion tasks
        self.members: dict[str, dict[str, str]] = {MAILCHIMP_LIST: {}}  # list -> subscriber_hash -> email
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", _free_port()), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Provider:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def subscribe(self, email: str) -> None:
        import hashlib

        self.members[MAILCHIMP_LIST][hashlib.md5(email.lower().encode()).hexdigest()] = email

    def finish_tasks(self) -> None:
        for task in self.tasks.values():
            task["status"] = "SUCCESS"

    def calls_to(self, provider: str) -> list[tuple[str, str, str, Any]]:
        return [c for c in self.calls if c[0] == provider]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet: paths hold (hashed) identifiers
                pass

            def _reply(self, status: int, body: Any = None) -> None:
                raw = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                if raw:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _handle(self) -> None:
                url = urlparse(self.path)
                name = "mixpanel" if url.path.startswith("/api/app/") else "mailchimp"
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                with provider.lock:
                    provider.calls.append((name, self.command, self.path, body))
                    if provider.down[name]:
                        return self._reply(503, {"status": "error", "error": "Service Unavailable"})
                    if provider.fail_next[name] > 0:
                        provider.fail_next[name] -= 1
                        return self._reply(503, {"status": "error", "error": "Service Unavailable"})
                    if name == "mixpanel":
                        return self._mixpanel(url, body)
                    return self._mailchimp(url)

            do_GET = do_POST = do_DELETE = _handle

            def _mixpanel(self, url: Any, body: Any) -> None:
                # GDPR API v3: OAuth bearer token, project token in the query string.
                if self.headers.get("Authorization") != f"Bearer {MIXPANEL_OAUTH}":
                    return self._reply(401, {"status": "error", "error": "Unauthorized"})
                if parse_qs(url.query).get("token") != [MIXPANEL_TOKEN]:
                    return self._reply(400, {"status": "error", "error": "invalid project token"})
                parts = url.path.rstrip("/").split("/")
                if self.command == "POST" and parts[-1] == "v3.0":
                    ids = (body or {}).get("distinct_ids")
                    if (
                        not isinstance(ids, list)
                        or not ids
                        or (body or {}).get("compliance_type") not in ("GDPR", "CCPA")
                    ):
                        return self._reply(400, {"status": "error", "error": "distinct_ids and compliance_type"})
                    task_id = str(uuid.uuid4())
                    provider.tasks[task_id] = {"status": "PENDING", "distinct_ids": ids}
                    return self._reply(200, {"status": "ok", "results": {"task_id": task_id}})
                if self.command == "GET" and parts[-2] == "v3.0":
                    task = provider.tasks.get(parts[-1])
                    if task is None:
                        return self._reply(404, {"status": "error", "error": "task not found"})
                    return self._reply(200, {"status": "ok", "results": dict(task)})
                return self._reply(404, {"status": "error", "error": "not found"})

            def _mailchimp(self, url: Any) -> None:
                # Marketing API 3.0: HTTP basic auth, any user name, the API key as password.
                auth = self.headers.get("Authorization") or ""
                try:
                    _, key = base64.b64decode(auth.removeprefix("Basic ")).decode().split(":", 1)
                except ValueError:
                    key = ""
                if not auth.startswith("Basic ") or key != MAILCHIMP_KEY:
                    return self._reply(401, {"title": "API Key Invalid", "status": 401})
                parts = url.path.strip("/").split("/")  # 3.0 lists {list} members {hash} [actions delete-permanent]
                if len(parts) < 5 or parts[:2] != ["3.0", "lists"] or parts[3] != "members":
                    return self._reply(404, {"title": "Resource Not Found", "status": 404})
                members = provider.members.get(parts[2])
                if members is None or parts[4] not in members:
                    return self._reply(404, {"title": "Resource Not Found", "status": 404})
                if self.command == "POST" and parts[5:] == ["actions", "delete-permanent"]:
                    del members[parts[4]]
                    return self._reply(204)
                if self.command == "GET" and len(parts) == 5:
                    return self._reply(200, {"id": parts[4], "status": "subscribed", "list_id": parts[2]})
                return self._reply(405, {"title": "Method Not Allowed", "status": 405})

        return Handler
