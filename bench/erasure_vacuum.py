"""The VACUUM after an erasure: the partitions written vs the whole partitioned tables, on a seeded bench database.

Each round leaves one person's dead row versions, with index entries, in `usage_events` and `visitor_logs`
(an UPDATE of `subject_pseudonym`, which is indexed, rolled back: the data stays as it was), reads the partitions
written from pg_stat_xact_user_tables (`lethe.erasure.vacuum.written`, as the erase step does), and times
`VACUUM (INDEX_CLEANUP ON)` of either the two parents (every partition: the erase step before) or the
partitions written. Rounds alternate, a different person each.

Run: `LETHE_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/lethe_bench_scan_1m python bench/erasure_vacuum.py`
(a database seeded by `lethe bench erasure`).
"""

from __future__ import annotations

import os
import statistics
import sys
import time

TABLES = ["usage_events", "visitor_logs"]


def main(rounds: int = 3) -> int:
    from lethe.db import connect
    from lethe.erasure import vacuum

    url = os.environ["LETHE_DATABASE_URL"]
    conn = connect(url)
    with conn.cursor() as cur:
        cur.execute("SELECT user_id FROM accounts ORDER BY hashint8(user_id + 7) LIMIT %s", (2 * rounds,))
        people = [r[0] for r in cur.fetchall()]
    conn.rollback()
    times: dict[str, list[float]] = {"whole tables": [], "partitions written": []}
    for i, person in enumerate(people):
        mode = "whole tables" if i % 2 == 0 else "partitions written"
        with conn.cursor() as cur:
            for table in TABLES:
                cur.execute(f"UPDATE {table} SET subject_pseudonym = %s WHERE user_id = %s", ("bench", person))  # noqa: S608
            written = vacuum.written(cur, TABLES)
        conn.rollback()
        targets = TABLES if mode == "whole tables" else written
        t0 = time.perf_counter()
        vacuum.vacuum(url, targets)
        spent = time.perf_counter() - t0
        times[mode].append(spent)
        print(f"{mode}: {len(targets)} relations ({len(written)} written) in {spent:.2f} s", flush=True)
    conn.close()
    for mode, spent in times.items():
        print(f"{mode}: median {statistics.median(spent):.2f} s of {len(spent)}")
    print(f"load average (1/5/15 min): {' / '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3))
