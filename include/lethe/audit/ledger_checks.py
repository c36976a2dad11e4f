"""The ledger's hash chain, verified end to end and against the anchors of its head kept in S3.

- ledger_chain_broken: every entry links to the one before it and matches its own hash;
- ledger_tail_missing: every anchored head (lethe.ledger_anchor) is still an entry of the ledger, so a
  truncated ledger or one whose newest entries were deleted fails even though what is left still chains.
"""

from __future__ import annotations

from typing import Any

import psycopg2.extensions

from lethe.ledger import verify_chain
from lethe.ledger_anchor import anchors
from lethe.quality import CheckResult, expect_counts


def check_ledger(cur: psycopg2.extensions.cursor, client: Any, bucket: str) -> CheckResult:
    status = verify_chain(cur)
    chain: dict[str, Any] = {"entries": status.entries}
    if not status.ok:
        chain |= {"first_broken_entry": status.first_broken_entry, "problem": status.problem}
    cur.execute("SELECT current_database()")
    anchored = anchors(client, bucket, cur.fetchone()[0])  # type: ignore[index]
    cur.execute("SELECT entry_hash FROM ledger WHERE entry_hash = ANY(%s)", ([a.entry_hash for a in anchored],))
    present = {h for (h,) in cur.fetchall()}
    missing = [a for a in anchored if a.entry_hash not in present]
    newest = anchored[-1].seq if anchored else None
    tail: dict[str, Any] = {"entries": status.entries, "anchors": len(anchored), "newest_anchor_seq": newest}
    if missing:
        tail |= {"anchors_missing": len(missing), "lowest_missing_seq": missing[0].seq}
    return expect_counts(
        "ledger",
        {"ledger_chain_broken": 0 if status.ok else 1, "ledger_tail_missing": len(missing)},
        details={"ledger_chain_broken": chain, "ledger_tail_missing": tail},
    )
