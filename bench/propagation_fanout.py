"""Propagation fanned out over snapshots: one erasure carried into K retained snapshots by one worker, beside
the same work split into one task per snapshot on W worker processes (what backup_erasure_propagation's
mapped `propagate_snapshot` tasks give Celery workers).

The K snapshots are taken into the first region and copied server-side into the second, so both regions hold
the same objects. Each round writes one new tombstone (with the pseudonyms of the person's identifiers, as
subject_erasure writes it: every free-text object is searched for mentions, the default without term indexes)
and propagates it in both regions: one side in one child process (`propagate_region`, snapshot after
snapshot: the anchor), the other as `plan_region`, then `propagate_snapshot` for each snapshot on a pool of W
child processes, then `finish_region`. Rounds alternate which region takes which side and which side runs
first. Both sides must report the same rewrites (objects, rows deleted, mentions redacted); each worker's peak
resident memory is its own `ru_maxrss`.

Run: `uv run python bench/propagation_fanout.py` (default 20,000 users, 4 snapshots, 2 workers, 2 rounds).
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import resource
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

KEY = b"bench-pseudonym-key"
CHECKED = ("objects_rewritten", "rows_deleted", "rows_pseudonymised", "mentions_redacted", "objects_read")


def _one_worker(url: str, region: str, s3: str) -> tuple[dict[str, Any], float]:
    from lethe.backup.propagate import propagate_region

    result = propagate_region(url, region, s3, key=KEY).as_dict()
    return result, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _one_snapshot(url: str, region: str, s3: str, sid: str) -> tuple[dict[str, Any], float]:
    from lethe.backup.propagate import propagate_snapshot

    result = propagate_snapshot(url, region, s3, sid, key=KEY).as_dict()
    return result, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _pool(workers: int) -> ProcessPoolExecutor:
    # a fresh process per task, as a worker runs each task: no memory carried from one snapshot to the next
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=1)


def _sequential(url: str, region: str, s3: str) -> tuple[dict[str, Any], float, float]:
    t0 = time.perf_counter()
    with _pool(1) as pool:
        result, peak = pool.submit(_one_worker, url, region, s3).result()
    return result, time.perf_counter() - t0, peak


def _fanned_out(url: str, region: str, s3: str, workers: int) -> tuple[dict[str, Any], float, float]:
    from lethe.backup.propagate import RegionResult, finish_region, plan_region

    t0 = time.perf_counter()
    snapshots, removed = plan_region(url, region, s3)
    total = RegionResult(region=region, incomplete_snapshots_removed=removed)
    with _pool(workers) as pool:
        done = [f.result() for f in [pool.submit(_one_snapshot, url, region, s3, sid) for sid in snapshots]]
    for part, _ in done:
        total.add(part)
    finish_region(url, region, s3, total)
    return total.as_dict(), time.perf_counter() - t0, max(peak for _, peak in done)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/propagation_fanout.py", description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=20_000, help="accounts to seed (default 20,000)")
    parser.add_argument("--snapshots", type=int, default=4, help="retained snapshots (default 4)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the fanned-out side (default 2)")
    parser.add_argument("--rounds", type=int, default=2, help="erasures, one a round (default 2)")
    args = parser.parse_args(argv)

    from lethe.backup.replicate import replicate_snapshot
    from lethe.backup.snapshot import take_snapshot
    from lethe.config import BACKUP_REGIONS
    from lethe.db import transaction
    from lethe.embedded import services
    from lethe.policy import load_policy
    from lethe.testing import insert_tombstones, seeded_platform

    first, second = BACKUP_REGIONS[:2]
    policy = load_policy()
    with services() as (server_url, s3):
        url = seeded_platform(server_url, s3, "lethe_bench_fanout", args.users)
        with transaction(url) as cur:
            cur.execute("SELECT user_id FROM accounts ORDER BY user_id")
            people = [r[0] for r in cur.fetchall()]
        sids = [f"202611{day:02d}T020000Z" for day in range(1, args.snapshots + 1)]
        for sid in sids:
            take_snapshot(url, first, s3, sid, policy, KEY)
            replicate_snapshot(url, sid, first, s3, second, s3)
        print(f"{args.users:,} users; {args.snapshots} snapshots in {first} and {second}; {args.workers} workers")
        rng = random.Random(20)
        times: dict[str, list[float]] = {"one": [], "fan": []}
        peaks: dict[str, list[float]] = {"one": [], "fan": []}
        for n in range(args.rounds):
            with transaction(url) as cur:
                insert_tombstones(cur, KEY, [rng.choice(people)])
            regions = {"one": first, "fan": second} if n % 2 == 0 else {"one": second, "fan": first}
            results = {}
            for side in ("one", "fan") if n % 2 == 0 else ("fan", "one"):
                if side == "one":
                    result, seconds, peak = _sequential(url, regions[side], s3)
                else:
                    result, seconds, peak = _fanned_out(url, regions[side], s3, args.workers)
                results[side] = {k: result[k] for k in CHECKED}
                times[side].append(seconds)
                peaks[side].append(peak)
                print(f"  round {n + 1} {side}: {regions[side]} {seconds:6.1f} s, worker peak {peak:5.0f} MiB, "
                      f"{results[side]}", flush=True)  # fmt: skip
            if results["one"] != results["fan"]:
                raise SystemExit(f"round {n + 1}: the two sides rewrote differently: {results}")
        one, fan = statistics.median(times["one"]), statistics.median(times["fan"])
        print(
            f"one worker, snapshot after snapshot: {one:.1f} s {[round(t, 1) for t in times['one']]}, "
            f"peak {max(peaks['one']):.0f} MiB"
        )
        print(
            f"one task per snapshot on {args.workers} workers: {fan:.1f} s {[round(t, 1) for t in times['fan']]}, "
            f"peak per worker {max(peaks['fan']):.0f} MiB; speed-up {one / fan:.2f}x; same rewrites on both sides"
        )
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
