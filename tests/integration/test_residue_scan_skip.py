"""residue.scan's `skip` leaves out a table the policy names `schema.table` in every reading of it.

The rows that name a person only by their keyed pseudonym (a link cut by retention) were skipped by comparing
`"<table>.<column>".split(".")[0]` with the skipped names: `public` for `public.usage_events`, never equal, so a
schema-qualified table in `skip` was still read and its rows reported.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import yaml
from erasure_people import ASHA, insert_people
from lethe import residue
from lethe.policy import load_policy

pytestmark = pytest.mark.integration

KEY = b"residue-skip-key"
TABLE = "public.usage_events"


def renamed(value: Any, old: str, new: str) -> Any:
    """The policy's data with every mention of table `old` (a key or a value) named `new`."""
    if isinstance(value, dict):
        return {(new if k == old else k): renamed(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [renamed(v, old, new) for v in value]
    return new if value == old else value


def test_a_skipped_schema_qualified_table_is_not_reported(db_url: str, tmp_path: Path) -> None:
    data = yaml.safe_load(Path(load_policy().path or "").read_text())
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(renamed(data, "usage_events", TABLE), sort_keys=False))
    policy = load_policy(path)
    assert TABLE in policy.tables
    asha = hmac.new(KEY, f"user_id:{ASHA['user_id']}".encode(), hashlib.sha256).hexdigest()
    insert_people(db_url)
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SET statement_timeout = '30s'")
        cur.execute(
            "INSERT INTO usage_events (event_id, user_id, subject_pseudonym, occurred_at, feature, duration_ms)"
            " VALUES (911, NULL, %s, now() - interval '2 days', 'quiz', 10),"
            " (912, NULL, %s, now() - interval '3 days', 'quiz', 10)",
            (asha, asha),
        )
        cur.execute(
            "INSERT INTO visitor_logs (log_id, user_id, subject_pseudonym, visitor_id, occurred_at)"
            " VALUES (911, NULL, %s, 'v-911', now() - interval '2 days')",
            (asha,),
        )
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SET statement_timeout = '30s'")
        index = residue.PlainIndex(residue.footprints(cur, policy, [ASHA["user_id"]], KEY))
        everything = residue.scan(cur, policy, index)[ASHA["user_id"]]
        skipped = residue.scan(cur, policy, index, skip=[TABLE, "visitor_logs"])[ASHA["user_id"]]
    assert everything[f"{TABLE}.subject_pseudonym"] == 2
    assert everything["visitor_logs.subject_pseudonym"] == 1
    assert not [k for k in skipped if k.startswith((f"{TABLE}.", "visitor_logs."))], skipped
    assert skipped == {k: n for k, n in everything.items() if not k.startswith((f"{TABLE}.", "visitor_logs."))}
