"""The audit ledger: chained, append-only, and a tampered entry is found."""

from __future__ import annotations

import psycopg2
import pytest
from lethe import ledger
from lethe.db import transaction

pytestmark = pytest.mark.integration


def test_chain_verifies_and_links(db_url: str) -> None:
    with transaction() as cur:
        first = ledger.append(cur, "retention", {"rule": "expired_cookies", "deleted": 3})
        second = ledger.append(cur, "erasure", {"tables": {"accounts": 1}})
    with transaction() as cur:
        status = ledger.verify_chain(cur)
        cur.execute("SELECT prev_hash, entry_hash FROM ledger ORDER BY entry_id")
        rows = cur.fetchall()
    assert status.ok and status.entries == 2
    assert rows == [(ledger.GENESIS, first), (first, second)]


def test_updates_and_deletes_are_refused(db_url: str) -> None:
    with transaction() as cur:
        ledger.append(cur, "retention", {"deleted": 1})
    for statement in ("UPDATE ledger SET kind = 'x'", "DELETE FROM ledger", "TRUNCATE ledger"):
        with pytest.raises(psycopg2.errors.RaiseException, match="append-only"), transaction() as cur:
            cur.execute(statement)


def test_tampered_entry_is_found(db_url: str) -> None:
    with transaction() as cur:
        for n in range(3):
            ledger.append(cur, "retention", {"deleted": n})
    with transaction() as cur:
        cur.execute("ALTER TABLE ledger DISABLE TRIGGER ledger_append_only")
        cur.execute(
            "UPDATE ledger SET payload = '{\"deleted\": 0}' WHERE entry_id = (SELECT min(entry_id) + 1 FROM ledger)"
        )
        cur.execute("ALTER TABLE ledger ENABLE TRIGGER ledger_append_only")
    with transaction() as cur:
        status = ledger.verify_chain(cur)
        cur.execute("SELECT min(entry_id) + 1 FROM ledger")
        tampered = cur.fetchone()[0]
    assert not status.ok
    assert status.first_broken_entry == tampered
    assert "content does not match" in status.problem
