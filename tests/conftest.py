"""Fixtures: real PostgreSQL and S3 over HTTP, embedded when LETHE_* is unset.

- `services`: (database URL, S3 endpoint) for the session, via lethe.embedded.services.
- `db_url`: a fresh migrated database for one test, exported as LETHE_DATABASE_URL.
- `s3_endpoint`: the S3 endpoint with Lethe's buckets present and empty.
- `airflow_home`: Airflow configured against both (SQLite metadata, migrated once).

Every S3 operation Lethe's code makes in the run is recorded (tests/s3_calls.py); the run fails
if docs/deployment.md's IAM policy does not grant one of them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import own_schema
import pytest
from hypothesis import HealthCheck, settings
from lethe import airflow_env, testing
from lethe.embedded import services as start_services
from s3_calls import RECORDER, documented_policy


def pytest_configure(config: pytest.Config) -> None:
    """Configure Airflow before any test module imports it (Airflow reads its settings on import)."""
    # Property tests judge the code, not the machine: a loaded CI worker must not fail them on timing.
    settings.register_profile("lethe", deadline=None, suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile("lethe")
    airflow_env.configure_home(Path(tempfile.mkdtemp(prefix="lethe-test-airflow-")))
    # The tests' own connections see Lethe's tables as Lethe's do: platform schema first, then Lethe's.
    from lethe.db import search_path

    os.environ.setdefault("PGOPTIONS", f"-c search_path={search_path()}")
    # Ledger anchors are locked in GOVERNANCE mode here, so emptying the buckets between tests may bypass it.
    os.environ.setdefault("LETHE_LEDGER_ANCHOR_LOCK_MODE", "GOVERNANCE")
    RECORDER.install()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Every S3 operation Lethe made in this run must be granted by docs/deployment.md's IAM policy."""
    missing = RECORDER.ungranted(documented_policy())
    if missing:
        print("\nS3 operations Lethe made that the IAM policy in docs/deployment.md does not grant:")
        for line in missing:
            print(f"  {line}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def services() -> Iterator[tuple[str, str]]:
    # Not under pytest's basetemp: another pytest run on the machine may rotate that away
    # while this session's embedded PostgreSQL still has its data directory there.
    home = Path(tempfile.mkdtemp(prefix="lethe-test-home-"))
    os.environ.setdefault("LETHE_HOME", str(home))
    try:
        with start_services(stop_started=True) as (db, s3):
            testing.build_template(db)
            yield db, s3
            testing.drop_template(db)
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def db_url(services: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    url = testing.fresh_database(services[0])
    own_schema.as_primary(monkeypatch, url)
    yield url
    testing.drop_database(url)


@pytest.fixture
def s3_endpoint(services: tuple[str, str]) -> str:
    testing.empty_buckets(services[1])
    return services[1]


@pytest.fixture(scope="session")
def airflow_home(services: tuple[str, str]) -> Iterator[Path]:
    home = airflow_env.configure(services[0], services[1], Path(os.environ["AIRFLOW_HOME"]))
    airflow_env.migrate_metadata()
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(autouse=True)
def _phone_region_of_the_shipped_policy() -> Iterator[None]:
    """A test that loads another policy (a Dutch shop: NL) sets how national numbers read for the process, as a
    worker does for its deployment; the next test reads them as the shipped policy does."""
    from lethe import residue

    yield
    residue.set_phone_region(None)
