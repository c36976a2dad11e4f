"""The "Privacy compliance" page: an Airflow 3 plugin serving a FastAPI app under /lethe-compliance.

Airflow does not authenticate plugin apps, so every route here validates the
caller's Airflow JWT itself (the `_token` cookie the UI sets at login, or an
`Authorization: Bearer` header) with Airflow's own auth manager, and then asks
the auth manager whether that user may read the compliance_audit DAG's runs.
The data comes from lethe.audit.dashboard; this module only authenticates and renders.

It reads only, apart from the "Erase a person" form: allowed to users whom Airflow lets trigger
subject_erasure, it writes the request (lethe.erasure.request.register) and triggers the DAG with
the request id alone, so the run's conf, the audit log and the event log never hold the identifier.
Certificates are served from the evidence bucket through the page, behind the same login.
"""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, Form, HTTPException, Query, Request, status
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

URL_PREFIX = "/lethe-compliance"
TEMPLATES = Path(__file__).resolve().parent / "templates"
AUDIT_DAG_ID = "compliance_audit"
ERASURE_DAG_ID = "subject_erasure"
UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
RUN_ID_PATTERN = r"^[A-Za-z0-9_.:+-]{1,250}$"
ICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="none" stroke="currentColor" '
    'stroke-width="2" stroke-linecap="round" stroke-linejoin="round"><path d="M12 22s8-4 8-10V5l-8-3-8 3v7c0 '
    '6 8 10 8 10z"/><path d="m9 12 2 2 4-4"/></svg>'
)


class NotLoggedIn(Exception):
    """No Airflow token came with the request, or it expired."""


class NotAllowed(Exception):
    """The user may not read compliance_audit runs."""


class NotAllowedToErase(Exception):
    """The user may read the page but not trigger subject_erasure."""


def _token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN

    return request.cookies.get(COOKIE_NAME_JWT_TOKEN)


async def require_user(request: Request) -> Any:
    """The logged-in Airflow user allowed to read compliance_audit runs.

    No token, or an expired or invalid one: the page redirects to Airflow's login (the API answers 401). A user
    without that permission gets a plain "not allowed" page (the API: 403 JSON).
    """
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
    from airflow.api_fastapi.core_api.security import resolve_user_from_token
    from airflow.models.dag import DagModel

    token = _token(request)
    if not token:
        raise NotLoggedIn
    try:
        user = await resolve_user_from_token(token)  # 401 expired, 403 invalid or revoked
    except HTTPException:  # expired, forged or revoked: a fresh login is the way on
        raise NotLoggedIn from None
    # In multi-team mode the auth manager decides by the DAG's team, as Airflow's own routes do.
    details = DagDetails(id=AUDIT_DAG_ID, team_name=DagModel.get_team_name(AUDIT_DAG_ID))
    if not get_auth_manager().is_authorized_dag(
        method="GET", access_entity=DagAccessEntity.RUN, details=details, user=user
    ):
        raise NotAllowed
    return user


CurrentUser = Annotated[Any, Depends(require_user)]


def _wants_json(request: Request) -> bool:
    path = request.url.path.rstrip("/")
    return path.endswith("/api/summary") or path.endswith(".json")


def _dag_details(dag_id: str) -> Any:
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails
    from airflow.models.dag import DagModel

    return DagDetails(id=dag_id, team_name=DagModel.get_team_name(dag_id))


def may_erase(user: CurrentUser) -> bool:
    """Whether Airflow lets this user trigger subject_erasure (what its own trigger endpoint asks)."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity

    return bool(
        get_auth_manager().is_authorized_dag(
            method="POST", access_entity=DagAccessEntity.RUN, details=_dag_details(ERASURE_DAG_ID), user=user
        )
    )


CanErase = Annotated[bool, Depends(may_erase)]


def form_token(request: Request) -> str:
    """The erase form's anti-forgery token: derived from the caller's own session token, which another
    site cannot read, so a cross-site POST that rides on the cookie cannot carry it."""
    return hashlib.sha256(f"lethe-erase-form:{_token(request) or ''}".encode()).hexdigest()[:40]


# Read-only filters of the request list: one state, or open requests due within N days.
StateFilter = Annotated[str | None, Query(alias="state", pattern=r"^[a-z_]{1,40}$")]
DueFilter = Annotated[int | None, Query(alias="due_within", ge=0, le=366)]
RequestId = Annotated[str, PathParam(pattern=UUID_PATTERN)]


def database_url() -> str:
    """LETHE_DATABASE_URL, else the lethe_primary Airflow connection (as the api-server sees it)."""
    url = os.environ.get("LETHE_DATABASE_URL")
    if url:
        return url
    from airflow.models.connection import Connection

    uri = Connection.get_connection_from_secrets("lethe_primary").get_uri()
    return str(uri).replace("postgres://", "postgresql://", 1)


def metadata_url() -> str | None:
    """Airflow's metadata database as the api-server reaches it (for what it still holds of erasure runs)."""
    from airflow.configuration import conf

    return conf.get("database", "sql_alchemy_conn", fallback=None) or None


