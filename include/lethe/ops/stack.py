"""A real Airflow deployment as local processes: api-server, scheduler, dag-processor, triggerer (+ Celery worker).

One harness for `lethe up` / `lethe down` and the end-to-end tests: DAGs run under the real scheduler
and executor, not dag.test(), and the approval step (a deferred task) under the real triggerer.

    stack = AirflowStack(home, primary_url=db, s3_endpoint=s3, metadata_url=url)
    stack.start()                       # migrates the metadata database, spawns the processes detached
    run_id = stack.trigger("subject_erasure", {"request_id": rid, "dry_run": False})
    assert stack.wait_for_run("subject_erasure", run_id) == "success"
    AirflowStack.stop_recorded(home)    # from any later process: ends every process the state file names

Every process runs in its own process group; their pids (with start times, so a reused pid is never
signalled) are recorded in `<home>/stack.json`, so a later command can stop them. The metadata database
is the caller's (`lethe up` keeps one on the embedded PostgreSQL across restarts); `ephemeral_stack`
gives the tests a fresh one, dropped when it stops. The executor is Celery when a Redis broker answers
and the Celery provider is installed, LocalExecutor otherwise (or as `executor` or LETHE_STACK_EXECUTOR says).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from lethe.airflow_env import DAGS_FOLDER, PLUGINS_FOLDER, POOL_DESCRIPTION, local_pseudonym_key
from lethe.config import PRIMARY_REGION, local_s3_credentials

ADMIN_USER = "admin"
APPROVER_USER = "approver"
# SimpleAuthManager users and roles: an erasure's requester never approves it, so a second person can.
USERS = {ADMIN_USER: "admin", APPROVER_USER: "user"}
REDIS = ("127.0.0.1", 6379)
TERMINAL = {"success", "failed"}
STATE_FILE = "stack.json"
PASSWORDS_FILE = "simple_auth_manager_passwords.json"


class StackError(RuntimeError):
    """The stack did not come up, or a run did not finish; names the process and the tail of its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_answers(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def celery_available() -> bool:
    """A Redis broker answers on 127.0.0.1:6379 and the Celery provider is installed."""
    import importlib.util

    return port_answers(REDIS[1], REDIS[0]) and importlib.util.find_spec("airflow.providers.celery") is not None


def passwords(home: Path) -> dict[str, str]:
    """The users' passwords of the stack in `home`: generated on first use, then kept (0600) and reused."""
    path = home / PASSWORDS_FILE
    kept: dict[str, str] = {}
    with contextlib.suppress(OSError, ValueError):
        kept = {str(k): str(v) for k, v in json.loads(path.read_text()).items()}
    if set(USERS) <= set(kept):
        return {user: kept[user] for user in USERS}
    home.mkdir(parents=True, exist_ok=True)
    kept = {user: kept.get(user) or secrets.token_urlsafe(12) for user in USERS}
    path.touch(mode=0o600)
    path.write_text(json.dumps(kept))
    return kept


def admin_password(home: Path) -> str:
    return passwords(home)[ADMIN_USER]


class AirflowStack:
    COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")

    def __init__(
        self,
        home: Path,
        *,
        primary_url: str,
        s3_endpoint: str,
        metadata_url: str,
        port: int | None = None,
        log_folder: Path | None = None,
        dags_folder: Path = DAGS_FOLDER,
        plugins_folder: Path = PLUGINS_FOLDER,
        executor: str | None = None,
        triggered_only: bool = True,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.home = home
        self.primary_url = primary_url
        self.s3_endpoint = s3_endpoint
        self.metadata_url = metadata_url
        self.password = admin_password(home)  # SimpleAuthManager reads the same file
        self.port = port or free_port()
        self.log_folder = log_folder or home / "logs"
        self.dags_folder = dags_folder
        self.plugins_folder = plugins_folder
        self.executor = (
            executor
            or os.environ.get("LETHE_STACK_EXECUTOR")
            or ("CeleryExecutor" if celery_available() else "LocalExecutor")
        )
        self.triggered_only = triggered_only
        self.extra_env = extra_env or {}
        self.queue = f"lethe-{uuid.uuid4().hex[:8]}"  # parallel stacks on one broker never share tasks
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._token: str | None = None
        self._jwt = secrets.token_hex(32)  # shared by the api-server and the workers' task tokens
        self._log_ports = (free_port(), free_port())

    # -- configuration ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The environment of every Airflow process of this stack."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "_AIRFLOW"))}
        metadata = self.metadata_url.replace("postgresql://", "postgresql+psycopg2://", 1)
        key_id, secret = local_s3_credentials()
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(self.plugins_folder),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": self.executor,
                "AIRFLOW__CORE__PARALLELISM": "4",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
                "AIRFLOW__CORE__AUTH_MANAGER": (
                    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
                ),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r}" for u, r in USERS.items()),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.home / PASSWORDS_FILE),
                "AIRFLOW__API_AUTH__JWT_SECRET": self._jwt,
                "AIRFLOW__API__BASE_URL": self.base_url,
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata,
                # Importing a DAG file (Airflow, GX, pandas) takes over Airflow's 30 s default on a loaded machine.
                "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "300",
                "AIRFLOW__DAG_PROCESSOR__DAG_FILE_PROCESSOR_TIMEOUT": "600",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
                "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
                # Only triggered runs (the tests): an unpaused nightly DAG would otherwise start its latest interval.
                "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": str(not self.triggered_only),
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.log_folder),
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self._log_ports[0]),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self._log_ports[1]),
                # A loaded machine answers the task runners' first call slowly; Airflow's 5 s default
                # then fails tasks before they start ("task state changed externally").
                "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "60",
                "AIRFLOW__OPERATORS__DEFAULT_QUEUE": self.queue,
                "AIRFLOW__CELERY__BROKER_URL": f"redis://{REDIS[0]}:{REDIS[1]}/0",
                "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + self.metadata_url,
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
                "AIRFLOW_CONN_LETHE_PRIMARY": self.primary_url.replace("postgresql://", "postgres://", 1),
                "AIRFLOW_CONN_LETHE_AWS": json.dumps(
                    {
                        "conn_type": "aws",
                        "login": key_id,
                        "password": secret,
                        "extra": {"endpoint_url": self.s3_endpoint, "region_name": PRIMARY_REGION},
                    }
                ),
                "AIRFLOW_CONN_LETHE_PSEUDONYM_KEY": json.dumps({"conn_type": "generic", "password": self._key()}),
                "AIRFLOW_CONN_LETHE_AIRFLOW_METADATA": json.dumps(
                    {"conn_type": "generic", "extra": {"sql_alchemy_conn": metadata}}
                ),
                # The compliance page (in the api-server) reads the primary the tasks write.
                "LETHE_DATABASE_URL": self.primary_url,
                "LETHE_S3_ENDPOINT_URL": self.s3_endpoint,
            }
        )
        env.update(self.extra_env)
        return env

    def _key(self) -> str:
        return os.environ.get("LETHE_PSEUDONYM_KEY") or local_pseudonym_key()

    def log(self, label: str) -> Path:
        """The log file of one process (or one-shot command) of the stack."""
        return self.log_folder / f"{label}.log"

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, timeout: float = 900) -> AirflowStack:
        """Migrate the metadata database, create the pool, spawn every process; return once the API answers."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_folder.mkdir(parents=True, exist_ok=True)
        if port_answers(self.port):
            raise StackError(f"port {self.port} is taken: stop what listens there or choose another port")
        try:
            self._run(["db", "migrate"], "db-migrate", timeout=600)
            self._spawn("api-server", ["api-server", "--host", "127.0.0.1", "--port", str(self.port)])
            self._spawn("dag-processor", ["dag-processor"])
            self._wait_for_api(timeout)
            self._ensure_pool()  # through the API: one `airflow pools set` costs a minute on a loaded machine
            # Task runners and triggers call the execution API: a task queued before it answers (a run left
            # from the last start) fails without running.
            self._spawn("scheduler", ["scheduler"])
            self._spawn("triggerer", ["triggerer"])
            if self.executor == "CeleryExecutor":
                self._spawn("celery-worker", ["celery", "worker", "--queues", self.queue, "--concurrency", "2"])
        except BaseException:
            self.stop()
            raise
        return self

    def _airflow(self, args: list[str]) -> list[str]:
        return [sys.executable, "-m", "airflow", *args]

    def _run(self, args: list[str], label: str, timeout: float) -> None:
        log = self.log(label)
        with log.open("wb") as out:
            done = subprocess.run(
                self._airflow(args), env=self.env(), stdout=out, stderr=subprocess.STDOUT, timeout=timeout
            )
        if done.returncode != 0:
            raise StackError(f"airflow {' '.join(args)} exited {done.returncode}: {self._tail(log)}")

    def _spawn(self, label: str, args: list[str]) -> None:
        with self.log(label).open("ab") as log:
            self.processes[label] = subprocess.Popen(
                self._airflow(args),
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives `lethe up`; `lethe down` ends the whole group
            )
        self._record()

    def _record(self) -> None:
        import psutil

        pids = {}
        for label, proc in self.processes.items():
            with contextlib.suppress(psutil.Error):
                pids[label] = {"pid": proc.pid, "started": psutil.Process(proc.pid).create_time()}
        state = {"port": self.port, "url": self.base_url, "executor": self.executor, "processes": pids}
        (self.home / STATE_FILE).write_text(json.dumps(state, indent=2))

    def _tail(self, log: Path, lines: int = 15) -> str:
        try:
            return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def check_alive(self) -> None:
        for label, proc in self.processes.items():
            if proc.poll() is not None:
                raise StackError(f"{label} exited {proc.returncode}:\n{self._tail(self.log(label))}")

    def _wait_for_api(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                self.request("GET", "/api/v2/version")
                return
            except (urllib.error.URLError, OSError):
                time.sleep(1)
        raise StackError(f"api-server not answering after {timeout:.0f}s:\n{self._tail(self.log('api-server'))}")

    def _ensure_pool(self) -> None:
        from lethe.dag_defaults import PRIMARY_POOL, PRIMARY_POOL_SLOTS

        body = {"name": PRIMARY_POOL, "slots": PRIMARY_POOL_SLOTS, "description": POOL_DESCRIPTION}
        try:
            self.request("POST", "/api/v2/pools", body)
        except urllib.error.HTTPError as exc:
            if exc.code != 409:
                raise
            self.request("PATCH", f"/api/v2/pools/{PRIMARY_POOL}", body)

    def stop(self) -> list[int]:
        """End every process group this stack started (and any child left behind); return their pids."""
        for proc in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                proc.wait(timeout=0)
        ended = self.stop_recorded(self.home)
        for proc in self.processes.values():  # reap our own children
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                proc.wait(timeout=10)
        self.processes.clear()
        return ended

    @staticmethod
    def recorded(home: Path) -> dict[str, Any]:
        """The state file of the stack in `home` ({} when none was started there)."""
        try:
            return dict(json.loads((home / STATE_FILE).read_text()))
        except (OSError, ValueError):
            return {}

    @staticmethod
    def live_processes(home: Path) -> dict[str, Any]:
        """label -> psutil.Process of each recorded process still running (a reused pid does not count)."""
        import psutil

        alive = {}
        for label, entry in AirflowStack.recorded(home).get("processes", {}).items():
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(entry["pid"])
                if abs(process.create_time() - entry["started"]) < 1 and process.status() != psutil.STATUS_ZOMBIE:
                    alive[label] = process
        return alive

    @staticmethod
    def stop_recorded(home: Path, grace: float = 30) -> list[int]:
        """End every process the state file of `home` names, their process groups and descendants.

        SIGTERM first (Airflow's processes shut down cleanly), SIGKILL after `grace` seconds. Works from
        any process: `lethe down` runs in another command than the `lethe up` that started them.
        """
        import psutil

        leaders = AirflowStack.live_processes(home)
        doomed: dict[int, psutil.Process] = {}
        for process in leaders.values():
            doomed[process.pid] = process
            with contextlib.suppress(psutil.Error):
                for child in process.children(recursive=True):
                    doomed[child.pid] = child
        for process in leaders.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGTERM)
        _, alive = psutil.wait_procs(list(doomed.values()), timeout=grace)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()
        for process in leaders.values():  # anything still in a group (a task runner started meanwhile)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=10)
        state = AirflowStack.recorded(home)
        if state.get("processes"):
            state["processes"] = {}
            (home / STATE_FILE).write_text(json.dumps(state, indent=2))
        return sorted(doomed)

    def __enter__(self) -> AirflowStack:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    # -- REST API --------------------------------------------------------------------------------

    def token(self) -> str:
        if self._token is None:
            body = {"username": ADMIN_USER, "password": self.password}
            self._token = str(self.request("POST", "/auth/token", body, auth=False)["access_token"])
        return self._token

    def request(self, method: str, path: str, body: dict[str, Any] | None = None, *, auth: bool = True) -> Any:
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, headers=headers, method=method)
        with urllib.request.urlopen(req, timeout=120) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def wait_for_dags(self, dag_ids: list[str], timeout: float = 240) -> None:
        """Until the dag-processor has parsed every DAG of `dag_ids`."""
        deadline = time.monotonic() + timeout
        missing = set(dag_ids)
        while missing:
            self.check_alive()
            listed = self.request("GET", "/api/v2/dags?limit=100")["dags"]
            missing -= {d["dag_id"] for d in listed}
            if missing and time.monotonic() > deadline:
                raise StackError(
                    f"DAGs {sorted(missing)} not parsed after {timeout:.0f}s:\n{self._tail(self.log('dag-processor'))}"
                )
            if missing:
                time.sleep(2)

    def wait_for_dag(self, dag_id: str, timeout: float = 240) -> None:
        """Until the dag-processor has parsed the DAG; then unpause it."""
        self.wait_for_dags([dag_id], timeout)
        self.request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        """POST /api/v2/dags/{dag_id}/dagRuns; return the run id."""
        run = self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})
        return str(run["dag_run_id"])

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 300) -> str:
        """Wait until the run is finished; return its state. A timeout raises, naming unfinished tasks."""
        deadline = time.monotonic() + timeout
        path = f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}"
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                state = str(self.request("GET", path)["state"])
            except (TimeoutError, urllib.error.URLError) as exc:  # a saturated api-server: ask again
                if isinstance(exc, urllib.error.HTTPError):
                    raise
                continue
            if state in TERMINAL:
                return state
            time.sleep(2)
        raise StackError(f"{dag_id} run {run_id} not finished after {timeout:.0f}s: {self.task_states(dag_id, run_id)}")

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances"
        return {ti["task_id"]: str(ti["state"]) for ti in self.request("GET", path)["task_instances"]}


@contextlib.contextmanager
def ephemeral_stack(
    home: Path, *, primary_url: str, s3_endpoint: str, metadata_server: str, **options: Any
) -> Iterator[AirflowStack]:
    """A started stack on a fresh metadata database on `metadata_server`, dropped when it stops (the tests)."""
    from lethe.testing import drop_database, empty_database

    metadata_url = empty_database(metadata_server, prefix="lethe_airflow")
    try:
        with AirflowStack(
            home, primary_url=primary_url, s3_endpoint=s3_endpoint, metadata_url=metadata_url, **options
        ) as stack:
            yield stack
    finally:
        drop_database(metadata_url)
