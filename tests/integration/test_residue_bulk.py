"""The scanner's bulk path (COPY into Arrow, columns filtered in bulk) finds exactly what matching every
value one by one finds, on a database with identifiers planted in many formats among lookalikes."""

from __future__ import annotations

from collections import defaultdict

import psycopg2.extras
import pytest
from erasure_people import ASHA, BHAVIN, CHITRA, insert_people
from lethe import residue
from lethe.policy import load_policy
from psycopg2 import sql

# Asha's identifiers as other people wrote them, and texts that look alike but name nobody.
PLANTED = [
    "ASHA.RAO@EXAMPLE.COM wrote",
    "\uff41\uff53\uff48\uff41.\uff52\uff41\uff4f@example.com (full width)",
    "/join?email=asha.rao%40example.com&x=1",
    "ring 90000 00001 today",
    "ring 090000 00001",
    "9000000001",
    "+91 90000-00001",
    "0091 9000000001",
    "(+91) 90000 00001, twice: 9000000001",
    "call ९०००००००००१ (Devanagari digits)",
    "thanks @Asha_Rao!",
    'ASHA_RAO, line one\nline two, "quoted"',
    "Asha_rao",
    "seen from 10.1.2.3 again",
    "cookie-101",
    "near miss: asha.rao@example.co and 90000 00009 and 10.1.2.33",
    "Ünïcödé text with no one in it",
    "100% unrelated",
    "fe80::1 is a link-local address",
    "",
    "ab",
    "\\.",
    "met Asha  Rao at the fair",  # her name (two words, set below) with any spaces between
    "ASHA\tRAO",
    "Asha, Rao and Asha Kumar",  # not her name: a comma between, or another surname
]
HOLDS_ASHA = [*range(9), *range(10, 15), 22, 23]  # the lines above that spell one of her identifiers
LOOKALIKES = [*range(15, 22), 24]


def _plant(url: str) -> None:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("UPDATE accounts SET name = 'Asha Rao' WHERE user_id = %s", (ASHA["user_id"],))
        for i, text in enumerate(PLANTED):
            cur.execute("INSERT INTO comments VALUES (%s, 2, %s, now())", (1000 + i, text))
            cur.execute(
                "INSERT INTO survey_responses VALUES (%s, 2, 'nps', %s::jsonb, now())",
                (1000 + i, psycopg2.extras.Json({"answer": text, "n": i})),
            )
            cur.execute(
                "INSERT INTO visitor_logs (log_id, user_id, visitor_id, occurred_at, file_accessed)"
                " VALUES (%s, NULL, %s, now(), %s)",
                (1000 + i, text[:40], text),
            )
        cur.execute(
            "INSERT INTO accounts (user_id, name, username, email, phone, password_hash, interests, created_at)"
            " VALUES (50, 'Other Person', 'other', 'other@example.net', '+91 9000000050', 'x',"
            " ARRAY['9000000001', 'Asha_Rao', 'chess'], now())"
        )
        # A column whose values repeat (tested once per distinct value), holding her handle in some rows.
        cur.execute(
            "INSERT INTO usage_events SELECT 5000 + i, 2, now(), CASE WHEN i % 7 = 0 THEN '@asha_rao' ELSE 'quiz' END,"
            " 1, 0 FROM generate_series(1, 60) i"
        )
        cur.execute(
            "INSERT INTO sessions VALUES (900, 50, 'cookie-900', 'persistent', '10.1.2.3', now(), now())"
        )  # someone else's session from her IP
        cur.execute(
            "INSERT INTO sessions VALUES (901, 50, 'cookie-901', 'persistent', '10.1.2.3/24', now(), now()),"
            " (902, 50, 'cookie-902', 'persistent', '10.1.2.0/24', now(), now())"
        )  # her address with its network's mask (still her host), and the network alone (no one's)


Found = set[tuple[str, str, str, frozenset[str]]]


def _reference(cur: psycopg2.extensions.cursor, tables: list[residue.Table], index: residue.Index) -> Found:
    """Every value read with a plain SELECT and matched on its own, with no prefilter and no Arrow."""
    found: Found = set()
    for table in tables:
        cur.execute(
            sql.SQL("SELECT ctid::text, {} FROM {}").format(
                sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c.name)) for c in table.columns),
                table.ident,
            )
        )
        for ctid, *values in cur.fetchall():
            for column, value in zip(table.columns, values, strict=True):
                if value is not None and len(value) >= 3:
                    if column.type in ("inet", "cidr"):  # an address column holds an address, nothing else
                        host = residue.normalise("ip", value)
                        owners = set(index.owners("ip", host)) if host else set()
                    else:
                        owners = residue.who(index, value)
                    if owners:
                        found.add((table.name, ctid, column.name, frozenset(owners)))
    return found


