"""`lethe up` / `lethe down` as a user runs them, and a real Airflow driven through the browser.

One `lethe up` serves every test of this module, in order: its own LETHE_HOME (so its own embedded
PostgreSQL and S3 server, the demo platform seeded on first start), started exactly as `make up`
starts it, only with a free port and `--triggered-only`. Headless Chromium logs in with the printed
credentials, triggers subject_erasure with approval through the trigger form, approves one request and
rejects another on Airflow's Required Action screen, and reads the Privacy compliance page, whose
every section is compared with the database (the test's own SQL) and photographed into
artifacts/ui/ (docs/ui.md shows them). A sharing run and a failing audit feed the page too. The last
test runs `lethe down` and checks by pid and port that no process is left.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import psycopg2
import pytest
from lethe.config import PROJECT_DIR

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
SHOTS = PROJECT_DIR / "artifacts" / "ui"
LETHE = Path(sys.executable).with_name("lethe")
USERS = 60


@dataclass
class Local:
    """The Airflow `lethe up` started, as its output and its LETHE_HOME describe it."""

    home: Path
    env: dict[str, str]
    url: str
    user: str
    password: str
    approver: tuple[str, str]
    output: str
    db_url: str = ""
    runs: dict[str, str] = field(default_factory=dict)  # what the tests triggered, by purpose
    _token: str = ""

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        if not self._token:
            self._token = self._call("POST", "/auth/token", {"username": self.user, "password": self.password}, None)[
                "access_token"
            ]
        return self._call(method, path, body, self._token)

    def poll(self, path: str) -> Any:
        """GET, asking again when a saturated api-server does not answer in time."""
        while True:
            try:
                return self.api("GET", path)
            except TimeoutError:
                continue
            except urllib.error.URLError as exc:
                if isinstance(exc, urllib.error.HTTPError) or not isinstance(exc.reason, TimeoutError):
                    raise

    def _call(self, method: str, path: str, body: dict[str, Any] | None, token: str | None) -> Any:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        with urllib.request.urlopen(request, timeout=120) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def run_state(self, dag_id: str, run_id: str) -> str:
        return str(self.poll(f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}")["state"])

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 900) -> str:
        deadline = time.monotonic() + timeout
        while (state := self.run_state(dag_id, run_id)) not in ("success", "failed"):
            assert time.monotonic() < deadline, f"{dag_id} {run_id} still {state} after {timeout:.0f} s"
            time.sleep(3)
        return state

    def wait_for_task(self, dag_id: str, run_id: str, task_id: str, states: set[str], timeout: float = 900) -> str:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances/{task_id}"
        deadline = time.monotonic() + timeout
        while (state := str(self.poll(path)["state"])) not in states:
            assert time.monotonic() < deadline, f"{dag_id}.{task_id} still {state} after {timeout:.0f} s"
            if self.run_state(dag_id, run_id) not in ("queued", "running"):
                pytest.fail(f"{dag_id} {run_id} ended early:\n{self.failures(dag_id, run_id)}")
            time.sleep(3)
        return state

    def failures(self, dag_id: str, run_id: str) -> str:
        """Each task's state, and the end of each failed task's log: what CI shows when a run dies."""
        run = f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}"
        lines = []
        for ti in self.poll(f"{run}/taskInstances")["task_instances"]:
            lines.append(f"{ti['task_id']}[{ti['map_index']}]: {ti['state']} (try {ti['try_number']})")
            if ti["state"] in ("failed", "up_for_retry") and ti["try_number"]:
                query = f"full_content=true&map_index={ti['map_index']}"
                try:
                    log = self.poll(f"{run}/taskInstances/{ti['task_id']}/logs/{ti['try_number']}?{query}")
                except urllib.error.HTTPError as exc:
                    lines.append(f"    (no log: HTTP {exc.code})")
                    continue
                events = []
                for e in log.get("content", []):
                    if isinstance(e, dict):
                        events.append(str(e.get("event", e)))
                        for error in e.get("error_detail") or []:  # the exception itself, not only "failed"
                            events.append(f"  {error.get('exc_type')}: {error.get('exc_value')}")
                lines += ["    " + e for e in events[-25:]]
        if dag_id == "subject_erasure":  # a request failed at a step says why in the database, not in a task's log
            reasons = sql(
                self.db_url,
                "SELECT status, detail->>'error' FROM erasure_requests WHERE claimed_by = %s OR detail->>'run_id' = %s",
                run_id,
                run_id,
            )
            lines += [f"request {status}: {error}" for status, error in reasons]
        return "\n".join(lines)

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        self.api("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
        run = self.api("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})
        return str(run["dag_run_id"])


def lethe(local_env: dict[str, str], *args: str, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LETHE), *args], env=local_env, capture_output=True, text=True, timeout=timeout, check=False
    )


def sql(url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(query, params)
        rows = cur.fetchall() if cur.description else []
    conn.close()
    return rows


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_answers(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def local() -> Iterator[Local]:
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: apt-get install -y chromium")
    # Outside pytest's tmp_path: the embedded PostgreSQL's user must reach it (see tests/conftest.py).
    home = Path(tempfile.mkdtemp(prefix="lethe-up-home-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "_AIRFLOW", "LETHE_"))}
    env["LETHE_HOME"] = str(home)
    try:
        done = lethe(env, "up", "--port", str(free_port()), "--users", str(USERS), "--triggered-only")
        assert done.returncode == 0, f"lethe up exited {done.returncode}:\n{done.stdout}\n{done.stderr[-4000:]}"
        url = re.search(r"^Airflow is up: (\S+)$", done.stdout, re.M)
        user = re.search(r"^  user\s+(\S+)$", done.stdout, re.M)
        password = re.search(r"^  password\s+(\S+)", done.stdout, re.M)
        approver = re.search(r"^  approver\s+(\S+) / (\S+)", done.stdout, re.M)
        assert url and user and password and approver, done.stdout
        running = Local(
            home, env, url.group(1), user.group(1), password.group(1), (approver[1], approver[2]), done.stdout
        )
        port = int((home / "pgdata.port").read_text())
        running.db_url = f"postgresql://postgres@127.0.0.1:{port}/lethe"
        expected = {p.stem for p in (PROJECT_DIR / "dags").glob("*.py")}
        deadline = time.monotonic() + 900
        while missing := expected - {d["dag_id"] for d in running.poll("/api/v2/dags?limit=100")["dags"]}:
            errors = running.poll("/api/v2/importErrors")["import_errors"]
            assert time.monotonic() < deadline, f"DAGs {sorted(missing)} not parsed: {errors}"
            time.sleep(5)
        yield running
    finally:
        lethe(env, "down", timeout=300)
        shutil.rmtree(home, ignore_errors=True)


# -- the browser -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(local: Local) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            pages = []
            for _ in ("requester", "approver"):  # separate contexts: separate Airflow sessions
                page = chromium.new_context(viewport={"width": 1280, "height": 1000}).new_page()
                page.set_default_timeout(180_000)  # a loaded machine renders Airflow's UI slowly
                pages.append(page)
            yield pages
        finally:
            chromium.close()


def log_in(page: Any, local: Local, user: str, password: str) -> None:
    page.goto(f"{local.url}/auth/login")
    page.locator("input[name=username]").fill(user)
    page.locator("input[name=password]").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{local.url}/", wait_until="commit")  # Airflow's login redirects home with its session
    assert any(c["name"] == "_token" for c in page.context.cookies()), f"{user} was not logged in"


def trigger_erasure_with_approval(page: Any, local: Local, email: str, reference: str) -> str:
    """subject_erasure's trigger form: identifier, reference, dry run off, approval on. Returns the run id."""
    page.goto(f"{local.url}/dags/subject_erasure")
    page.get_by_role("button", name="Trigger").first.click()
    form = page.get_by_role("dialog")
    form.locator("#element_identifier").fill(email)
    form.locator("#element_request_reference").fill(reference)
    form.locator("[id='switch:element_dry_run']").click()
    form.locator("[id='switch:element_require_approval']").click()
    form.get_by_role("button", name="Trigger").last.click()
    page.wait_for_url("**/dags/subject_erasure/runs/**")
    return urllib.parse.unquote(page.url.rstrip("/").split("/runs/", 1)[1].split("/", 1)[0])


