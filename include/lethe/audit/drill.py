"""The weekly restore drill: the oldest and the newest snapshot of one region restored and checked.

A backup is only as good as its restore. Once a week (when the last drill that passed is older
than the interval, default 7 days; after a failed drill, at the next audit) compliance_audit
restores the oldest and the newest complete snapshot of one backup region, each into a scratch
database on the primary's server (lethe.audit.scratch), with `lethe restore`'s own code
(lethe.backup.restore), and checks the restored database with the audit's own checks, not the
restore's:

- `restore_failed.<which>`: the restore raised (its checksum, load or verification step);
- `erased_rows.<which>`: rows linked to an erased person by the keyed pseudonym of their subject
  key, and erased identifiers left in subject tables (lethe.audit.primary.erasure_residue);
- `erased_found_by_value.<which>`: an erased person found by value in any text-like column by the
  residue scanner (lethe.residue, through lethe.audit.primary.erasure_residue_scan);
- `orphan_rows.<which>` / `foreign_keys_missing.<which>`: rows whose foreign key finds no parent, for
  every key the primary declares among the policy's tables, and keys the restore lost;
- `snapshots_missing`: the region has no complete snapshot to restore.

The region is the parameter's, else the one drilled longest ago. The scratch database is dropped
afterwards, pass or fail. Each drill that ran is kept in `restore_drills` (migration 110): counts only.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Any

import psycopg2.extensions
import psycopg2.extras
from psycopg2 import sql

from lethe.audit.limits import RESTORE_DRILL_DAYS
from lethe.config import BACKUP_REGIONS, BUCKETS
from lethe.db import ConfigurationError, table, transaction
from lethe.quality import CheckResult, expect_counts

SUITE = "restore_drill"
INTERVAL_DAYS = RESTORE_DRILL_DAYS
LABELS = ("oldest", "newest")
DRILLS = "restore_drills"  # migration 110

_log = logging.getLogger(__name__)


def last_drills(cur: psycopg2.extensions.cursor) -> dict[str, Any]:
    """The last drill recorded (finished_at, region, success) and, per region, when it was last drilled."""
    cur.execute(
        sql.SQL("SELECT finished_at, region, success FROM {} ORDER BY finished_at DESC LIMIT 1").format(table(DRILLS))
    )
    last = cur.fetchone()
    cur.execute(sql.SQL("SELECT region, max(finished_at) FROM {} GROUP BY region").format(table(DRILLS)))
    return {"last": last, "regions": dict(cur.fetchall())}


def choose_region(drilled: dict[str, datetime]) -> str:
    """The backup region drilled longest ago (never drilled first, in the policy's order)."""
    never = [r for r in BACKUP_REGIONS if r not in drilled]
    return never[0] if never else min(BACKUP_REGIONS, key=lambda r: drilled[r])


def run_drill(
    db_url: str,
    endpoint_url: str | None,
    key: bytes,
    now: datetime,
    run_id: str,
    *,
    interval_days: float = INTERVAL_DAYS,
    region: str | None = None,
    database: str | None = None,
) -> CheckResult:
    """The drill's checks, or one `skipped` check naming the last drill while it passed and is recent."""
    from lethe.audit import scratch

    name = scratch.check_name(db_url, database or scratch.default_name(db_url))
    if region is not None and region not in BACKUP_REGIONS:
        raise ConfigurationError(f"restore drill region {region!r}: not a backup region ({', '.join(BACKUP_REGIONS)})")
    with transaction(db_url) as cur:
        state = last_drills(cur)
    last = state["last"]
    if last and last[2] and now - last[0] < timedelta(days=interval_days):  # a failed drill is retried
        at, where, _ = last
        due = at + timedelta(days=interval_days)
        return expect_counts(
            SUITE,
            {"skipped": 0},
            where={"skipped": f"last drill passed {at:%Y-%m-%d %H:%M} UTC ({where}); next due {due:%Y-%m-%d}"},
            details={"skipped": {"last_drill_at": at.isoformat(), "region": where, "next_due_at": due.isoformat()}},
        )
    region = region or choose_region(state["regions"])
    started = datetime.now(now.tzinfo)
    counts, where, details = drill_region(db_url, endpoint_url, key, region, name)
    success = not any(counts.values())
    with transaction(db_url) as cur:
        cur.execute(
            sql.SQL(
                "INSERT INTO {} (run_id, region, snapshots, started_at, success, counts)"
                " VALUES (%s, %s, %s, %s, %s, %s)"
            ).format(table(DRILLS)),
            (
                run_id,
                region,
                sorted({d["snapshot_id"] for d in details.values() if d.get("snapshot_id")}),
                started,
                success,
                psycopg2.extras.Json(counts),
            ),
        )
    return expect_counts(SUITE, counts, where=where, details=details)


def drill_region(
    db_url: str, endpoint_url: str | None, key: bytes, region: str, database: str
) -> tuple[dict[str, int], dict[str, str], dict[str, dict[str, Any]]]:
    """Restore and check the region's oldest and newest complete snapshot: (counts, where, details)."""
    from lethe.backup import layout, manifest, store

    endpoint = layout.region_endpoint(region, endpoint_url)
    # the ids only: one snapshot's unreadable manifest (an index object deleted outside Lethe) fails its restore,
    # not the drill of the others
    snapshots = manifest.complete_snapshot_ids(store.region_client(region, endpoint), BUCKETS.backup(region))
    if not snapshots:
        return (
            {"snapshots_missing": 1},
            {"snapshots_missing": f"region {region}"},
            {"snapshots_missing": {"region": region}},
        )
    chosen = {"oldest": snapshots[0], "newest": snapshots[-1]}
    done: dict[str, tuple[dict[str, int], dict[str, Any]]] = {}  # snapshot -> its outcome (one restore each)
    counts: dict[str, int] = {}
    where: dict[str, str] = {}
    details: dict[str, dict[str, Any]] = {}
    for label in LABELS:
        sid = chosen[label]
        if sid not in done:
            done[sid] = drill_snapshot(db_url, endpoint, key, region, sid, database)
        found, info = done[sid]
        for check, n in found.items():
            counts[f"{check}.{label}"] = n
            where[f"{check}.{label}"] = f"region {region}, snapshot {sid}"
            details[f"{check}.{label}"] = info
    return counts, where, details


def drill_snapshot(
    db_url: str, endpoint: str | None, key: bytes, region: str, sid: str, database: str
) -> tuple[dict[str, int], dict[str, Any]]:
    """Restore one snapshot into the scratch database, check it, drop it."""
    from lethe.audit import scratch
    from lethe.backup.restore import restore_snapshot
    from lethe.policy import load_policy

    policy = load_policy()
    info: dict[str, Any] = {"snapshot_id": sid, "region": region, "database": database}
    started = time.monotonic()
    target = scratch.create(db_url, database)
    try:
        error = None
        try:
            report = restore_snapshot(
                sid, region, target, endpoint_url=endpoint, key=key, primary_url=db_url, out=lambda _: None
            )
            info["rows_loaded"] = sum(report.rows_loaded.values())
            info["tombstones_replayed"] = report.tombstones_replayed
        except ConfigurationError as exc:  # Lethe's own messages name tables and counts, never values
            error = str(exc)[:500]
        except Exception as exc:  # anything else: its class only (a driver's message can quote a row)
            error = type(exc).__name__
        if error:
            _log.warning("restore drill: snapshot %s from %s did not restore cleanly: %s", sid, region, error)
            info["restore_error"] = error
        found = {"restore_failed": int(error is not None), **check_restored(db_url, target, policy, key, info)}
    finally:
        scratch.drop(db_url, database)
    info["seconds"] = round(time.monotonic() - started, 1)
    return found, info


def check_restored(db_url: str, target: str, policy: Any, key: bytes, info: dict[str, Any]) -> dict[str, int]:
    """The audit's erasure checks (against the primary's tombstones) and a foreign-key count over the
    restored database."""
    from lethe.audit import primary
    from lethe.backup import links

    tables = list(policy.tables)
    with transaction(db_url) as cur:
        expected = links.foreign_keys(cur, tables)
        erased = primary.tombstones_of(cur)  # the live primary's: everyone erased so far, whatever the snapshot says
    with transaction(target) as cur:
        residue = primary.erasure_residue(cur, policy, key, erased)
        scan, _ = primary.erasure_residue_scan(cur, policy, key, erased)
        have = links.foreign_keys(cur, tables)
        declared = {fk.describe() for fk in have}
        missing = sorted(fk.describe() for fk in expected if fk.describe() not in declared)
        orphans = {}
        for name, fk in sorted({fk.describe(): fk for fk in [*expected, *have]}.items()):
            n = links.orphans(cur, fk)
            if n:
                orphans[name] = n
    info["erased_rows"] = {k: v for k, v in residue.items() if v}
    info["erased_found_by_value"] = {k: v for k, v in scan.items() if v and k != "erased_found_by_value"}
    info["orphan_rows"] = orphans
    info["foreign_keys_missing"] = missing
    info["foreign_keys_checked"] = len(expected)
    return {
        "erased_rows": sum(residue.values()),
        "erased_found_by_value": scan["erased_found_by_value"],
        "orphan_rows": sum(orphans.values()),
        "foreign_keys_missing": len(missing),
    }
