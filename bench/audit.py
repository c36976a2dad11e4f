"""The backups audit: time after a night's change, beside downloading every snapshot byte (the old audit's floor).

One region, `--snapshots` retained snapshots of one seeded database, 20 erasures already propagated. Then
a night: one new snapshot, and (second case) 5 new erasures propagated. Measured in the same run:
- anchor: GET every object of every retained snapshot, one after another (what the audit used to do
  before it computed anything);
- the audit after the night with no new erasure: every object's size from the bucket listing
  (ListObjectsV2, 1,000 keys a request), contents of the new snapshot and of a random sample of 8 older
  objects (read and hashed);
- the audit after the night with 5 new erasures: also the objects they can be in, and every free-text
  object (mentions of them can be anywhere);
- the first audit (no earlier one to start from): everything read, as before.

Run: `lethe bench audit` (default 20,000 users, 7 snapshots) or `uv run python bench/audit.py --users 2000`.
"""

from __future__ import annotations

import argparse
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

KEY = b"bench-pseudonym-key"
REGION = "us-east-1"


def _erase(url: str, s3_url: str, user_ids: list[int], policy: Any, days_ago: int = 0) -> None:
    """Tombstones, the erased people's emails redacted in others' free text on the primary (as subject_erasure
    does; the seed's mentions are emails), then propagation into the region's snapshots."""
    from lethe.backup.propagate import propagate_region
    from lethe.db import transaction
    from lethe.testing import insert_tombstones
    from psycopg2 import sql

    with transaction(url) as cur:
        insert_tombstones(cur, KEY, user_ids)
        # Erased `days_ago`: the evening's erasures are older than the audit that follows them.
        cur.execute("UPDATE erasure_tombstones SET erased_at = erased_at - make_interval(days => %s)", (days_ago,))
        cur.execute("SELECT email FROM accounts WHERE user_id = ANY(%s)", (user_ids,))
        emails = [e for (e,) in cur.fetchall() if e]
        for table, rule in policy.tables.items():
            for column in rule.free_text:
                for email in emails:
                    cur.execute(
                        sql.SQL("UPDATE {t} SET {c} = replace({c}, %s, '[erased]') WHERE {c} LIKE %s").format(
                            t=sql.Identifier(table), c=sql.Identifier(column)
                        ),
                        (email, f"%{email}%"),
                    )
    propagate_region(url, REGION, s3_url, key=KEY)


def _download_all(s3_url: str) -> tuple[float, int, int]:
    """Seconds, bytes and objects to GET every object every complete manifest names."""
    from lethe.backup import manifest, store
    from lethe.config import BUCKETS

    t0 = time.perf_counter()
    client = store.region_client(REGION, s3_url)
    bucket = BUCKETS.backup(REGION)
    total = objects = 0
    for m in manifest.complete_manifests(client, bucket):
        for obj in m.objects:
            total += len(store.get(client, bucket, obj.key))
            objects += 1
    return time.perf_counter() - t0, total, objects


def _audit(url: str, s3_url: str, since: Any, prefilter: bool = True) -> tuple[float, dict[str, int], dict[str, Any]]:
    """One audit of the region as compliance_audit runs it; without `prefilter`, every text is matched in full
    (as with tombstones from before their prefilter terms)."""
    from lethe.audit.backups import DEFAULT_RPO, audit_region, tombstones
    from lethe.backup.mentions import MentionFinder

    t0 = time.perf_counter()
    found = tombstones(url)
    finder = MentionFinder(KEY, frozenset(found.identifiers_at), found.prefilter if prefilter else None)
    counts, details = audit_region(REGION, s3_url, found, datetime.now(UTC), DEFAULT_RPO * 30, finder, since)
    return time.perf_counter() - t0, counts, details


def _progress(what: str) -> None:
    """One line per phase as it ends: a 100,000-user run takes long enough to want to know where it is."""
    print(f"[{datetime.now(UTC):%H:%M:%S}] {what}", flush=True)


