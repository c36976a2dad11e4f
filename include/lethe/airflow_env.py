"""Airflow configuration for the CLI, the demo and the tests.

Must run before Airflow is imported: it points Airflow at a project-local home
(SQLite metadata, no example DAGs, this project's dags/ folder) and exposes the
services as the `lethe_primary` / `lethe_aws` connections.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

from lethe.config import PRIMARY_REGION, PROJECT_DIR, lethe_home, local_s3_credentials

DAGS_FOLDER = PROJECT_DIR / "dags"
PLUGINS_FOLDER = PROJECT_DIR / "plugins"  # the Privacy compliance page (plugins/lethe_compliance)


def pseudonym_key_file() -> Path:
    return lethe_home() / "pseudonym.key"


def local_pseudonym_key() -> str:
    """The demo's HMAC key, made once per LETHE_HOME. Production keeps it in a secrets backend."""
    path = pseudonym_key_file()
    if not path.exists():
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()


def configure_home(home: Path) -> Path:
    """Point Airflow at `home` (SQLite metadata, this project's dags/ and plugins/, no examples)."""
    home.mkdir(parents=True, exist_ok=True)
    os.environ.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS_FOLDER),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        }
    )
    return home


def configure(database_url: str, s3_endpoint_url: str, airflow_home: Path | None = None) -> Path:
    """Configure Airflow's home and expose the services as Lethe's connections; return AIRFLOW_HOME."""
    home = configure_home(airflow_home or Path(os.environ.get("AIRFLOW_HOME") or lethe_home() / "airflow"))
    os.environ["AIRFLOW_CONN_LETHE_PRIMARY"] = database_url.replace("postgresql://", "postgres://", 1)
    key_id, secret = local_s3_credentials()
    os.environ["AIRFLOW_CONN_LETHE_AWS"] = json.dumps(
        {
            "conn_type": "aws",
            "login": key_id,
            "password": secret,
            "extra": {"endpoint_url": s3_endpoint_url, "region_name": PRIMARY_REGION},
        }
    )
    if "AIRFLOW_CONN_LETHE_PSEUDONYM_KEY" not in os.environ:
        os.environ["AIRFLOW_CONN_LETHE_PSEUDONYM_KEY"] = json.dumps(
            {"conn_type": "generic", "password": local_pseudonym_key()}
        )
    return home


POOL_DESCRIPTION = "Lethe tasks loading the primary database"


def pool_command() -> list[str]:
    """`airflow ...` arguments that create (or resize) the pool every Lethe task takes a slot of."""
    from lethe.dag_defaults import PRIMARY_POOL, PRIMARY_POOL_SLOTS

    return ["pools", "set", PRIMARY_POOL, str(PRIMARY_POOL_SLOTS), POOL_DESCRIPTION]


def migrate_metadata() -> None:
    """`airflow db migrate` and Lethe's pool once per AIRFLOW_HOME (dag.test needs the metadata tables)."""
    marker = Path(os.environ["AIRFLOW_HOME"]) / ".lethe-migrated"
    if marker.exists():
        return
    for args in (["db", "migrate"], pool_command()):
        subprocess.run(
            [sys.executable, "-m", "airflow", *args], check=True, stdout=subprocess.DEVNULL, env=os.environ.copy()
        )
    marker.write_text("ok")
