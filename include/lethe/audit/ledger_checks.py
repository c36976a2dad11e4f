"""The ledger's hash chain, verified end to end."""

from __future__ import annotations

from typing import Any

import psycopg2.extensions

from lethe.audit.expect import expect_counts
from lethe.ledger import verify_chain
from lethe.quality import CheckResult


def check_ledger(cur: psycopg2.extensions.cursor) -> CheckResult:
    status = verify_chain(cur)
    details: dict[str, Any] = {"entries": status.entries}
    if not status.ok:
        details |= {"first_broken_entry": status.first_broken_entry, "problem": status.problem}
    return expect_counts(
        "ledger", {"ledger_chain_broken": 0 if status.ok else 1}, details={"ledger_chain_broken": details}
    )
