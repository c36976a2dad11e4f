"""A real Airflow deployment as local processes: api-server, scheduler, dag-processor (+ Celery worker).

For end-to-end tests and local trials: DAGs run under the real scheduler and executor, not dag.test().

    with AirflowStack(home, primary_url=db, s3_endpoint=s3, metadata_server=server_url) as stack:
        run_id = stack.trigger("subject_erasure", {"request_id": rid, "dry_run": False})
        assert stack.wait_for_run("subject_erasure", run_id) == "success"

The metadata database is a fresh PostgreSQL database created on `metadata_server` (the machine's
server or the embedded one) and dropped on stop. The executor is Celery when a Redis broker
answers and the Celery provider is installed, LocalExecutor otherwise (or as `executor` or
LETHE_STACK_EXECUTOR says).
Every process runs in its own process group; stop() ends each group it started, even after a
failed start.
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
from pathlib import Path
from types import TracebackType
from typing import Any

from lethe.airflow_env import DAGS_FOLDER, local_pseudonym_key, pool_command
from lethe.config import PRIMARY_REGION

ADMIN_USER = "admin"
REDIS = ("127.0.0.1", 6379)
TERMINAL = {"success", "failed"}


class StackError(RuntimeError):
    """The stack did not come up, or a run did not finish; names the process and the tail of its log."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _reachable(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def celery_available() -> bool:
    """A Redis broker answers on 127.0.0.1:6379 and the Celery provider is installed."""
    import importlib.util

    return _reachable(*REDIS) and importlib.util.find_spec("airflow.providers.celery") is not None