def _bulk(cur: psycopg2.extensions.cursor, tables: list[residue.Table], index: residue.Index) -> Found:
    return {
        (hit.table.name, hit.ctid, column, owners)
        for hit in residue.scan_rows(cur, tables, index)
        for column, owners in hit.owners.items()
    }


@pytest.mark.parametrize("few", [64, 0], ids=["re2", "hashed-tokens"])
def test_bulk_scan_equals_matching_every_value(db_url: str, few: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # Both ways of testing needles: one RE2 pattern (a small batch) and hashed tokens (a large one).
    monkeypatch.setattr(residue, "FEW", few)
    monkeypatch.setattr(residue, "SAMPLE", 8)  # small tables too take the distinct-values path when they repeat
    insert_people(db_url)
    _plant(db_url)
    policy = load_policy()
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        tables = residue.text_tables(cur, residue.policy_schemas(cur, policy), policy.tables)
        people = residue.footprints(cur, policy, [ASHA["user_id"], BHAVIN["user_id"], CHITRA["user_id"]])
        index = residue.PlainIndex(people)
        assert index.prefilter is not None  # the bulk filter is in play
        reference = _reference(cur, tables, index)
        bulk = _bulk(cur, tables, index)
        assert bulk == reference
        cur.execute("SELECT ctid::text, comment_id FROM comments")
        comment_of = dict(cur.fetchall())
    asha = ASHA["user_id"]
    # Every planted spelling of Asha is found, counted against the list above, not the scanner.
    found = {comment_of[ctid] - 1000 for t, ctid, c, owners in bulk if t == "comments" and asha in owners}
    assert set(HOLDS_ASHA) <= found
    assert not found & set(LOOKALIKES)
    by_column: dict[str, int] = defaultdict(int)
    for t, _, c, owners in bulk:
        if asha in owners:
            by_column[f"{t}.{c}"] += 1
    # In JSON the tab of "ASHA\tRAO" is written as the two characters \t: no longer her name there.
    assert by_column["survey_responses.answers"] >= len(HOLDS_ASHA) - 1
    assert by_column["accounts.interests"] == 1
    # her own two, someone else's from her address, and her address written with a /24 mask
    assert by_column["sessions.ip_address"] >= 4
    found_sessions = {ctid for t, ctid, c, owners in bulk if t == "sessions" and c == "ip_address"}
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT ctid::text FROM sessions WHERE session_id = 902")
        (network_ctid,) = cur.fetchone()
    assert network_ctid not in found_sessions  # 10.1.2.0/24 is a network: it names nobody
    assert by_column["usage_events.feature"] == 8


def test_keyed_index_bulk_equals_reference(db_url: str) -> None:
    """The audit's keyed mode (no prefilter): the same findings through COPY and Arrow."""
    insert_people(db_url)
    _plant(db_url)
    policy = load_policy()
    key = b"test-key"
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        tables = residue.text_tables(cur, residue.policy_schemas(cur, policy), policy.tables)
        people = residue.footprints(cur, policy, [ASHA["user_id"]])
        index = residue.KeyedIndex(key, frozenset(people[0].pseudonyms(key)))
        assert _bulk(cur, tables, index) == _reference(cur, tables, index)
        assert _bulk(cur, tables, index)


def test_blocks_matched_in_parallel_keep_every_hit_in_order(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables cut into many small blocks, matched on worker threads while the COPY goes on: the same hits as
    matching every value, in the order of one block per table; a block that fails fails the scan."""
    insert_people(db_url)
    _plant(db_url)
    policy = load_policy()
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        tables = residue.text_tables(cur, residue.policy_schemas(cur, policy), policy.tables)
        index = residue.PlainIndex(residue.footprints(cur, policy, [ASHA["user_id"], BHAVIN["user_id"]]))
        whole = [(h.table.name, h.ctid, h.owners) for h in residue.scan_rows(cur, tables, index)]
        monkeypatch.setattr(residue, "BLOCK_BYTES", 200)  # a few rows a block
        pieces = [(h.table.name, h.ctid, h.owners) for h in residue.scan_rows(cur, tables, index)]
        assert pieces == whole
        assert {(t, ctid, c, o) for t, ctid, owners in pieces for c, o in owners.items()} == _reference(
            cur, tables, index
        )
        assert len({t for t, _, _ in pieces}) >= 5  # many tables, so blocks of one overlap the next one's COPY

        calls = 0
        original = residue._block_hits

        def fails_on_the_third(*args: object, **kwargs: object) -> list[residue.Hit]:
            nonlocal calls
            calls += 1
            if calls == 3:
                raise RuntimeError("block 3 could not be matched")
            return original(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(residue, "_block_hits", fails_on_the_third)
        with pytest.raises(RuntimeError, match="block 3"):
            list(residue.scan_rows(cur, tables, index))
