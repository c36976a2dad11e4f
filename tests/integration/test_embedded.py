"""The embedded defaults are real servers: PostgreSQL on 127.0.0.1, S3 over HTTP with versioned buckets."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil
import psycopg2
import pytest
from lethe.config import BUCKETS
from lethe.embedded import EmbeddedPostgres, EmbeddedS3
from lethe.storage import s3_client

pytestmark = pytest.mark.integration


def test_embedded_postgres_starts_reuses_and_stops() -> None:
    # Not under pytest's tmp_path: another pytest run resets its permissions, locking PostgreSQL's user out.
    home = Path(tempfile.mkdtemp(prefix="lethe-test-pg-"))
    first = EmbeddedPostgres(home / "pg")
    url = first.start()
    try:
        assert url.startswith("postgresql://postgres@127.0.0.1:")
        with psycopg2.connect(url) as conn, conn.cursor() as cur:
            cur.execute("SHOW server_version_num")
            assert int(cur.fetchone()[0]) >= 150000
        second = EmbeddedPostgres(home / "pg")
        assert second.start() == url and not second.started_here  # found the running server
    finally:
        first.stop()
    assert not first.running()
    shutil.rmtree(home, ignore_errors=True)


def test_buckets_are_versioned_and_encrypted(s3_endpoint: str) -> None:
    for bucket, region in BUCKETS.all().items():
        client = s3_client(region, s3_endpoint)
        assert client.meta.endpoint_url == s3_endpoint
        assert client.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
        rules = client.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
        assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"


def _lethe(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "lethe.cli", *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"lethe {' '.join(args)} failed:\n{done.stderr[-3000:]}"
    return done.stdout


def _rows(url: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(query)
        return cur.fetchall()


def test_a_snapshot_taken_by_one_command_is_restored_by_another_on_the_embedded_defaults() -> None:
    """Each step is its own process on a fresh LETHE_HOME; the servers are stopped before the restore."""
    # Not under pytest's tmp_path: another pytest run resets its permissions, locking PostgreSQL's user out.
    home = Path(tempfile.mkdtemp(prefix="lethe-test-cli-home-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LETHE_", "AIRFLOW_CONN_"))}
    env["LETHE_HOME"] = str(home)
    try:
        _lethe(env, "db", "migrate")
        _lethe(env, "seed", "--users", "40", "--events-per-user", "3")
        snapshot_id = _lethe(env, "backup", "snapshot").split()[-1]
        status = _lethe(env, "services", "status")
        assert status.count(" running ") == 2, status
        pids = [int(line.split()[3]) for line in status.splitlines()]

        _lethe(env, "services", "stop")  # whatever the restore reads must have survived this
        assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids)
        # Lethe migrates only its own schema in the target: the platform's tables come first.
        _lethe(env, "seed", "--platform-only", "--database", "restored")
        _lethe(env, "restore", "--snapshot", snapshot_id, "--region", "ap-southeast-1", "--target", "restored")

        primary = EmbeddedPostgres(home / "pgdata").url
        restored = primary.rsplit("/", 1)[0] + "/restored"
        query = "SELECT user_id, email, username FROM accounts ORDER BY user_id"
        assert len(_rows(primary, query)) == 40
        assert _rows(restored, query) == _rows(primary, query)
        client = s3_client("ap-southeast-1", EmbeddedS3(home / "s3data").url)
        assert client.get_bucket_versioning(Bucket=BUCKETS.backup("ap-southeast-1"))["Status"] == "Enabled"
    finally:
        _lethe(env, "services", "stop")
        status = _lethe(env, "services", "status")
        shutil.rmtree(home, ignore_errors=True)
    assert status.count(" stopped ") == 2, status
