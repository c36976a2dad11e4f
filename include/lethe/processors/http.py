"""A generic connector for providers' deletion APIs, configured in the policy file (`http:`).

Templates (URL, string values of the JSON body) take `{id}` (the identifier, hashed as the
provider's API says), `{host}` and `{extra[NAME]}` of the processor's Airflow connection, and
`{job_id}` in the status URL. Auth is a bearer token (the connection's password) or basic
(login, password). Nothing read from the provider's error body is kept: it may quote the person.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote

from lethe.policy.model import HttpDeletion, Processor
from lethe.processors.base import Credentials, Person, ProcessorUnavailable, Receipt, register

TIMEOUT_SECONDS = 30


@register("http")
class HttpConnector:
    def __init__(self, name: str, spec: Processor, credentials: Credentials) -> None:
        assert spec.http is not None
        self.name = name
        self.api: HttpDeletion = spec.http
        self.identifier = spec.identifier
        self.hashing = spec.hash
        self.credentials = credentials

    def _fields(self, person: Person, job_id: str | None = None) -> dict[str, Any]:
        c = self.credentials
        host = c.host if "://" in c.host else f"https://{c.host}"
        fields: dict[str, Any] = {"host": host.rstrip("/"), "extra": c.extra, "id": "", "job_id": job_id or ""}
        fields["id"] = person.value(self.identifier, self.hashing)
        return fields

    def _url(self, template: str, fields: dict[str, Any]) -> str:
        escaped = {**fields, "id": quote(str(fields["id"]), safe=""), "job_id": quote(str(fields["job_id"]), safe="")}
        try:
            return template.format_map(escaped)
        except (KeyError, IndexError) as exc:
            conn = self.credentials.conn_id
            raise ValueError(f"processor {self.name}: the URL template needs {exc} in connection {conn}") from None

    def _headers(self) -> dict[str, str]:
        c = self.credentials
        headers = {"Accept": "application/json"}
        if self.api.auth == "bearer":
            headers["Authorization"] = f"Bearer {c.password or ''}"
        elif self.api.auth == "basic":
            token = base64.b64encode(f"{c.login or 'lethe'}:{c.password or ''}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        return headers

    def _call(self, method: str, url: str, body: Any = None) -> tuple[int, Any]:
        data = None
        headers = self._headers()
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT_SECONDS) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise ProcessorUnavailable(f"{self.name}: not reachable ({type(exc).__name__})") from None
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = None
        return status, payload

    def erase(self, person: Person) -> Receipt:
        fields = self._fields(person)
        body = _render(self.api.body, fields) if self.api.body is not None else None
        status, payload = self._call(self.api.method, self._url(self.api.url, fields), body)
        if status not in self.api.success_statuses:
            raise ProcessorUnavailable(f"{self.name}: HTTP {status}")
        job_id = _field(payload, self.api.job_id_field) if self.api.job_id_field else None
        if self.api.job_id_field and not job_id:
            raise ProcessorUnavailable(f"{self.name}: HTTP {status} without a job id at {self.api.job_id_field}")
        # A provider that runs the deletion as a job has accepted it; one that answers at once has done it.
        return Receipt(
            self.name,
            "accepted" if job_id else "confirmed",
            job_id=str(job_id) if job_id else None,
            detail={"http_status": status},
        )

    def status(self, person: Person, job_id: str | None = None) -> Receipt:
        check = self.api.status
        if check is None:
            return Receipt(self.name, "pending", job_id=job_id, detail={"status_check": "none at this provider"})
        fields = self._fields(person, job_id)
        status, payload = self._call(check.method, self._url(check.url, fields))
        if status in check.gone_statuses:
            return Receipt(self.name, "confirmed", job_id=job_id, detail={"http_status": status})
        if status >= 400:
            raise ProcessorUnavailable(f"{self.name}: status check HTTP {status}")
        state = _field(payload, check.field) if check.field else None
        done = state is not None and str(state) in check.done
        detail = {"http_status": status, **({"state": str(state)} if state is not None else {})}
        return Receipt(self.name, "confirmed" if done else "pending", job_id=job_id, detail=detail)


def _render(template: Any, fields: dict[str, Any]) -> Any:
    if isinstance(template, str):
        return template.format_map(fields)
    if isinstance(template, list):
        return [_render(v, fields) for v in template]
    if isinstance(template, dict):
        return {k: _render(v, fields) for k, v in template.items()}
    return template


def _field(payload: Any, path: str | None) -> Any:
    value = payload
    for part in (path or "").split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value
