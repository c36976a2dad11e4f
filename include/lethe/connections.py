"""Resolve Lethe's services inside Airflow tasks, from the Airflow connections.

Outside Airflow (CLI, tests) the environment variables are used directly.
"""

from __future__ import annotations

import os
from typing import Any

from lethe.db import ConfigurationError

PRIMARY_CONN_ID = "lethe_primary"
AWS_CONN_ID = "lethe_aws"
PSEUDONYM_KEY_CONN_ID = "lethe_pseudonym_key"


def _airflow_connection(conn_id: str) -> Any | None:
    try:
        from airflow.sdk import Connection
    except ImportError:
        return None
    try:
        return Connection.get(conn_id)
    except Exception:
        return None


def primary_url() -> str:
    conn = _airflow_connection(PRIMARY_CONN_ID)
    if conn is not None:
        return str(conn.get_uri()).replace("postgres://", "postgresql://", 1)
    url = os.environ.get("LETHE_DATABASE_URL")
    if not url:
        raise ConfigurationError(f"neither the Airflow connection {PRIMARY_CONN_ID!r} nor LETHE_DATABASE_URL is set")
    return url


def s3_endpoint_url() -> str | None:
    conn = _airflow_connection(AWS_CONN_ID)
    if conn is not None:
        extra = conn.extra_dejson or {}
        if extra.get("endpoint_url"):
            os.environ.setdefault("AWS_ACCESS_KEY_ID", conn.login or "lethe")
            os.environ.setdefault("AWS_SECRET_ACCESS_KEY", conn.password or "lethe-secret")
            return str(extra["endpoint_url"])
    return os.environ.get("LETHE_S3_ENDPOINT_URL") or None


def pseudonym_key() -> bytes:
    """The HMAC key for pseudonyms: never a bare hash, so a pseudonym cannot be recomputed without it."""
    conn = _airflow_connection(PSEUDONYM_KEY_CONN_ID)
    key = conn.password if conn is not None else os.environ.get("LETHE_PSEUDONYM_KEY")
    if not key:
        raise ConfigurationError(
            f"no pseudonym key: define the Airflow connection {PSEUDONYM_KEY_CONN_ID!r} (password field) "
            "or LETHE_PSEUDONYM_KEY"
        )
    return str(key).encode()


def pseudonym_key_or_local() -> bytes:
    """pseudonym_key(); outside Airflow with no LETHE_PSEUDONYM_KEY, the local demo key under LETHE_HOME
    (made once, as `lethe demo` and `lethe up` do for the embedded primary)."""
    try:
        return pseudonym_key()
    except ConfigurationError:
        from lethe.airflow_env import local_pseudonym_key

        return local_pseudonym_key().encode()


def processor_credentials(conn_id: str) -> Any | None:
    """A processor's Airflow connection as lethe.processors.Credentials; None when it is not defined."""
    from lethe.processors.base import Credentials

    conn = _airflow_connection(conn_id)
    if conn is None:
        return None
    host = str(conn.host or "")
    if host and "://" not in host:  # as Airflow's HttpHook builds its base URL
        host = f"{conn.schema or 'https'}://{host}"
    if host and conn.port:
        host = f"{host}:{conn.port}"
    extra = dict(conn.extra_dejson or {})
    return Credentials(conn_id, host=host, login=conn.login, password=conn.password, extra=extra)
