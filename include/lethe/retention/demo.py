"""What `lethe demo` prints after retention_nightly: what each rule purged in the last run (from the ledger)."""

from __future__ import annotations

from lethe.db import transaction


def summary(db_url: str, s3_endpoint: str) -> list[str]:
    with transaction(db_url) as cur:
        cur.execute(
            "SELECT payload FROM ledger WHERE kind = 'retention' AND payload->>'plan_id' ="
            " (SELECT payload->>'plan_id' FROM ledger WHERE kind = 'retention' ORDER BY entry_id DESC LIMIT 1)"
            " ORDER BY entry_id"
        )
        entries = [p for (p,) in cur.fetchall()]
    if not entries:
        return ["retention: no run recorded in the ledger"]
    lines = [f"retention run {entries[0]['plan_id']} at {entries[0]['now']} (policy {entries[0]['policy_version']})"]
    for e in entries:
        c = e["counts"]
        verb = "anonymised" if e["action"] == "anonymise" else "deleted"
        kept = [f"{c[k]} {k}" for k in ("held", "referenced") if c.get(k)]
        parts = f", {c['partitions_dropped']} partitions dropped" if c.get("partitions_dropped") else ""
        lines.append(
            f"{e['rule']:<34} {e['table']:<20} {c['done']:>7} {verb}{parts}"
            + (f" (kept: {', '.join(kept)})" if kept else "")
        )
    return lines