def answer_approval(page: Any, local: Local, run_id: str, choice: str) -> None:
    """Airflow 3's Required Action screen of the run's approve task: press Approve or Reject."""
    # Airflow races here (apache/airflow#67287): an answer that resumes the task before the scheduler has taken
    # in the executor's "success" of the worker that deferred it gets the task failed as changed externally.
    # Answer only once the scheduler log shows that event taken in (a person's answer comes later than a test's).
    taken_in = f"TaskInstance Finished: dag_id=subject_erasure, task_id=approve, run_id={run_id},"
    scheduler_log = local.home / "logs" / "scheduler.log"
    deadline = time.monotonic() + 180
    while not any(taken_in in line for line in scheduler_log.read_text(errors="replace").splitlines()):
        assert time.monotonic() < deadline, "the scheduler never took in the approve task's deferral"
        time.sleep(1)
    quoted = urllib.parse.quote(run_id, safe="")
    page.goto(f"{local.url}/dags/subject_erasure/runs/{quoted}/tasks/approve/required_actions")
    button = page.get_by_role("button", name=choice, exact=True)
    button.click()
    from playwright.sync_api import expect

    expect(button).to_be_disabled(timeout=180_000)  # the UI disables the options once the answer is recorded
    quoted_path = f"/api/v2/dags/subject_erasure/dagRuns/{quoted}/taskInstances/approve/-1/hitlDetails"
    deadline = time.monotonic() + 180
    while not (detail := local.poll(quoted_path))["response_received"]:
        assert time.monotonic() < deadline, "the approval screen's answer never reached Airflow"
        time.sleep(2)
    assert detail["chosen_options"] == [choice]