class AirflowStack:
    def __init__(
        self,
        home: Path,
        *,
        primary_url: str,
        s3_endpoint: str,
        metadata_server: str,
        dags_folder: Path = DAGS_FOLDER,
        plugins_folder: Path | None = None,
        executor: str | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.home = home
        self.primary_url = primary_url
        self.s3_endpoint = s3_endpoint
        self.metadata_server = metadata_server
        self.dags_folder = dags_folder
        self.plugins_folder = plugins_folder
        self.executor = (
            executor
            or os.environ.get("LETHE_STACK_EXECUTOR")
            or ("CeleryExecutor" if celery_available() else "LocalExecutor")
        )
        self.extra_env = extra_env or {}
        self.port = _free_port()
        self.password = secrets.token_urlsafe(12)
        self.queue = f"lethe-e2e-{uuid.uuid4().hex[:8]}"  # parallel stacks on one broker never share tasks
        self.metadata_url = ""
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._token: str | None = None
        self._jwt = secrets.token_hex(32)  # shared by the api-server and the workers' task tokens

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_folder(self) -> Path:
        return self.home / "logs"

    def env(self) -> dict[str, str]:
        """The environment of every Airflow process of this stack."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "_AIRFLOW"))}
        passwords = self.home / "passwords.json"
        metadata = self.metadata_url.replace("postgresql://", "postgresql+psycopg2://", 1)
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(self.plugins_folder or self.home / "plugins"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": self.executor,
                "AIRFLOW__CORE__PARALLELISM": "4",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
                "AIRFLOW__API_AUTH__JWT_SECRET": self._jwt,
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata,
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
                "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
                # Only triggered runs: an unpaused nightly DAG would otherwise start its latest interval.
                "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.log_folder),
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port()),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(_free_port()),
                "AIRFLOW__OPERATORS__DEFAULT_QUEUE": self.queue,
                "AIRFLOW__CELERY__BROKER_URL": f"redis://{REDIS[0]}:{REDIS[1]}/0",
                "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + self.metadata_url,
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
                "AIRFLOW_CONN_LETHE_PRIMARY": self.primary_url.replace("postgresql://", "postgres://", 1),
                "AIRFLOW_CONN_LETHE_AWS": json.dumps(
                    {
                        "conn_type": "aws",
                        "login": os.environ.get("AWS_ACCESS_KEY_ID", "lethe"),
                        "password": os.environ.get("AWS_SECRET_ACCESS_KEY", "lethe-secret"),
                        "extra": {"endpoint_url": self.s3_endpoint, "region_name": PRIMARY_REGION},
                    }
                ),
                "AIRFLOW_CONN_LETHE_PSEUDONYM_KEY": json.dumps({"conn_type": "generic", "password": self._key()}),
                "AIRFLOW_CONN_LETHE_AIRFLOW_METADATA": json.dumps(
                    {"conn_type": "generic", "extra": {"sql_alchemy_conn": metadata}}
                ),
            }
        )
        env.update(self.extra_env)
        return env

    def _key(self) -> str:
        return os.environ.get("LETHE_PSEUDONYM_KEY") or local_pseudonym_key()

    def start(self, timeout: float = 240) -> AirflowStack:
        import psycopg2
        import psycopg2.extensions

        from lethe.db import url_for_database

        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "passwords.json").write_text(json.dumps({ADMIN_USER: self.password}))
        name = f"lethe_airflow_{uuid.uuid4().hex[:10]}"
        admin = psycopg2.connect(**{**psycopg2.extensions.parse_dsn(self.metadata_server), "dbname": "postgres"})
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        admin.close()
        self.metadata_url = url_for_database(self.metadata_server, name)
        try:
            self._run(["db", "migrate"], "db-migrate", timeout=300)
            self._run(pool_command(), "pools", timeout=120)
            self._spawn("api-server", ["api-server", "--port", str(self.port)])
            self._spawn("scheduler", ["scheduler"])
            self._spawn("dag-processor", ["dag-processor"])
            if self.executor == "CeleryExecutor":
                self._spawn("celery-worker", ["celery", "worker", "--queues", self.queue, "--concurrency", "2"])
            self._wait_for_api(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _airflow(self, args: list[str]) -> list[str]:
        return [sys.executable, "-m", "airflow", *args]

    def _run(self, args: list[str], label: str, timeout: float) -> None:
        log = self.home / f"{label}.log"
        with log.open("wb") as out:
            done = subprocess.run(
                self._airflow(args), env=self.env(), stdout=out, stderr=subprocess.STDOUT, timeout=timeout
            )
        if done.returncode != 0:
            raise StackError(f"airflow {' '.join(args)} exited {done.returncode}: {self._tail(log)}")

    def _spawn(self, label: str, args: list[str]) -> None:
        log = (self.home / f"{label}.log").open("wb")
        self.processes[label] = subprocess.Popen(
            self._airflow(args), env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()

    def _tail(self, log: Path, lines: int = 15) -> str:
        try:
            return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def check_alive(self) -> None:
        for label, proc in self.processes.items():
            if proc.poll() is not None:
                raise StackError(f"{label} exited {proc.returncode}:\n{self._tail(self.home / f'{label}.log')}")

    def _wait_for_api(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                self.request("GET", "/api/v2/version")
                return
            except (urllib.error.URLError, OSError):
                time.sleep(1)
        raise StackError(f"api-server not answering after {timeout:.0f}s:\n{self._tail(self.home / 'api-server.log')}")

    def stop(self) -> None:
        """End every process group this stack started, then drop its metadata database."""
        for proc in self.processes.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in self.processes.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for proc in self.processes.values():  # children left behind in a group (task runners)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        self.processes.clear()
        if self.metadata_url:
            from lethe.testing import drop_database

            with contextlib.suppress(Exception):
                drop_database(self.metadata_url)
            self.metadata_url = ""

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
        with urllib.request.urlopen(req, timeout=30) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> None:
        """Until the dag-processor has parsed the DAG; then unpause it."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            try:
                self.request("GET", f"/api/v2/dags/{dag_id}")
                break
            except urllib.error.HTTPError as exc:
                if exc.code != 404 or time.monotonic() > deadline:
                    raise StackError(
                        f"DAG {dag_id} not available ({exc.code}):\n{self._tail(self.home / 'dag-processor.log')}"
                    ) from None
                time.sleep(2)
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
            state = str(self.request("GET", path)["state"])
            if state in TERMINAL:
                return state
            time.sleep(2)
        raise StackError(f"{dag_id} run {run_id} not finished after {timeout:.0f}s: {self.task_states(dag_id, run_id)}")

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances"
        return {ti["task_id"]: str(ti["state"]) for ti in self.request("GET", path)["task_instances"]}
