"""Where Lethe's state lives and how it reaches its services.

Everything comes from the environment, with defaults that work on a bare
machine: unset LETHE_DATABASE_URL / LETHE_S3_ENDPOINT_URL start the embedded
PostgreSQL and S3 server (lethe.embedded).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_DIR = PACKAGE_DIR.parent.parent
DEFAULT_POLICY_FILE = PACKAGE_DIR / "policy" / "reskill.yaml"

# The regions of the privacy policy: primary in Mumbai, backups in N. Virginia and Singapore.
PRIMARY_REGION = "ap-south-1"
BACKUP_REGIONS = ("us-east-1", "ap-southeast-1")


def lethe_home() -> Path:
    """Project-local state: embedded database, S3 data, Airflow home."""
    home = Path(os.environ.get("LETHE_HOME", PROJECT_DIR / ".lethe")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def local_s3_credentials() -> tuple[str, str]:
    """Access key and secret for a local S3 endpoint (the embedded server, MinIO): AWS_* or the defaults."""
    return os.environ.get("AWS_ACCESS_KEY_ID", "lethe"), os.environ.get("AWS_SECRET_ACCESS_KEY", "lethe-secret")


def policy_file() -> Path:
    return Path(os.environ.get("LETHE_POLICY_FILE", DEFAULT_POLICY_FILE))


@dataclass(frozen=True)
class Buckets:
    """Bucket names; one backup bucket per backup region."""

    @property
    def prefix(self) -> str:
        return os.environ.get("LETHE_BUCKET_PREFIX", "lethe")

    def backup(self, region: str) -> str:
        return f"{self.prefix}-backup-{region}"

    @property
    def sharing(self) -> str:
        return f"{self.prefix}-sharing"

    @property
    def evidence(self) -> str:
        return f"{self.prefix}-evidence"

    def all(self) -> dict[str, str]:
        """Bucket name -> region it lives in."""
        names = {self.backup(r): r for r in BACKUP_REGIONS}
        names[self.sharing] = PRIMARY_REGION
        names[self.evidence] = PRIMARY_REGION
        return names


BUCKETS = Buckets()