def _line(name: str, seconds: float, anchor_s: float, counts: dict[str, int], details: dict[str, Any]) -> str:
    failed = sorted(k for k, v in counts.items() if v)
    return (
        f"{name}: {seconds:.2f} s = {seconds / anchor_s:.2f}x the download; {details['objects']:,} objects checked,"
        f" {details['objects_read']:,} read ({details['bytes_read'] / 1e6:.1f} of {details['bytes'] / 1e6:.1f} MB);"
        f" read because {details['read_because']}; failed checks: {failed or 'none'}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lethe bench audit")
    parser.add_argument("--users", type=int, default=20_000, help="accounts to seed (default 20,000)")
    parser.add_argument("--snapshots", type=int, default=7, help="snapshots retained before the night (default 7)")
    parser.add_argument(
        "--short",
        action="store_true",
        help="skip the audit without prefilter and the last full read (the first audit reads everything too)",
    )
    args = parser.parse_args(argv)

    from lethe.audit.backups import Baseline
    from lethe.backup.snapshot import take_snapshot
    from lethe.db import transaction
    from lethe.embedded import services
    from lethe.policy import load_policy
    from lethe.testing import seeded_platform

    policy = load_policy()
    rng = random.Random(11)
    start = datetime(2026, 11, 1, 2, tzinfo=UTC)
    with services(stop_started=True) as (server_url, s3_url):
        url = seeded_platform(server_url, s3_url, "lethe_bench_audit", args.users)
        _progress(f"seeded {args.users:,} users")
        with transaction(url) as cur:
            cur.execute("SELECT user_id FROM accounts ORDER BY user_id")
            user_ids = [r[0] for r in cur.fetchall()]
        t0 = time.perf_counter()
        for day in range(args.snapshots):
            sid = (start + timedelta(days=day)).strftime("%Y%m%dT%H%M%SZ")
            take_snapshot(url, REGION, s3_url, sid, policy, KEY)
        snapshots_s = time.perf_counter() - t0
        _progress(f"{args.snapshots} snapshots taken in {snapshots_s:.1f} s")
        _erase(url, s3_url, rng.sample(user_ids, 20), policy, days_ago=1)
        time.sleep(1.1)  # S3's clock has one-second steps: the audit below lists after every write above

        # The audit of the evening before: everything read (no earlier audit), which becomes the baseline.
        first_s, counts, details = _audit(url, s3_url, None)
        _progress(f"first audit (everything read) {first_s:.1f} s")
        assert not any(counts.values()), counts
        baseline = Baseline(datetime.fromisoformat(details["listed_at"]), frozenset(details["snapshot_ids"]))

        # The night: one new snapshot.
        sid = (start + timedelta(days=args.snapshots)).strftime("%Y%m%dT%H%M%SZ")
        take_snapshot(url, REGION, s3_url, sid, policy, KEY)
        download_s, download_bytes, download_objects = _download_all(s3_url)
        _progress(f"anchor (GET every byte) {download_s:.1f} s")
        quiet_s, quiet_counts, quiet = _audit(url, s3_url, baseline)
        _progress(f"audit, new snapshot only {quiet_s:.1f} s")
        if not args.short:
            unfiltered = _audit(url, s3_url, baseline, prefilter=False)
            _progress(f"audit, new snapshot only, every text matched in full {unfiltered[0]:.1f} s")
        # The same night with 5 erasures carried into the backups too.
        _erase(url, s3_url, rng.sample(user_ids, 5), policy)
        busy_s, busy_counts, busy = _audit(url, s3_url, baseline)
        _progress(f"audit, new snapshot + 5 erasures {busy_s:.1f} s")
        full = None if args.short else _audit(url, s3_url, None)

    lines = [
        f"seeded {args.users:,} users; {args.snapshots} snapshots taken in {snapshots_s:.1f} s, 20 erasures"
        f" propagated; first audit (everything read) {first_s:.2f} s",
        f"after the night ({args.snapshots + 1} snapshots, {download_objects:,} objects,"
        f" {download_bytes / 1e6:.1f} MB):",
        f"anchor, GET every snapshot byte: {download_s:.2f} s ({download_bytes / 1e6 / download_s:.0f} MB/s)",
        _line("audit, new snapshot only", quiet_s, download_s, quiet_counts, quiet),
        _line("audit, new snapshot + 5 erasures", busy_s, download_s, busy_counts, busy),
    ]
    if not args.short:
        unfiltered_s, unfiltered_counts, unfiltered_details = unfiltered
        lines.insert(
            4,
            _line(
                "the same without the tombstones' prefilter (every text matched)",
                unfiltered_s,
                download_s,
                unfiltered_counts,
                unfiltered_details,
            ),
        )
        assert full is not None
        lines.append(_line("audit reading everything (first audit, the old way)", full[0], download_s, *full[1:]))
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
