"""A database of the tests' own schema and policy, made Lethe's primary: what a company Lethe never saw looks like."""

from __future__ import annotations

from pathlib import Path

import psycopg2
import pytest


def as_primary(monkeypatch: pytest.MonkeyPatch, url: str, policy: Path | None = None) -> None:
    """Point Lethe (and the DAGs' lethe_primary connection) at `url`, and at `policy` when given."""
    monkeypatch.setenv("LETHE_DATABASE_URL", url)
    monkeypatch.setenv("AIRFLOW_CONN_LETHE_PRIMARY", url.replace("postgresql://", "postgres://", 1))
    if policy is not None:
        monkeypatch.setenv("LETHE_POLICY_FILE", str(policy))


def database(
    server_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, schema: str, policy: str
) -> str:
    """An empty database `name` holding `schema` (SQL), with `policy` (YAML text) as the policy file: the primary."""
    from lethe import testing

    url = testing.empty_database(server_url, name)
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(schema)
    path = tmp_path / "policy.yaml"
    path.write_text(policy)
    as_primary(monkeypatch, url, path)
    return url
