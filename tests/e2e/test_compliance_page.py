"""The Privacy compliance page in a real Airflow api-server, seen through headless Chromium.

A seeded primary, a real retention_nightly run and a compliance_audit run give
the page its figures; the test compares what the browser shows with what the
database says, and checks that the plugin refuses requests without a valid
Airflow login. The screenshots are kept in artifacts/compliance_page.png and, for the audit's
GX Data Docs opened from the page's link, artifacts/data_docs.png.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from lethe.config import PROJECT_DIR
from lethe.db import transaction

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
USER, PASSWORD = "auditor", "lethe-e2e-password"
ARTIFACTS = PROJECT_DIR / "artifacts"
DUE_IN_12, OVERDUE = str(uuid.uuid4()), str(uuid.uuid4())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def seeded_state(db_url: str) -> None:
    """Seed the primary, purge it, back it up, open two erasure requests, then audit."""
    from lethe.dagrun import DagRunFailed, run_dag
    from lethe.seed import seed

    seed(db_url, users=40, events_per_user=5)
    run_dag("retention_nightly")
    run_dag("backup_nightly")
    now = datetime.now(UTC)
    with transaction(db_url) as cur:
        for request_id, due, ref in [
            (DUE_IN_12, now + timedelta(days=12, hours=2), "TICKET-12"),
            (OVERDUE, now - timedelta(days=2, hours=2), "TICKET-OVERDUE"),
        ]:
            cur.execute(
                "INSERT INTO erasure_requests (request_id, identifier_kind, identifier, reference, received_at, due_at)"
                " VALUES (%s, 'email', %s, %s, %s, %s)",
                (request_id, f"{ref.lower()}@example.com", ref, now - timedelta(days=20), due),
            )
    with pytest.raises(DagRunFailed):  # the overdue request fails the audit
        run_dag("compliance_audit")


@pytest.fixture
def api_server(airflow_home: Path, db_url: str, tmp_path: Path) -> Iterator[str]:
    """`airflow api-server` (SimpleAuthManager, one viewer) against the test's Airflow home and database."""
    port = _free_port()
    passwords = tmp_path / "passwords.json"
    passwords.write_text(json.dumps({USER: PASSWORD}))
    env = {
        **os.environ,
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
        "LETHE_DATABASE_URL": db_url,
    }
    log = (tmp_path / "api-server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "airflow", "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"api-server exited with {proc.returncode}: {(tmp_path / 'api-server.log').read_text()[-3000:]}"
                )
            try:
                if httpx.get(f"{base}/api/v2/monitor/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("api-server did not become healthy within 180 s")
            time.sleep(1)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def expected_figures(db_url: str) -> dict[str, object]:
    """What the page must show, read straight from the database."""
    with transaction(db_url) as cur:
        cur.execute("SELECT count(*) FROM ledger")
        ledger_entries = cur.fetchone()[0]
        cur.execute(
            "SELECT count(*) FROM erasure_requests WHERE status NOT IN ('certified', 'completed', 'no_data', 'rejected', 'dry_run')"
        )
        open_requests = cur.fetchone()[0]
        cur.execute(
            "SELECT payload->>'rule', payload->'counts'->>'done' FROM ledger WHERE kind = 'retention'"
            " AND NOT coalesce((payload->>'dry_run')::boolean, false) ORDER BY entry_id"
        )
        purges = dict(cur.fetchall())  # the last entry of each rule wins
        cur.execute("SELECT failed FROM audit_runs ORDER BY audited_at DESC LIMIT 1")
        failed = cur.fetchone()[0]
        cur.execute("SELECT region, count(*) FROM backup_snapshots WHERE status = 'complete' GROUP BY region")
        snapshots = dict(cur.fetchall())
    return {
        "ledger_entries": ledger_entries,
        "open": open_requests,
        "purges": purges,
        "failed": failed,
        "snapshots": snapshots,
    }


def test_compliance_page_shows_the_state_to_logged_in_users_only(
    airflow_home: Path, db_url: str, s3_endpoint: str, api_server: str, tmp_path: Path
) -> None:
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: apt-get install -y chromium")
    seeded_state(db_url)
    expected = expected_figures(db_url)
    assert expected["purges"], "retention_nightly recorded no purge in the ledger"
    assert "erasure_deadlines.overdue_erasure_requests" in expected["failed"]
    page_url = f"{api_server}/lethe-compliance/"

    # Without a valid Airflow login the plugin answers nothing.
    assert httpx.get(f"{page_url}api/summary").status_code == 401
    forged = httpx.get(f"{page_url}api/summary", headers={"Authorization": "Bearer not-a-jwt"})
    assert forged.status_code in (401, 403)
    anonymous = httpx.get(page_url, follow_redirects=False)
    assert anonymous.status_code == 303 and "/auth/login" in anonymous.headers["location"]
    assert "TICKET-12" not in anonymous.text
    # An expired or forged session sends the page to the login too, not to a JSON error in the frame.
    stale = httpx.get(page_url, cookies={"_token": "not-a-jwt"}, follow_redirects=False)
    assert stale.status_code == 303 and "/auth/login" in stale.headers["location"]

    # The plugin is registered with its nav entry, and a token from Airflow's own login opens its API.
    token = httpx.post(f"{api_server}/auth/token", json={"username": USER, "password": PASSWORD}).json()["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    plugins = httpx.get(f"{api_server}/api/v2/plugins", headers=auth).json()["plugins"]
    views = [v for p in plugins for v in p.get("external_views", [])]
    assert any(v["name"] == "Privacy compliance" and v["href"] == "/lethe-compliance/" for v in views)
    summary = httpx.get(f"{page_url}api/summary", headers=auth, timeout=120)
    assert summary.status_code == 200 and summary.json()["ledger_entries"] == expected["ledger_entries"]
    assert "@example.com" not in summary.text  # request identifiers never leave the database

    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            page.set_default_timeout(120_000)  # a loaded CI machine renders slowly
            page.goto(f"{api_server}/auth/login?next=/lethe-compliance/")
            page.locator("input[name=username]").fill(USER)
            page.locator("input[name=password]").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url("**/lethe-compliance/")
            page.locator("h1").wait_for()

            assert page.locator("h1").inner_text() == "Privacy compliance"
            assert page.locator("#open-erasures").inner_text() == str(expected["open"])
            assert page.locator(f"tr[data-request='{DUE_IN_12}'] .days-left").inner_text().strip() == "12"
            assert page.locator(f"tr[data-request='{OVERDUE}'] .days-left").inner_text().strip() == "-3"
            assert page.locator("#ledger-entries").inner_text() == str(expected["ledger_entries"])
            assert page.locator("#ledger-status").inner_text() == "intact"
            for rule, done in expected["purges"].items():  # type: ignore[attr-defined]
                assert page.locator(f"tr[data-rule='{rule}'] .purge-done").inner_text() == str(done), rule
            for region, count in expected["snapshots"].items():  # type: ignore[attr-defined]
                assert count >= 1
                row = page.locator(f"tr[data-region='{region}']")
                assert row.locator(".region-pending").inner_text() == "0"
                assert row.locator("td").nth(1).inner_text() != "never"
            overdue_row = page.locator("tr[data-check='erasure_deadlines.overdue_erasure_requests']")
            assert overdue_row.locator("td").nth(3).inner_text() == "FAIL"
            assert "@example.com" not in page.content()
            page.screenshot(path=str(ARTIFACTS / "compliance_page.png"), full_page=True)

            # The audit's GX Data Docs open from the page's link, served by the page's authenticated route.
            link = page.locator("#runs a.data-docs").first
            href = link.get_attribute("href") or ""
            assert href.startswith("data-docs/") and href.endswith("/index.html")  # never a bucket URL
            with page.context.expect_page() as opened:
                link.click()
            docs = opened.value
            docs.wait_for_load_state("domcontentloaded")
            assert "/lethe-compliance/data-docs/" in docs.url
            assert docs.locator("a[href*='validations/erasure_deadlines/']").count() >= 1
            assert "@example.com" not in docs.content()
            docs.screenshot(path=str(ARTIFACTS / "data_docs.png"), full_page=True)
            anonymous_docs = httpx.get(f"{api_server}/lethe-compliance/{href}", follow_redirects=False)
            assert anonymous_docs.status_code == 303  # to Airflow's login, like the page itself
        finally:
            browser.close()
