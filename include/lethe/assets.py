"""Airflow assets Lethe's DAGs emit and consume (URIs are part of the contract)."""

from __future__ import annotations


def purged_table_uri(table: str) -> str:
    """Emitted by retention_nightly for each table it purged rows from."""
    return f"lethe://primary/{table}"


ERASURE_TOMBSTONES_URI = "lethe://primary/erasure_tombstones"  # emitted by subject_erasure
BACKUP_SNAPSHOTS_URI = "lethe://backups/snapshots"  # emitted by backup_nightly
# emitted by backup_nightly when, after its snapshots, an erasure is not yet applied in every region
BACKUP_ERASURES_UNAPPLIED_URI = "lethe://backups/erasures_unapplied"
BACKUP_PROPAGATION_URI = "lethe://backups/propagation"  # emitted by backup_erasure_propagation
SHARING_RELEASES_URI = "lethe://sharing/releases"  # emitted by usage_sharing
