"""People for the erasure tests, inserted with plain SQL so expected outcomes are computed here, not by Lethe.

- ASHA (1): rows in every table of the platform, invoices and payments, a released legal hold.
- BHAVIN (2): someone else, whose free text mentions Asha's email, phone and username.
- CHITRA (3): under an active legal hold.
"""

from __future__ import annotations

from typing import Any

import psycopg2

ASHA = {"user_id": 1, "email": "asha.rao@example.com", "phone": "+91 9000000001", "username": "asha_rao"}
BHAVIN = {"user_id": 2, "email": "bhavin@example.org", "phone": "+91 9000000002", "username": "bhavin"}
CHITRA = {"user_id": 3, "email": "chitra@example.in", "phone": "+91 9000000003", "username": "chitra_k"}

# Tables where Asha has rows (and how many), as inserted below.
ASHA_ROWS = {
    "accounts": 1,
    "ssh_keys": 2,
    "subscriptions": 1,
    "invoices": 2,
    "payments": 2,
    "consents": 2,
    "marketing_contacts": 1,
    "sessions": 2,
    "usage_events": 3,
    "visitor_logs": 2,
    "comments": 2,
    "feedback": 1,
    "survey_responses": 1,
    "app_data": 1,
    "issue_reports": 1,
    "security_evidence": 1,
    "communications": 1,
    "disputes": 1,
}
MENTIONS_OF_ASHA = {"comments.body": 1, "issue_reports.body": 1, "communications.body": 1}


def _account(cur: Any, p: dict[str, Any]) -> None:
    cur.execute(
        "INSERT INTO accounts (user_id, name, username, email, phone, password_hash, created_at)"
        " VALUES (%s, %s, %s, %s, %s, 'x', now() - interval '400 days')",
        (p["user_id"], p["username"].title(), p["username"], p["email"], p["phone"]),
    )


def _rows_of(cur: Any, uid: int, base: int) -> None:
    """One person's rows in every table; ids offset by `base` so people do not collide."""
    b = base
    cur.execute(
        "INSERT INTO ssh_keys VALUES (%s, %s, 'ssh-ed25519 AAAA', now()), (%s, %s, 'ssh-rsa BBBB', now())",
        (b + 1, uid, b + 2, uid),
    )
    cur.execute("INSERT INTO subscriptions VALUES (%s, %s, 'pro', now() - interval '90 days', NULL)", (b + 1, uid))
    for i in (1, 2):
        cur.execute(
            "INSERT INTO invoices VALUES (%s, %s, NULL, 'Billing Name', '1 Road, Pune', 'GSTIN123',"
            " 1000, 'INR', now())",
            (b + i, uid),
        )
        cur.execute(
            "INSERT INTO payments VALUES (%s, %s, %s, NULL, 1000, 'card', '4242', now(), NULL)", (b + i, b + i, uid)
        )
    cur.execute(
        "INSERT INTO consents VALUES (%s, %s, 'marketing', now(), NULL, NULL),"
        " (%s, %s, 'analytics', now(), NULL, NULL)",
        (b + 1, uid, b + 2, uid),
    )
    cur.execute(
        "INSERT INTO marketing_contacts SELECT %s, %s, email, name, 'news', now() FROM accounts WHERE user_id = %s",
        (b + 1, uid, uid),
    )
    for i in (1, 2):
        cur.execute(
            "INSERT INTO sessions VALUES (%s, %s, %s, 'persistent', '10.1.2.3', now(), now() + interval '30 days')",
            (b + i, uid, f"cookie-{b + i}"),
        )
    for i in (1, 2, 3):
        cur.execute(
            "INSERT INTO usage_events VALUES (%s, %s, now() - %s * interval '1 day', 'quiz', 1200, 0)", (b + i, uid, i)
        )
    for i in (1, 2):
        cur.execute(
            "INSERT INTO visitor_logs (log_id, user_id, visitor_id, occurred_at, ip_address)"
            " VALUES (%s, %s, 'v', now() - interval '1 day', '10.9.9.9')",
            (b + i, uid),
        )
    cur.execute("INSERT INTO feedback VALUES (%s, %s, 'Great course', 5, false, now())", (b + 1, uid))
    cur.execute("INSERT INTO survey_responses VALUES (%s, %s, 'nps', '{\"score\": 9}', now())", (b + 1, uid))
    cur.execute("INSERT INTO app_data VALUES (%s, %s, 'labs', '{\"theme\": \"dark\"}', now())", (b + 1, uid))
    cur.execute("INSERT INTO security_evidence VALUES (%s, %s, '10.0.0.1', 'login', 'ok', now())", (b + 1, uid))
    cur.execute(
        "INSERT INTO disputes VALUES (%s, %s, 'refund asked',"
        " now() - interval '300 days', now() - interval '200 days')",
        (b + 1, uid),
    )


def insert_people(url: str) -> None:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        for p in (ASHA, BHAVIN, CHITRA):
            _account(cur, p)
        _rows_of(cur, 1, 100)
        _rows_of(cur, 2, 200)
        _rows_of(cur, 3, 300)
        # Asha's own free text (deleted with her) and a released hold on her closed dispute (retained).
        cur.execute(
            "INSERT INTO comments VALUES (101, 1, 'I am asha.rao@example.com', now()), (102, 1, 'hello', now())"
        )
        cur.execute("INSERT INTO issue_reports VALUES (101, 1, 'Bug', 'video stalls', now(), NULL)")
        cur.execute("INSERT INTO communications VALUES (101, 1, 'email', 'inbound', 'Hi', 'call me', now())")
        cur.execute(
            "INSERT INTO legal_holds (hold_id, subject_key, reference, reason, placed_at, released_at)"
            " VALUES (101, '1', 'dispute 101', 'old dispute', now() - interval '300 days', now() - interval '100 days')"
        )
        # Bhavin mentions Asha three ways, plus a near miss that is not her address.
        cur.execute(
            "INSERT INTO comments VALUES (201, 2, 'Ask ASHA.RAO@example.com for the notes.', now()),"
            " (202, 2, 'write to asha.rao@example.community instead', now())"
        )
        cur.execute("INSERT INTO issue_reports VALUES (201, 2, 'Spam', 'user asha_rao keeps posting', now(), NULL)")
        cur.execute(
            "INSERT INTO communications VALUES (201, 2, 'chat', 'inbound', 'Ref',"
            " 'her number is +91 9000000001', now())"
        )
        # Chitra: an active hold.
        cur.execute(
            "INSERT INTO legal_holds (hold_id, subject_key, reference, reason, placed_at)"
            " VALUES (301, '3', 'dispute 301', 'pending litigation', now() - interval '10 days')"
        )


def count_rows(url: str, uid: int) -> dict[str, int]:
    """Rows per table linked to `uid` by its user_id column (what a person's residue looks like)."""
    tables = [t for t in ASHA_ROWS if t != "accounts"]
    out = {}
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM accounts WHERE user_id = %s", (uid,))
        out["accounts"] = cur.fetchone()[0]
        for t in tables:
            cur.execute(f"SELECT count(*) FROM {t} WHERE user_id = %s", (uid,))  # noqa: S608 - fixed table names
            out[t] = cur.fetchone()[0]
    return out


def table_snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every platform table, to compare before and after (dry run, reruns)."""
    out = {}
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        for t in [*ASHA_ROWS]:
            cur.execute(f"SELECT * FROM {t} ORDER BY 1")  # noqa: S608 - fixed table names
            out[t] = [tuple(str(v) for v in row) for row in cur.fetchall()]
    return out
