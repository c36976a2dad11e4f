"""The "Privacy compliance" page: an Airflow 3 plugin serving a FastAPI app under /lethe-compliance.

Airflow does not authenticate plugin apps, so every route here validates the
caller's Airflow JWT itself (the `_token` cookie the UI sets at login, or an
`Authorization: Bearer` header) with Airflow's own auth manager, and then asks
the auth manager whether that user may read the compliance_audit DAG's runs.
The data comes from lethe.audit.dashboard; this module only authenticates and renders.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

URL_PREFIX = "/lethe-compliance"
TEMPLATES = Path(__file__).resolve().parent / "templates"
AUDIT_DAG_ID = "compliance_audit"
ICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="none" stroke="currentColor" '
    'stroke-width="2" stroke-linecap="round" stroke-linejoin="round"><path d="M12 22s8-4 8-10V5l-8-3-8 3v7c0 '
    '6 8 10 8 10z"/><path d="m9 12 2 2 4-4"/></svg>'
)


class NotLoggedIn(Exception):
    """No Airflow token came with the request, or it expired."""


class NotAllowed(Exception):
    """The user may not read compliance_audit runs."""


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
# Read-only filters of the request list: one state, or open requests due within N days.
StateFilter = Annotated[str | None, Query(alias="state", pattern=r"^[a-z_]{1,40}$")]
DueFilter = Annotated[int | None, Query(alias="due_within", ge=0, le=366)]


def database_url() -> str:
    """LETHE_DATABASE_URL, else the lethe_primary Airflow connection (as the api-server sees it)."""
    url = os.environ.get("LETHE_DATABASE_URL")
    if url:
        return url
    from airflow.models.connection import Connection

    uri = Connection.get_connection_from_secrets("lethe_primary").get_uri()
    return str(uri).replace("postgres://", "postgresql://", 1)


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


def _render(page: Any, user: Any) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)
    env.filters["ts"] = _ts
    env.filters["hours"] = lambda v: "-" if v is None else (f"{v / 24:.1f} d" if v >= 48 else f"{v:.1f} h")
    from lethe.audit.dashboard import STATES

    return env.get_template("compliance.html").render(page=page, user=user.get_name(), states=STATES)


def create_app() -> FastAPI:
    app = FastAPI(title="Lethe privacy compliance", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(NotLoggedIn)
    async def _not_logged_in(request: Request, exc: NotLoggedIn) -> Response:
        if request.url.path.rstrip("/").endswith("/api/summary"):
            return JSONResponse({"detail": "Not authenticated"}, status_code=status.HTTP_401_UNAUTHORIZED)
        from airflow.api_fastapi.app import get_auth_manager

        return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)), status_code=303)

    @app.exception_handler(NotAllowed)
    async def _not_allowed(request: Request, exc: NotAllowed) -> Response:
        detail = "not allowed to read compliance_audit runs"
        if request.url.path.rstrip("/").endswith("/api/summary"):
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

    @app.get("/", response_class=HTMLResponse)
    def page(user: CurrentUser, state: StateFilter = None, due_within: DueFilter = None) -> HTMLResponse:
        from lethe.audit.dashboard import gather

        data = gather(database_url(), _base_url(), status=state, due_within_days=due_within)
        return HTMLResponse(_render(data, user))

    @app.get("/api/summary")
    def summary(user: CurrentUser, state: StateFilter = None, due_within: DueFilter = None) -> JSONResponse:
        from fastapi.encoders import jsonable_encoder
        from lethe.audit.dashboard import gather

        data = gather(database_url(), _base_url(), status=state, due_within_days=due_within)
        return JSONResponse(jsonable_encoder(data.as_dict()))

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