def _s3() -> Any:
    """The evidence bucket's client: LETHE_S3_ENDPOINT_URL, else the lethe_aws connection's endpoint_url."""
    from lethe.config import PRIMARY_REGION
    from lethe.storage import s3_client

    endpoint = os.environ.get("LETHE_S3_ENDPOINT_URL")
    if not endpoint:
        from airflow.models.connection import Connection

        try:
            conn = Connection.get_connection_from_secrets("lethe_aws")
            endpoint = (conn.extra_dejson or {}).get("endpoint_url")
        except Exception:  # not defined: boto3's default chain and AWS endpoints
            endpoint = None
    return s3_client(PRIMARY_REGION, endpoint or None)


def _base_url() -> str:
    from airflow.configuration import conf

    base = conf.get("api", "base_url", fallback="") or ""
    from urllib.parse import urlsplit

    return urlsplit(base).path.rstrip("/") if base else ""


def _ts(value: datetime | str | None) -> str:
    """A time in UTC, saying so; ISO strings (ledger payloads) too."""
    if not value:
        return "never"
    if isinstance(value, str):
        try:
            return _ts(datetime.fromisoformat(value))
        except ValueError:
            return value
    if value.tzinfo is None:  # no zone given: Lethe keeps its clocks in UTC
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _env() -> Any:
    import jinja2
    from lethe.audit import svg

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)
    env.filters["ts"] = _ts
    env.filters["hours"] = lambda v: "-" if v is None else (f"{v / 24:.1f} d" if v >= 48 else f"{v:.1f} h")
    env.globals["svg"] = svg
    return env


def _render(page: Any, user: Any, **extra: Any) -> str:
    from lethe.audit.dashboard import STATES
    from lethe.erasure.form import IDENTIFIER_KINDS

    return (
        _env()
        .get_template("compliance.html")
        .render(page=page, user=user.get_name(), states=STATES, identifier_kinds=IDENTIFIER_KINDS, **extra)
    )


def _gather(state: str | None = None, due_within: int | None = None) -> Any:
    from lethe.audit.dashboard import gather

    return gather(
        database_url(),
        _base_url(),
        status=state,
        due_within_days=due_within,
        certificates_url=f"{_base_url()}{URL_PREFIX}/certificates",
        metadata_url=metadata_url(),
    )


def trigger_erasure(request_id: str, user: Any) -> str:
    """Trigger subject_erasure for one request, with its id as the only conf, and record who did it in
    Airflow's audit log (the request id only); return the run id."""
    import json

    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.models.log import Log
    from airflow.utils.session import create_session
    from airflow.utils.types import DagRunTriggeredByType

    run = trigger_dag(
        ERASURE_DAG_ID,
        triggered_by=DagRunTriggeredByType.UI,
        triggering_user_name=user.get_name(),
        conf={"request_id": request_id},
    )
    if run is None:
        raise RuntimeError("subject_erasure was not triggered")
    with create_session() as session:
        session.add(
            Log(
                event="lethe_erase_form",
                owner=user.get_name(),
                extra=json.dumps({"request_id": request_id}),
                dag_id=ERASURE_DAG_ID,
                run_id=run.run_id,
            )
        )
    return str(run.run_id)


