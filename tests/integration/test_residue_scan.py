"""The residue scanner over a real database: every text-like column, counts only, one batch."""

from __future__ import annotations

import hashlib
import hmac

import psycopg2
from erasure_people import ASHA, BHAVIN, insert_people
from lethe import residue
from lethe.policy import load_policy


def _plant(url: str) -> None:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        # Asha in other people's structured and free text, in formats the old search missed.
        cur.execute(
            "INSERT INTO survey_responses VALUES (901, 2, 'nps', '{\"ref\": \"ASHA.RAO@EXAMPLE.COM\"}', now()),"
            " (902, 2, 'nps', '{\"tel\": \"090000 00001\"}', now())"
        )
        cur.execute("INSERT INTO app_data VALUES (901, 2, 'labs', '{\"mentor\": \"@Asha_Rao\"}', now())")
        cur.execute("INSERT INTO comments VALUES (901, 2, 'Asha_Rao helped, ring 90000 00001', now())")
        cur.execute(
            "INSERT INTO visitor_logs (log_id, user_id, visitor_id, occurred_at, ip_address, file_accessed)"
            " VALUES (901, NULL, 'anon-1', now() - interval '1 day', '10.77.0.1',"
            " '/join?email=asha.rao%40example.com'), (902, NULL, 'cookie-101', now() - interval '1 day', NULL, NULL)"
        )


def test_scan_counts_every_column_of_the_footprint(db_url: str) -> None:
    insert_people(db_url)
    _plant(db_url)
    policy = load_policy()
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        people = residue.footprints(cur, policy, [ASHA["user_id"], BHAVIN["user_id"]])
        findings = residue.scan(cur, policy, residue.PlainIndex(people))
    asha = findings[ASHA["user_id"]]
    # Her own rows, found by value alone (the scanner knows no foreign key).
    assert asha["accounts.email"] == 1
    assert asha["accounts.phone"] == 1
    assert asha["marketing_contacts.email"] == 1
    assert asha["sessions.cookie_id"] == 2
    # Her mentions elsewhere: json, handles, names, phone without country code, URL-encoded email.
    assert asha["survey_responses.answers"] == 2
    assert asha["app_data.payload"] == 1
    assert asha["comments.body"] == 3  # her own 101, Bhavin's 201 and 901
    assert asha["issue_reports.body"] == 1
    assert asha["communications.body"] == 1
    assert asha["visitor_logs.file_accessed"] == 1
    assert asha["visitor_logs.visitor_id"] == 1  # her cookie in an anonymous row
    # Counts only: no value of hers anywhere in what the scan returns.
    assert not any(ASHA["email"] in key or "9000000001" in key for key in asha)
    # One pass, two people: Bhavin's own identifiers are counted under him, not under her.
    assert findings[BHAVIN["user_id"]]["accounts.email"] == 1
    assert "survey_responses.answers" not in findings[BHAVIN["user_id"]]


def flushed(cur: psycopg2.extensions.cursor) -> None:
    """This session's table statistics in shared memory now: a backend flushes them at most once a second
    otherwise, so a read just after could miss them (PostgreSQL 15 here did, two reads counted as one pass)."""
    cur.execute("SELECT pg_stat_force_next_flush()")  # flushed when this statement's transaction ends
    cur.execute("SELECT 1")


def seq_scans(db_url: str) -> dict[str, int]:
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:  # a new session: a fresh statistics snapshot
        cur.execute("SELECT relname, seq_scan FROM pg_stat_user_tables")
        found = dict(cur.fetchall())
    conn.close()
    return found


def test_one_pass_reads_each_table_once(db_url: str) -> None:
    insert_people(db_url)
    policy = load_policy()
    conn = psycopg2.connect(db_url)
    conn.autocommit = True
    with conn.cursor() as cur:  # the footprints' own reads counted before `before`, not after it
        people = residue.footprints(cur, policy, [1, 2, 3])
        tables = residue.text_tables(cur, residue.policy_schemas(cur, policy))
        flushed(cur)
    before = seq_scans(db_url)
    with conn.cursor() as cur:
        list(residue.scan_rows(cur, tables, residue.PlainIndex(people)))
        flushed(cur)
    conn.close()
    after = seq_scans(db_url)
    read = {t.name for t in tables if t.name in after and after[t.name] - before.get(t.name, 0) == 1}
    assert {"accounts", "comments", "survey_responses", "sessions", "legal_holds"} <= read
    assert all(after[t] - before.get(t, 0) <= 1 for t in after)


def test_rows_tied_only_to_the_keyed_pseudonym_are_the_persons(db_url: str) -> None:
    """Rows whose user id retention replaced by the person's keyed pseudonym (HMAC-SHA256 of `user_id:<id>`)
    hold no identifier of hers: with the key, the scanner still finds them, and her cookie in them."""
    key = b"residue-test-key"
    asha = hmac.new(key, f"user_id:{ASHA['user_id']}".encode(), hashlib.sha256).hexdigest()
    bhavin = hmac.new(key, f"user_id:{BHAVIN['user_id']}".encode(), hashlib.sha256).hexdigest()
    insert_people(db_url)
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO usage_events (event_id, user_id, subject_pseudonym, occurred_at, feature, duration_ms)"
            " VALUES (911, NULL, %s, now() - interval '2 days', 'quiz', 10),"
            " (912, NULL, %s, now() - interval '3 days', 'quiz', 10), (913, NULL, %s, now() - interval '2 days',"
            " 'quiz', 10)",
            (asha, asha, bhavin),
        )
        cur.execute(
            "INSERT INTO visitor_logs (log_id, user_id, subject_pseudonym, visitor_id, occurred_at)"
            " VALUES (911, NULL, %s, 'cookie-only-in-a-cut-row', now() - interval '2 days'),"
            " (912, NULL, NULL, 'cookie-only-in-a-cut-row', now() - interval '2 days')",
            (asha,),
        )
    policy = load_policy()
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        people = residue.footprints(cur, policy, [ASHA["user_id"], BHAVIN["user_id"]], key)
        findings = residue.scan(cur, policy, residue.PlainIndex(people))
        without_key = residue.scan(cur, policy, residue.PlainIndex(residue.footprints(cur, policy, [ASHA["user_id"]])))
    assert findings[ASHA["user_id"]]["usage_events.subject_pseudonym"] == 2
    assert findings[ASHA["user_id"]]["visitor_logs.subject_pseudonym"] == 1
    assert findings[BHAVIN["user_id"]]["usage_events.subject_pseudonym"] == 1
    # her cookie, known only from the cut row, is found in that row and in the anonymous one
    assert findings[ASHA["user_id"]]["visitor_logs.visitor_id"] >= 2
    assert "usage_events.subject_pseudonym" not in without_key.get(ASHA["user_id"], {})
