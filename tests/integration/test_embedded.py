"""The embedded defaults are real servers: PostgreSQL on 127.0.0.1, S3 over HTTP with versioned buckets."""

from __future__ import annotations

from pathlib import Path

import psycopg2
import pytest
from lethe.config import BUCKETS
from lethe.embedded import EmbeddedPostgres
from lethe.storage import s3_client

pytestmark = pytest.mark.integration


def test_embedded_postgres_starts_reuses_and_stops(tmp_path: Path) -> None:
    first = EmbeddedPostgres(tmp_path / "pg")
    url = first.start()
    try:
        assert url.startswith("postgresql://postgres@127.0.0.1:")
        with psycopg2.connect(url) as conn, conn.cursor() as cur:
            cur.execute("SHOW server_version_num")
            assert int(cur.fetchone()[0]) >= 150000
        second = EmbeddedPostgres(tmp_path / "pg")
        assert second.start() == url and not second.started_here  # found the running server
    finally:
        first.stop()
    assert not first.running()


def test_buckets_are_versioned_and_encrypted(s3_endpoint: str) -> None:
    for bucket, region in BUCKETS.all().items():
        client = s3_client(region, s3_endpoint)
        assert client.meta.endpoint_url == s3_endpoint
        assert client.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
        rules = client.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
        assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