def create_app() -> FastAPI:
    app = FastAPI(title="Lethe privacy compliance", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(NotLoggedIn)
    async def _not_logged_in(request: Request, exc: NotLoggedIn) -> Response:
        if _wants_json(request):
            return JSONResponse({"detail": "Not authenticated"}, status_code=status.HTTP_401_UNAUTHORIZED)
        from airflow.api_fastapi.app import get_auth_manager

        return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)), status_code=303)

    @app.exception_handler(NotAllowed)
    async def _not_allowed(request: Request, exc: NotAllowed) -> Response:
        detail = "not allowed to read compliance_audit runs"
        if _wants_json(request):
            return JSONResponse({"detail": detail}, status_code=status.HTTP_403_FORBIDDEN)
        return HTMLResponse(
            "<!doctype html><title>Not allowed</title><main style='font-family:sans-serif;margin:2rem'>"
            "<h1>Not allowed</h1><p>Your Airflow user may not read the runs of the compliance_audit DAG, "
            "so this page cannot show you Lethe's compliance status. Ask an Airflow admin for that permission."
            "</p></main>",
            status_code=status.HTTP_403_FORBIDDEN,
        )

    @app.get("/icon.svg")
    def icon() -> Response:
        # The nav icon only: no data, so no login needed.
        return Response(ICON, media_type="image/svg+xml")

    @app.exception_handler(NotAllowedToErase)
    async def _not_allowed_to_erase(request: Request, exc: NotAllowedToErase) -> Response:
        return HTMLResponse(
            "<!doctype html><title>Not allowed</title><main style='font-family:sans-serif;margin:2rem'>"
            "<h1>Not allowed</h1><p>Your Airflow user may not trigger the subject_erasure DAG, so it cannot "
            "submit an erasure request. Ask an Airflow admin for that permission.</p></main>",
            status_code=status.HTTP_403_FORBIDDEN,
        )

    @app.get("/", response_class=HTMLResponse)
    def page(
        request: Request,
        user: CurrentUser,
        can_erase: CanErase,
        state: StateFilter = None,
        due_within: DueFilter = None,
        erase_request: Annotated[str | None, Query(pattern=UUID_PATTERN)] = None,
        erase_run: Annotated[str | None, Query(pattern=RUN_ID_PATTERN)] = None,
    ) -> HTMLResponse:
        submitted = {"request_id": erase_request, "run_id": erase_run} if erase_request else None
        if submitted and erase_run:
            from lethe.audit.dashboard import dag_run_url

            submitted["run_url"] = dag_run_url(ERASURE_DAG_ID, erase_run, _base_url())
        html = _render(
            _gather(state, due_within), user, can_erase=can_erase, csrf=form_token(request), submitted=submitted
        )
        return HTMLResponse(html)

    @app.get("/api/summary")
    def summary(user: CurrentUser, state: StateFilter = None, due_within: DueFilter = None) -> JSONResponse:
        from fastapi.encoders import jsonable_encoder

        return JSONResponse(jsonable_encoder(_gather(state, due_within).as_dict()))

    def _certificate(request_id: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError
        from lethe.erasure import certificate

        try:
            return certificate.read(_s3(), request_id)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise

    @app.get("/certificates/{request_id}.json")
    def certificate_json(user: CurrentUser, request_id: RequestId) -> JSONResponse:
        cert = _certificate(request_id)
        if cert is None:
            return JSONResponse({"detail": "no certificate for this request yet"}, status_code=404)
        return JSONResponse(cert)

    @app.get("/certificates/{request_id}", response_class=HTMLResponse)
    def certificate_page(user: CurrentUser, request_id: RequestId) -> HTMLResponse:
        from lethe.erasure import certificate

        cert = _certificate(request_id)
        body = certificate.render_markdown(cert) if cert is not None else None
        html = _env().get_template("certificate.html").render(request_id=request_id, markdown=body)
        return HTMLResponse(html, status_code=200 if cert is not None else 404)

    @app.post("/erase", response_class=HTMLResponse)
    def erase(
        request: Request,
        user: CurrentUser,
        can_erase: CanErase,
        identifier_kind: Annotated[str, Form()],
        identifier: Annotated[str, Form()],
        csrf: Annotated[str, Form()],
        reference: Annotated[str | None, Form()] = None,
        reason: Annotated[str | None, Form()] = None,
        execute: Annotated[bool, Form()] = False,  # unticked (absent): a dry run, as `lethe erasure submit`
    ) -> Response:
        from lethe.db import transaction
        from lethe.erasure import request as requests

        if not can_erase:
            raise NotAllowedToErase
        if csrf != form_token(request):
            return HTMLResponse("The form expired: reload the page and submit again.", status_code=400)
        try:  # messages name the field and the rule, never the text given
            value = requests.validate_identifier(identifier_kind, identifier)
            ref = requests.validate_note("reference", reference, 200)
            why = requests.validate_note("reason", reason, 500)
            with transaction(database_url()) as cur:
                request_id, _ = requests.register(
                    cur,
                    identifier_kind,
                    value,
                    reference=ref,
                    reason=why,
                    dry_run=not execute,
                    requested_by=user.get_name(),  # who asked may not approve it (lethe.erasure.approval)
                )
        except (requests.InvalidIdentifier, requests.InvalidNote) as exc:
            html = _render(
                _gather(),
                user,
                can_erase=True,
                csrf=form_token(request),
                form_error=str(exc),
                form_kind=identifier_kind,
                form_execute=execute,
            )
            return HTMLResponse(html, status_code=status.HTTP_400_BAD_REQUEST)
        run_id = trigger_erasure(request_id, user)
        from urllib.parse import urlencode

        query = urlencode({"erase_request": request_id, "erase_run": run_id})
        return RedirectResponse(f"{_base_url()}{URL_PREFIX}/?{query}#erase", status_code=status.HTTP_303_SEE_OTHER)

    @app.get("/data-docs/{run_id}/{path:path}")
    def data_docs(user: CurrentUser, run_id: str, path: str) -> Response:
        """A file of an audit run's GX Data Docs, read from the evidence bucket for a logged-in reader."""
        from lethe.audit.data_docs import fetch
        from lethe.connections import s3_endpoint_url

        found = fetch(database_url(), s3_endpoint_url(), run_id, path)
        if found is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such Data Docs file for this audit run")
        return Response(found[0], media_type=found[1])

    return app


class LetheCompliancePlugin(AirflowPlugin):
    name = "lethe_compliance"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Privacy compliance"}]
    external_views = [
        {
            "name": "Privacy compliance",
            "href": f"{URL_PREFIX}/",
            "destination": "nav",
            "category": "browse",
            "url_route": "privacy-compliance",
            "icon": f"{URL_PREFIX}/icon.svg",
        }
    ]
