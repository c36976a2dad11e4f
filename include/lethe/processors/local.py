"""Local stand-ins for the policy's processors, for `lethe demo`: one HTTP server in a thread.

It answers the calls Lethe's connectors make, in the request and response shapes of each
provider's public API, so a demo erasure reaches every processor and its certificate lists a
real receipt for each (instead of `skipped`, no connection):

- Amazon SES API v2 (REST-JSON; the region is read from the request's SigV4 credential scope):
  ListContactLists, GetContact, DeleteContact, PutSuppressedDestination, GetSuppressedDestination.
- Mixpanel GDPR API v3: create a deletion task (bearer token, project token in the query), get its
  status; a task reports SUCCESS once it has been created (the demo has nothing to wait for).
- Mailchimp Marketing API 3.0: delete-permanent a list member (basic auth), get a member.

State is in memory and dies with the server. It holds what the connectors send: an email on the
suppression list, a hashed address or a user id. Nothing is logged. Not for production: the
deployment's connections point at the providers themselves (docs/processors.md).
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

MIXPANEL_OAUTH = "demo-mixpanel-oauth-token"
MIXPANEL_TOKEN = "demo-project-token"
MAILCHIMP_KEY = "demo-mailchimp-key"
MAILCHIMP_LIST = "demo-list"
CONTACT_LIST = "reskill-updates"
_REGION = re.compile(r"Credential=[^/]+/\d{8}/([a-z0-9-]+)/")


class LocalProcessors:
    """SES (every region), Mixpanel and Mailchimp on one 127.0.0.1 port."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.contacts: dict[tuple[str, str], set[str]] = {}  # (region, list) -> addresses
        self.suppressed: dict[str, dict[str, dict[str, Any]]] = {}  # region -> address -> entry
        self.tasks: dict[str, dict[str, Any]] = {}  # Mixpanel deletion tasks
        self.members: dict[str, set[str]] = {MAILCHIMP_LIST: set()}  # Mailchimp list -> subscriber hashes
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.thread = threading.Thread(target=self.server.serve_forever, name="lethe-local-processors", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> LocalProcessors:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def subscribe(self, email: str, regions: list[str]) -> None:
        """Put an address where the platform would have put it: an SES contact list per region, the Mailchimp list."""
        import hashlib

        with self.lock:
            for region in regions:
                self.contacts.setdefault((region, CONTACT_LIST), set()).add(email)
            self.members[MAILCHIMP_LIST].add(hashlib.md5(email.lower().encode(), usedforsecurity=False).hexdigest())

    def connections(self) -> dict[str, dict[str, Any]]:
        """The Airflow connections (as AIRFLOW_CONN_* JSON) of the policy's processors, pointing here."""
        return {
            "lethe_ses": {
                "conn_type": "aws",
                "login": "lethe-demo",
                "password": "x",
                "extra": {"endpoint_url": self.url},
            },
            "lethe_mixpanel": {
                "conn_type": "http",
                "host": self.url,
                "password": MIXPANEL_OAUTH,
                "extra": {"project_token": MIXPANEL_TOKEN},
            },
            "lethe_mailchimp": {
                "conn_type": "http",
                "host": self.url,
                "login": "lethe",
                "password": MAILCHIMP_KEY,
                "extra": {"list_id": MAILCHIMP_LIST},
            },
        }


@contextlib.contextmanager
def local_processors() -> Iterator[LocalProcessors]:
    with LocalProcessors() as server:
        yield server


def _handler(state: LocalProcessors) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # paths hold addresses or their hashes
            pass

        def _reply(self, status: int, body: Any = None, error_type: str | None = None) -> None:
            raw = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            if raw:
                self.send_header("Content-Type", "application/json")
            if error_type:
                self.send_header("x-amzn-ErrorType", error_type)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def _handle(self) -> None:
            url = urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            with state.lock:
                if url.path.startswith("/v2/email/"):
                    return self._ses(url.path, body)
                if url.path.startswith("/api/app/data-deletions/"):
                    return self._mixpanel(url, body)
                if url.path.startswith("/3.0/"):
                    return self._mailchimp(url.path)
                return self._reply(404, {"error": "not found"})

        do_GET = do_POST = do_PUT = do_DELETE = _handle

        def _ses(self, path: str, body: Any) -> None:
            found = _REGION.search(self.headers.get("Authorization") or "")
            if not found:
                return self._reply(403, {"message": "missing signature"}, "UnrecognizedClientException")
            region = found.group(1)
            parts = [unquote(p) for p in path.strip("/").split("/")][2:]  # after v2/email
            if parts == ["contact-lists"] and self.command == "GET":
                names = sorted(name for (r, name) in state.contacts if r == region)
                return self._reply(200, {"ContactLists": [{"ContactListName": n} for n in names]})
            if len(parts) == 4 and parts[0] == "contact-lists" and parts[2] == "contacts":
                members = state.contacts.get((region, parts[1]))
                if members is None or parts[3] not in members:
                    return self._reply(404, {"message": "contact not found"}, "NotFoundException")
                if self.command == "DELETE":
                    members.discard(parts[3])
                    return self._reply(200, {})
                return self._reply(200, {"ContactListName": parts[1], "EmailAddress": parts[3]})
            if parts == ["suppression", "addresses"] and self.command == "PUT":
                email, reason = (body or {}).get("EmailAddress"), (body or {}).get("Reason")
                if not email or reason not in ("BOUNCE", "COMPLAINT"):
                    return self._reply(400, {"message": "EmailAddress and Reason"}, "BadRequestException")
                state.suppressed.setdefault(region, {})[email] = {"EmailAddress": email, "Reason": reason}
                return self._reply(200, {})
            if len(parts) == 3 and parts[:2] == ["suppression", "addresses"] and self.command == "GET":
                entry = state.suppressed.get(region, {}).get(parts[2])
                if entry is None:
                    return self._reply(404, {"message": "not suppressed"}, "NotFoundException")
                return self._reply(200, {"SuppressedDestination": entry})
            return self._reply(404, {"message": "unknown operation"}, "NotFoundException")

        def _mixpanel(self, url: Any, body: Any) -> None:
            if self.headers.get("Authorization") != f"Bearer {MIXPANEL_OAUTH}":
                return self._reply(401, {"status": "error", "error": "Unauthorized"})
            if parse_qs(url.query).get("token") != [MIXPANEL_TOKEN]:
                return self._reply(400, {"status": "error", "error": "invalid project token"})
            parts = url.path.rstrip("/").split("/")
            if self.command == "POST" and parts[-1] == "v3.0":
                ids = (body or {}).get("distinct_ids")
                if not isinstance(ids, list) or not ids or (body or {}).get("compliance_type") not in ("GDPR", "CCPA"):
                    return self._reply(400, {"status": "error", "error": "distinct_ids and compliance_type"})
                task_id = str(uuid.uuid4())
                state.tasks[task_id] = {"status": "PENDING"}
                return self._reply(200, {"status": "ok", "results": {"task_id": task_id}})
            if self.command == "GET" and parts[-2] == "v3.0" and parts[-1] in state.tasks:
                state.tasks[parts[-1]]["status"] = "SUCCESS"
                return self._reply(200, {"status": "ok", "results": dict(state.tasks[parts[-1]])})
            return self._reply(404, {"status": "error", "error": "not found"})

        def _mailchimp(self, path: str) -> None:
            auth = self.headers.get("Authorization") or ""
            try:
                _, key = base64.b64decode(auth.removeprefix("Basic ")).decode().split(":", 1)
            except ValueError:
                key = ""
            if not auth.startswith("Basic ") or key != MAILCHIMP_KEY:
                return self._reply(401, {"title": "API Key Invalid", "status": 401})
            parts = path.strip("/").split("/")  # 3.0 lists {list} members {hash} [actions delete-permanent]
            members = state.members.get(parts[2]) if len(parts) >= 5 and parts[3] == "members" else None
            if members is None or parts[4] not in members:
                return self._reply(404, {"title": "Resource Not Found", "status": 404})
            if self.command == "POST" and parts[5:] == ["actions", "delete-permanent"]:
                members.discard(parts[4])
                return self._reply(204)
            return self._reply(200, {"id": parts[4], "status": "subscribed", "list_id": parts[2]})

    return Handler
