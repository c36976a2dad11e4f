"""Task log files of Lethe's runs on the local (or shared) log volume.

Airflow's default layout is <base>/dag_id=<dag>/run_id=<run>/task_id=<task>/attempt=<n>.log.
Remote log storage (S3, GCS, ...) is expired by that store's lifecycle rules instead
(docs/deployment.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path


def log_folder() -> Path:
    from airflow.configuration import conf

    return Path(conf.get("logging", "base_log_folder"))


def _remove(files: Iterable[Path], dry_run: bool) -> int:
    count = 0
    for path in files:
        count += 1
        if not dry_run:
            path.unlink(missing_ok=True)
    return count


def _prune_empty(root: Path) -> None:
    for directory in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            directory.rmdir()  # only succeeds when empty


def remove_run_logs(base: Path, runs: Sequence[tuple[str, str]], *, dry_run: bool = False) -> int:
    """Remove every log file of these (dag_id, run_id) runs; return how many."""
    count = 0
    for dag_id, run_id in runs:
        folder = base / f"dag_id={dag_id}" / f"run_id={run_id}"
        if folder.is_dir():
            count += _remove([p for p in folder.rglob("*") if p.is_file()], dry_run)
            if not dry_run:
                _prune_empty(folder)
                with contextlib.suppress(OSError):
                    folder.rmdir()
    return count


def remove_logs_older(base: Path, dag_ids: Sequence[str], before: datetime, *, dry_run: bool = False) -> int:
    """Remove log files of these DAGs last written before `before`; return how many."""
    cutoff = before.timestamp()
    count = 0
    for dag_id in dag_ids:
        folder = base / f"dag_id={dag_id}"
        if folder.is_dir():
            old = [p for p in folder.rglob("*") if p.is_file() and p.stat().st_mtime < cutoff]
            count += _remove(old, dry_run)
            if not dry_run:
                _prune_empty(folder)
    return count