def compliance_page(page: Any, local: Local) -> None:
    page.goto(f"{local.url}/lethe-compliance/")
    page.locator("h1").wait_for()
    assert page.locator("h1").inner_text() == "Privacy compliance"


def request_row(page: Any, request_id: str) -> Any:
    return page.locator(f"tr[data-request='{request_id}']")


def shoot_sections(page: Any) -> list[str]:
    """One screenshot per section of the compliance page (from its heading to the next): artifacts/ui/<slug>.png."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.evaluate("window.scrollTo(0, 0)")
    headings = page.locator("h2")
    boxes = [headings.nth(i).bounding_box() for i in range(headings.count())]
    titles = [headings.nth(i).inner_text() for i in range(headings.count())]
    height = page.evaluate("document.documentElement.scrollHeight")
    width = page.viewport_size["width"]
    written = []
    page.screenshot(
        path=str(SHOTS / "overview.png"), full_page=True, clip={"x": 0, "y": 0, "width": width, "height": boxes[0]["y"]}
    )
    written.append("overview")
    for i, (title, box) in enumerate(zip(titles, boxes, strict=True)):
        end = boxes[i + 1]["y"] if i + 1 < len(boxes) else height
        slug = re.sub(r"[^a-z0-9]+", "-", title.split(":")[0].lower()).strip("-")
        page.screenshot(
            path=str(SHOTS / f"{slug}.png"),
            full_page=True,
            clip={"x": 0, "y": box["y"] - 8, "width": width, "height": end - box["y"] + 4},
        )
        written.append(slug)
    return written


# -- the tests, in order ---------------------------------------------------------------------------


def test_up_prints_the_login_it_keeps_under_lethe_home(local: Local) -> None:
    kept = local.home / "airflow-local" / "simple_auth_manager_passwords.json"
    assert json.loads(kept.read_text()) == {local.user: local.password, local.approver[0]: local.approver[1]}
    assert kept.stat().st_mode & 0o077 == 0, "the password file is readable by others"
    for process in ("api-server", "scheduler", "dag-processor", "triggerer"):
        assert (local.home / "logs" / f"{process}.log").is_file(), process
    assert sql(local.db_url, "SELECT count(*) FROM accounts") == [(USERS,)], "the first start seeds the demo"
    metadata = local.db_url.rsplit("/", 1)[0] + "/airflow"
    assert sql(metadata, "SELECT count(*) FROM dag WHERE dag_id = 'subject_erasure'") == [(1,)]

    again = lethe(local.env, "up", "--port", str(free_port()))  # finds it running: same URL, same password
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"Airflow is already running: {local.url}" in again.stdout
    assert re.search(rf"^  password\s+{re.escape(local.password)}\s", again.stdout, re.M)


def test_an_erasure_approved_in_the_ui_erases_and_the_page_shows_it(local: Local, browser: Any) -> None:
    page, approver = browser
    (user_id, email), (other_id, _) = sql(local.db_url, "SELECT user_id, email FROM accounts ORDER BY user_id LIMIT 2")
    # A sharing run meanwhile: the executor runs it beside the erasure, and the page's sharing figures come from it.
    local.runs["sharing"] = local.trigger("usage_sharing", {})
    # And retention_nightly, whose mapped rules run in parallel under the LocalExecutor (parallelism 4).
    local.runs["retention"] = local.trigger("retention_nightly", {})

    log_in(page, local, local.user, local.password)
    log_in(approver, local, *local.approver)  # the second person: a requester never approves their own request
    run_id = trigger_erasure_with_approval(page, local, email, "TICKET-APPROVE")
    local.wait_for_task("subject_erasure", run_id, "approve", {"awaiting_input", "deferred"})
    ((request_id, waiting),) = sql(
        local.db_url, "SELECT request_id::text, status FROM erasure_requests WHERE reference = 'TICKET-APPROVE'"
    )
    compliance_page(page, local)
    assert request_row(page, request_id).get_attribute("data-state") == waiting
    assert sql(local.db_url, "SELECT count(*) FROM accounts WHERE user_id = %s", user_id) == [(1,)], "erased unapproved"

    answer_approval(approver, local, run_id, "Approve")
    assert local.wait_for_run("subject_erasure", run_id) == "success", local.failures("subject_erasure", run_id)
    assert sql(local.db_url, "SELECT count(*) FROM accounts WHERE user_id = %s", user_id) == [(0,)]
    assert sql(local.db_url, "SELECT count(*) FROM accounts WHERE email = %s", email) == [(0,)]
    assert sql(local.db_url, "SELECT count(*) FROM accounts WHERE user_id = %s", other_id) == [(1,)]
    ((done,),) = sql(local.db_url, "SELECT status FROM erasure_requests WHERE request_id = %s", request_id)
    assert done == "certified"  # lethe.erasure.lifecycle: erased, verified, certificate written

    compliance_page(page, local)  # the page now says what the database says
    row = request_row(page, request_id)
    assert row.get_attribute("data-state") == "certified"
    assert "closed" in row.locator(".days-left").inner_text()
    assert email not in page.content()
    local.runs["approved"] = request_id


def test_an_erasure_rejected_in_the_ui_erases_nothing(local: Local, browser: Any) -> None:
    page, approver = browser
    ((user_id, email),) = sql(local.db_url, "SELECT user_id, email FROM accounts ORDER BY user_id DESC LIMIT 1")
    counts_before = dict(sql(local.db_url, "SELECT 'accounts', count(*) FROM accounts"))

    run_id = trigger_erasure_with_approval(page, local, email, "TICKET-REJECT")
    local.wait_for_task("subject_erasure", run_id, "approve", {"awaiting_input", "deferred"})
    answer_approval(approver, local, run_id, "Reject")
    local.wait_for_run("subject_erasure", run_id)
    assert sql(local.db_url, "SELECT count(*) FROM accounts WHERE user_id = %s", user_id) == [(1,)]
    assert dict(sql(local.db_url, "SELECT 'accounts', count(*) FROM accounts")) == counts_before
    ((request_id, status),) = sql(
        local.db_url, "SELECT request_id::text, status FROM erasure_requests WHERE reference = 'TICKET-REJECT'"
    )
    assert status == "rejected"  # closed for good: no later batch erases it
    compliance_page(page, local)
    assert request_row(page, request_id).get_attribute("data-state") == status
    local.runs["rejected"] = request_id


def test_a_failing_audit_and_a_sharing_run_show_on_every_section(local: Local, browser: Any) -> None:
    page = browser[0]
    sharing = local.runs["sharing"]
    assert local.wait_for_run("usage_sharing", sharing) == "success", local.failures("usage_sharing", sharing)
    # An overdue request (received 40 days ago, never processed) makes the audit fail. Days left are
    # whole days rounded down: due 10 days and 2 hours ago is day -11.
    overdue = str(uuid.uuid4())
    now = datetime.now(UTC)
    sql(
        local.db_url,
        "INSERT INTO erasure_requests (request_id, identifier_kind, identifier, reference, received_at, due_at)"
        " VALUES (%s, 'email', 'overdue.person@example.org', 'TICKET-OVERDUE', %s, %s)",
        overdue,
        now - timedelta(days=40),
        now - timedelta(days=10, hours=2),
    )
    audit = local.trigger("compliance_audit", {})
    assert local.wait_for_run("compliance_audit", audit) == "failed"

    ((failed, success),) = sql(local.db_url, "SELECT failed, success FROM audit_runs ORDER BY audited_at DESC LIMIT 1")
    assert not success and "erasure_deadlines.overdue_erasure_requests" in failed
    ((entries,),) = sql(local.db_url, "SELECT count(*) FROM ledger")
    open_requests = sql(
        local.db_url,
        "SELECT request_id::text FROM erasure_requests WHERE status NOT IN"
        " ('completed', 'no_data', 'dry_run', 'rejected', 'erased', 'verified', 'certified')",
    )

    compliance_page(page, local)
    assert page.locator("#card-audit .v").inner_text() == "FAILED"
    assert page.locator("#ledger-entries").inner_text() == str(entries)
    assert page.locator("#ledger-status").inner_text() == "intact"
    assert page.locator("#open-erasures").inner_text() == str(len(open_requests))
    assert request_row(page, overdue).locator(".days-left").inner_text().strip() == "-11"
    shown = page.locator("#checks tbody tr")
    first_passing = next(i for i in range(shown.count()) if "failed" not in (shown.nth(i).get_attribute("class") or ""))
    failing_on_page = {shown.nth(i).get_attribute("data-check") for i in range(first_passing)}
    assert failing_on_page == set(failed), "failures first, and exactly the database's"
    for check in failed:
        assert page.locator(f"tr[data-check='{check}'] td").nth(3).inner_text() == "FAIL"
    history = page.locator("#verdict-history a")
    assert history.count() == 1 and history.first.get_attribute("class") == "fail"
    for key in ("approved", "rejected"):
        ((status,),) = sql(local.db_url, "SELECT status FROM erasure_requests WHERE request_id = %s", local.runs[key])
        assert request_row(page, local.runs[key]).get_attribute("data-state") == status
    published = sql(
        local.db_url,
        "SELECT DISTINCT ON (recipient) recipient, cells_published, cells_suppressed FROM sharing_releases"
        " WHERE status = 'published' ORDER BY recipient, coalesce(finished_at, created_at) DESC",
    )
    assert published, "the sharing run published no release"
    for recipient, cells, suppressed in published:
        row = page.locator(f"#sharing tr[data-recipient='{recipient}']")
        assert row.locator(".cells-published").inner_text() == str(cells), recipient
        assert row.locator(".cells-suppressed").inner_text() == str(suppressed), recipient
    ((holds,),) = sql(local.db_url, "SELECT count(*) FROM legal_holds WHERE released_at IS NULL")
    assert page.locator("#holds tbody tr").count() == holds
    content = page.content()
    for (email,) in sql(local.db_url, "SELECT email FROM accounts"):
        assert email not in content
    assert "overdue.person@example.org" not in content

    sections = shoot_sections(page)
    assert {"overview", "erasure-requests", "usage-sharing", "legal-holds", "data-quality-results", "ledger"} <= set(
        sections
    )
    for name in sections:
        assert (SHOTS / f"{name}.png").stat().st_size > 1000, name


def test_retention_nightly_under_the_local_executor_needed_no_retry(local: Local) -> None:
    """Its rules ran in parallel beside the erasures (issue 19: two rules of one table once deadlocked)."""
    run = local.runs["retention"]
    assert local.wait_for_run("retention_nightly", run) == "success", local.failures("retention_nightly", run)
    metadata = local.db_url.rsplit("/", 1)[0] + "/airflow"
    tries = sql(
        metadata,
        "SELECT task_id, map_index, try_number FROM task_instance WHERE dag_id = 'retention_nightly' AND run_id = %s",
        local.runs["retention"],
    )
    assert len(tries) > 3
    # try 0: never run (the skipped instance of a stage with no table); more than 1: retried
    assert [t for t in tries if t[2] > 1] == [], "tasks that needed a retry"
    overlapping = sql(
        metadata,
        "SELECT count(*) FROM task_instance a JOIN task_instance b ON a.dag_id = b.dag_id AND a.run_id = b.run_id"
        " AND (a.task_id, a.map_index) < (b.task_id, b.map_index)"
        " AND a.start_date < b.end_date AND b.start_date < a.end_date"
        " WHERE a.dag_id = 'retention_nightly' AND a.run_id = %s",
        local.runs["retention"],
    )
    assert overlapping[0][0] > 0, "no two tasks ran at the same time: parallelism was not exercised"
    purged = sql(local.db_url, "SELECT count(*) FROM ledger WHERE kind = 'retention'")
    assert purged[0][0] > 0


def test_down_leaves_no_process_and_keeps_the_data(local: Local) -> None:
    from lethe.ops.stack import AirflowStack

    recorded = AirflowStack.recorded(local.home / "airflow-local")
    leaders = [entry["pid"] for entry in recorded["processes"].values()]
    assert len(leaders) == 4
    pids = set(leaders)
    for pid in leaders:
        pids |= {child.pid for child in psutil.Process(pid).children(recursive=True)}
    services = json.loads((local.home / "s3data.json").read_text())
    pg_pid = int((local.home / "pgdata" / "postmaster.pid").read_text().split()[0])
    pids |= {services["pid"], pg_pid}
    ports = [int(recorded["port"]), int((local.home / "pgdata.port").read_text()), services["s3.port"]]
    assert all(port_answers(port) for port in ports)

    done = lethe(local.env, "down", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    alive = [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert alive == [], f"left running: {[psutil.Process(p).cmdline()[:3] for p in alive]}"
    assert [port for port in ports if port_answers(port)] == []
    assert not [
        p.pid
        for p in psutil.process_iter(["cmdline", "environ"])
        if (p.info["environ"] or {}).get("LETHE_HOME") == str(local.home)
    ], "a process of this LETHE_HOME is still running"

    # Nothing is dropped: the metadata database keeps the runs, the password stays for the next `lethe up`.
    from lethe.embedded import EmbeddedPostgres

    pg = EmbeddedPostgres(local.home / "pgdata")
    url = pg.start()
    try:
        metadata = url.rsplit("/", 1)[0] + "/airflow"
        assert sql(metadata, "SELECT count(*) FROM dag_run WHERE dag_id = 'subject_erasure'") == [(2,)]
    finally:
        pg.stop()
    kept = json.loads((local.home / "airflow-local" / "simple_auth_manager_passwords.json").read_text())
    assert kept == {local.user: local.password, local.approver[0]: local.approver[1]}
