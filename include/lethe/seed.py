"""Deterministic synthetic data for the platform's primary database.

Two years of history up to `now`: accounts (some closed), consents (some
withdrawn or objected), payments, cookies, usage and visitor events, free
text that mentions other people's emails, disputes and legal holds. Values are
drawn from seeded generators (numpy + Faker pools), so the same seed gives the
same database; rows load with COPY in chunks.
"""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd
import psycopg2.extensions

from lethe.db import add_months, connect, ensure_month_partitions

# The demo's platform schema (re:Skill's database), created in the public schema: not Lethe's, never migrated by it.
PLATFORM_SQL = resources.files("lethe") / "reskill_platform.sql"
PARTITIONED_TABLES = ("usage_events", "visitor_logs")

YEAR_S = 365 * 86400
DAY_S = 86400
FEATURES = ["course_player", "code_lab", "quiz", "challenge", "forum", "certificate", "search", "profile"]
DEVICES = ["desktop", "mobile", "tablet"]
BROWSERS = [("Chrome", "130.0.6723.91"), ("Firefox", "132.0"), ("Safari", "18.1"), ("Edge", "130.0.2849.68")]
OSES = ["Windows 11", "macOS 15", "Android 15", "iOS 18", "Ubuntu 24.04"]
ZONES = ["Asia/Kolkata", "Asia/Singapore", "America/New_York", "Europe/Berlin", "Asia/Dubai"]
LANGS = ["en-IN", "hi-IN", "en-US", "ta-IN", "de-DE"]
PURPOSES = ["updates", "third_party", "analytics", "marketing", "quotes"]


class _Pools:
    """Small pools of realistic values from a seeded Faker; rows combine them by index."""

    def __init__(self, seed: int) -> None:
        from faker import Faker

        fake = Faker("en_IN")
        fake.seed_instance(seed)
        self.first = np.array(sorted({fake.first_name() for _ in range(600)}))
        self.last = np.array(sorted({fake.last_name() for _ in range(600)}))
        self.city = np.array(sorted({fake.city() for _ in range(300)}))
        self.street = np.array([fake.street_address() for _ in range(500)])
        self.domain = np.array(["example.com", "example.in", "example.org", "mail.example.net"])
        self.words = np.array(sorted({w for _ in range(60) for w in fake.words(nb=10)}))


class Seeder:
    def __init__(self, cur: psycopg2.extensions.cursor, users: int, seed: int, now: datetime, progress: bool) -> None:
        self.cur = cur
        self.n = users
        self.rng = np.random.default_rng(seed)
        self.pools = _Pools(seed)
        self.now = now
        self.now_s = int(now.timestamp())
        self.progress = progress
        self.counts: dict[str, int] = {}

    # -- helpers ---------------------------------------------------------
    def ts(self, seconds: np.ndarray) -> pd.Series:
        return pd.to_datetime(seconds.astype("int64"), unit="s", utc=True)

    def copy(self, table: str, frame: pd.DataFrame) -> None:
        """COPY the frame in, rendered to CSV by Arrow (several times faster than pandas' to_csv)."""
        import pyarrow as pa
        import pyarrow.csv as pacsv

        started = time.perf_counter()
        cols = ", ".join(f'"{c}"' for c in frame.columns)
        options = pacsv.WriteOptions(include_header=False, quoting_style="needed")
        chunk = 500_000
        for lo in range(0, len(frame), chunk):
            sink = pa.BufferOutputStream()
            pacsv.write_csv(pa.Table.from_pandas(frame.iloc[lo : lo + chunk], preserve_index=False), sink, options)
            # FORMAT csv: an unquoted empty field is NULL, a quoted "" is an empty string.
            self.cur.copy_expert(f"COPY {table} ({cols}) FROM STDIN WITH (FORMAT csv)", io.BytesIO(sink.getvalue()))
        self.counts[table] = self.counts.get(table, 0) + len(frame)
        if self.progress:
            rate = len(frame) / max(time.perf_counter() - started, 1e-6)
            print(f"  {table:<20} {len(frame):>12,} rows  ({rate:,.0f} rows/s)", file=sys.stderr, flush=True)

    def pick(self, values: Any, size: int) -> np.ndarray:
        return np.asarray(values)[self.rng.integers(0, len(values), size)]

    def some(self, fraction: float, ids: np.ndarray) -> np.ndarray:
        return ids[self.rng.random(len(ids)) < fraction]

    # -- tables ----------------------------------------------------------
    def accounts(self) -> None:
        n, rng, p = self.n, self.rng, self.pools
        ids = np.arange(1, n + 1)
        first, last = self.pick(p.first, n), self.pick(p.last, n)
        created = self.now_s - rng.integers(7 * DAY_S, 2 * YEAR_S, n)
        closed = np.where(rng.random(n) < 0.12, created + (self.now_s - created) * rng.random(n), np.nan)
        handle = pd.Series(first).str.lower() + "." + pd.Series(last).str.lower() + ids.astype(str)
        self.created, self.closed = created, closed
        self.emails = (handle + "@" + pd.Series(self.pick(p.domain, n))).to_numpy()
        frame = pd.DataFrame(
            {
                "user_id": ids,
                "name": pd.Series(first) + " " + pd.Series(last),
                "username": handle.str.replace(".", "_", regex=False),
                "email": self.emails,
                "phone": ["+91 9" + f"{x:09d}" for x in rng.integers(0, 10**9, n)],
                "password_hash": ["pbkdf2_sha256$600000$" + f"{x:016x}" for x in rng.integers(0, 2**62, n)],
                "age": rng.integers(16, 66, n),
                "address": self.pick(p.street, n),
                "city": self.pick(p.city, n),
                "interests": ["{" + ",".join(self.pick(p.words, 3)) + "}" for _ in range(n)],
                "created_at": self.ts(created),
                "last_active_at": self.ts(created + (self.now_s - created) * rng.random(n)),
                "closed_at": pd.to_datetime(closed, unit="s", utc=True),
            }
        )
        self.copy("accounts", frame)

    def per_user(self, fraction: float, per: int = 1) -> np.ndarray:
        """User ids (repeated up to `per` times each) for a table where `fraction` of people have rows."""
        users = self.some(fraction, np.arange(1, self.n + 1))
        return np.repeat(users, self.rng.integers(1, per + 1, len(users)))

    def when(self, users: np.ndarray, min_age_s: int = 0) -> np.ndarray:
        """A time after each user's account creation and before now (or closure)."""
        start = self.created[users - 1]
        end = np.where(np.isnan(self.closed[users - 1]), self.now_s, self.closed[users - 1]) - min_age_s
        end = np.maximum(end, start + 1)
        return (start + (end - start) * self.rng.random(len(users))).astype("int64")

    def mention(self, size: int, rate: float) -> list[str]:
        """Free text; a share of it mentions another person's email."""
        words = self.pick(self.pools.words, size * 6).reshape(size, 6)
        others = self.pick(self.emails, size)
        out = []
        for i in range(size):
            text = " ".join(words[i]).capitalize() + "."
            if self.rng.random() < rate:
                text += f" Thanks to {others[i]} for the help."
            out.append(text)
        return out

    def simple_tables(self) -> None:
        rng = self.rng
        u = self.per_user(0.2)
        self.copy(
            "ssh_keys",
            pd.DataFrame(
                {
                    "key_id": np.arange(1, len(u) + 1),
                    "user_id": u,
                    "public_key": [
                        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5" + f"{x:032x}" for x in rng.integers(0, 2**62, len(u))
                    ],
                    "added_at": self.ts(self.when(u)),
                }
            ),
        )
        u = self.per_user(0.5, 2)
        self.copy(
            "comments",
            pd.DataFrame(
                {
                    "comment_id": np.arange(1, len(u) + 1),
                    "user_id": u,
                    "body": self.mention(len(u), 0.1),
                    "created_at": self.ts(self.when(u)),
                }
            ),
        )
        u = self.per_user(0.2)
        self.copy(
            "feedback",
            pd.DataFrame(
                {
                    "feedback_id": np.arange(1, len(u) + 1),
                    "user_id": u,
                    "body": self.mention(len(u), 0.05),
                    "rating": rng.integers(1, 6, len(u)),
                    "consent_to_quote": rng.random(len(u)) < 0.3,
                    "created_at": self.ts(self.when(u)),
                }
            ),
        )
        u = self.per_user(0.2)
        self.copy(
            "survey_responses",
            pd.DataFrame(
                {
                    "response_id": np.arange(1, len(u) + 1),
                    "user_id": u,
                    "survey": self.pick(["onboarding", "nps", "course_exit"], len(u)),
                    "answers": [
                        f'{{"score": {x}, "would_recommend": {str(x > 6).lower()}}}'
                        for x in rng.integers(0, 11, len(u))
                    ],
                    "created_at": self.ts(self.when(u)),
                }
            ),
        )
        u = self.per_user(0.3)
        self.copy(
            "app_data",
            pd.DataFrame(
                {
                    "app_data_id": np.arange(1, len(u) + 1),
                    "user_id": u,
                    "app": self.pick(["reskill-mobile", "code-runner"], len(u)),
                    "payload": [f'{{"progress": {x}}}' for x in rng.integers(0, 101, len(u))],
                    "updated_at": self.ts(self.when(u)),
                }
            ),
        )
        u = self.per_user(0.1)
        created = self.when(u)
        self.copy(
            "issue_reports",
            pd.DataFrame(
                {
                    "report_id": np.arange(1, len(u) + 1),
                    "user_id": u,
                    "title": self.pick(["Video stalls", "Quiz score wrong", "Cannot log in", "Typo in lesson"], len(u)),
                    "body": self.mention(len(u), 0.1),
                    "created_at": self.ts(created),
                    "resolved_at": self.ts(created + rng.integers(DAY_S, 30 * DAY_S, len(u))).where(
                        rng.random(len(u)) < 0.8
                    ),
                }
            ),
        )
        u = self.per_user(0.5, 2)
        self.copy(
            "communications",
            pd.DataFrame(
                {
                    "message_id": np.arange(1, len(u) + 1),
                    "user_id": u,
                    "channel": self.pick(["email", "chat"], len(u)),
                    "direction": self.pick(["inbound", "outbound"], len(u)),
                    "subject": self.pick(
                        ["Welcome", "Your certificate", "Billing question", "Challenge update"], len(u)
                    ),
                    "body": self.mention(len(u), 0.05),
                    "sent_at": self.ts(self.when(u)),
                }
            ),
        )
        u = self.per_user(0.02)
        self.copy(
            "security_evidence",
            pd.DataFrame(
                {
                    "evidence_id": np.arange(1, len(u) + 1),
                    "user_id": u,
                    "ip_address": self.ips(len(u)),
                    "kind": self.pick(["credential_stuffing", "content_scraping", "account_sharing"], len(u)),
                    "detail": self.pick(["rate limit exceeded", "many logins from one address"], len(u)),
                    "observed_at": self.ts(self.when(u)),
                }
            ),
        )

    def ips(self, size: int) -> list[str]:
        octets = self.rng.integers(1, 255, (size, 4))
        return [f"{a}.{b}.{c}.{d}" for a, b, c, d in octets]

    def billing(self) -> None:
        rng = self.rng
        u = self.per_user(0.4)
        started = self.when(u)
        ended = np.where(rng.random(len(u)) < 0.5, started + rng.integers(30 * DAY_S, YEAR_S, len(u)), np.nan)
        ended = np.where(ended > self.now_s, np.nan, ended)
        self.copy(
            "subscriptions",
            pd.DataFrame(
                {
                    "subscription_id": np.arange(1, len(u) + 1),
                    "user_id": u,
                    "plan": self.pick(["monthly", "annual", "team"], len(u)),
                    "started_at": self.ts(started),
                    "ended_at": pd.to_datetime(ended, unit="s", utc=True),
                }
            ),
        )
        inv_users = np.repeat(u, rng.integers(1, 4, len(u)))
        issued = self.when(inv_users)
        n = len(inv_users)
        names = pd.Series(self.pick(self.pools.first, n)) + " " + pd.Series(self.pick(self.pools.last, n))
        amount = self.pick([49900, 99900, 499900], n)
        self.copy(
            "invoices",
            pd.DataFrame(
                {
                    "invoice_id": np.arange(1, n + 1),
                    "user_id": inv_users,
                    "billing_name": names,
                    "billing_address": self.pick(self.pools.street, n),
                    "tax_id": [f"29ABCDE{x:04d}F1Z5" for x in rng.integers(0, 10**4, n)],
                    "amount_cents": amount,
                    "currency": "INR",
                    "issued_at": self.ts(issued),
                }
            ),
        )
        self.copy(
            "payments",
            pd.DataFrame(
                {
                    "payment_id": np.arange(1, n + 1),
                    "invoice_id": np.arange(1, n + 1),
                    "user_id": inv_users,
                    "amount_cents": amount,
                    "method": self.pick(["card", "upi", "netbanking"], n),
                    "card_last4": [f"{x:04d}" for x in rng.integers(0, 10**4, n)],
                    "paid_at": self.ts(issued + rng.integers(0, 3 * DAY_S, n)),
                    "refunded_at": pd.Series(self.ts(issued + 5 * DAY_S)).where(rng.random(n) < 0.03),
                }
            ),
        )

    def consents(self) -> None:
        rng = self.rng
        rows = []
        for purpose, share in zip(PURPOSES, [0.9, 0.3, 0.7, 0.5, 0.2], strict=True):
            u = self.per_user(share)
            granted = self.when(u)
            ended_at = granted + (self.now_s - granted) * rng.random(len(u))
            withdrawn = np.where(rng.random(len(u)) < 0.12, ended_at, np.nan)
            objected = np.where(np.isnan(withdrawn) & (rng.random(len(u)) < 0.06), ended_at, np.nan)
            rows.append(
                pd.DataFrame(
                    {
                        "user_id": u,
                        "purpose": purpose,
                        "granted_at": self.ts(granted),
                        "withdrawn_at": pd.to_datetime(withdrawn, unit="s", utc=True),
                        "objected_at": pd.to_datetime(objected, unit="s", utc=True),
                    }
                )
            )
        frame = pd.concat(rows, ignore_index=True)
        frame.insert(0, "consent_id", np.arange(1, len(frame) + 1))
        self.copy("consents", frame)
        marketing = frame[frame.purpose == "marketing"]
        u = marketing.user_id.to_numpy()
        self.copy(
            "marketing_contacts",
            pd.DataFrame(
                {
                    "contact_id": np.arange(1, len(u) + 1),
                    "user_id": u,
                    "email": self.emails[u - 1],
                    "name": None,
                    "list_name": self.pick(["newsletter", "challenges"], len(u)),
                    "subscribed_at": marketing.granted_at.to_numpy(),
                }
            ),
        )

    def sessions(self) -> None:
        rng = self.rng
        u = self.per_user(0.9, 4)
        created = self.when(u)
        temporary = rng.random(len(u)) < 0.6
        life = np.where(temporary, rng.integers(600, DAY_S, len(u)), rng.integers(30 * DAY_S, YEAR_S, len(u)))
        self.copy(
            "sessions",
            pd.DataFrame(
                {
                    "session_id": np.arange(1, len(u) + 1),
                    "user_id": u,
                    "cookie_id": [f"{x:016x}" for x in rng.integers(0, 2**62, len(u))],
                    "kind": np.where(temporary, "temporary", "persistent"),
                    "ip_address": self.ips(len(u)),
                    "created_at": self.ts(created),
                    "expires_at": self.ts(created + life),
                }
            ),
        )

    def events(self, events_per_user: int) -> None:
        rng = self.rng
        total = self.n * events_per_user
        chunk = 2_000_000
        self.cur.execute("SELECT coalesce(max(event_id), 0) FROM usage_events")
        next_id = int(self.cur.fetchone()[0]) + 1  # type: ignore[index]
        for lo in range(0, total, chunk):
            size = min(chunk, total - lo)
            u = rng.integers(1, self.n + 1, size)
            self.copy(
                "usage_events",
                pd.DataFrame(
                    {
                        "event_id": np.arange(next_id + lo, next_id + lo + size),
                        "user_id": u,
                        "occurred_at": self.ts(self.when(u)),
                        "feature": self.pick(FEATURES, size),
                        "duration_ms": rng.integers(200, 1_800_000, size),
                        "storage_bytes": rng.integers(0, 5_000_000, size),
                    }
                ),
            )
        size = max(self.n * events_per_user // 4, 1)
        u = rng.integers(1, self.n + 1, size).astype("float64")
        anonymous = rng.random(size) < 0.3
        occurred = np.where(anonymous, self.now_s - rng.integers(0, 2 * YEAR_S, size), self.when(u.astype("int64")))
        u[anonymous] = np.nan
        browser = self.pick(range(len(BROWSERS)), size)
        self.copy(
            "visitor_logs",
            pd.DataFrame(
                {
                    "log_id": np.arange(1, size + 1),
                    "user_id": pd.array(u, dtype="Int64"),
                    "visitor_id": [f"v{x:015x}" for x in rng.integers(0, 2**60, size)],
                    "occurred_at": self.ts(occurred),
                    "ip_address": self.ips(size),
                    "device_type": self.pick(DEVICES, size),
                    "browser": [BROWSERS[b][0] for b in browser],
                    "user_agent": [f"Mozilla/5.0 {BROWSERS[b][0]}/{BROWSERS[b][1]}" for b in browser],
                    "language": self.pick(LANGS, size),
                    "file_accessed": self.pick(["/courses", "/labs/run?session=1", "/quiz/12", "/"], size),
                    "referrer": self.pick(
                        ["https://search.example.com/?q=reskill", None, "https://example.org/blog"], size
                    ),
                    "error": self.pick([None, None, None, "404"], size),
                    "os": self.pick(OSES, size),
                    "time_zone": self.pick(ZONES, size),
                }
            ),
        )

    def disputes_and_holds(self) -> None:
        rng = self.rng
        # Held people are drawn partly from closed accounts, so holds visibly block purges.
        closed_users = np.flatnonzero(~np.isnan(self.closed)) + 1
        u = np.unique(np.concatenate([self.some(0.01, np.arange(1, self.n + 1)), self.some(0.05, closed_users)]))
        opened = self.when(u)
        self.copy(
            "disputes",
            pd.DataFrame(
                {
                    "dispute_id": np.arange(1, len(u) + 1),
                    "user_id": u,
                    "summary": self.pick(["Refund dispute", "Chargeback", "Content licence claim"], len(u)),
                    "opened_at": self.ts(opened),
                    "closed_at": pd.Series(self.ts(opened + 60 * DAY_S)).where(rng.random(len(u)) < 0.3),
                }
            ),
        )
        released = rng.random(len(u)) < 0.25
        self.copy(
            "legal_holds",
            pd.DataFrame(
                {
                    "hold_id": np.arange(1, len(u) + 1),
                    "subject_key": u.astype(str),
                    "reference": [f"dispute {i}" for i in range(1, len(u) + 1)],
                    "reason": "Litigation hold pending dispute",
                    "placed_at": self.ts(opened),
                    "released_at": pd.Series(self.ts(np.minimum(opened + 90 * DAY_S, self.now_s))).where(released),
                }
            ),
        )


def create_platform(
    cur: psycopg2.extensions.cursor, now: datetime | None = None, *, months_back: int = 30, months_ahead: int = 3
) -> None:
    """Create re:Skill's tables (idempotent) with monthly partitions around `now`, as the demo's platform.

    A real deployment points Lethe at the company's own database instead; Lethe never creates it.
    """
    cur.execute(PLATFORM_SQL.read_text())
    today = (now or datetime.now(UTC)).date()
    for table in PARTITIONED_TABLES:
        start = add_months(today, -months_back)
        # Never bring back months that retention already dropped: start at the oldest partition left.
        oldest = _oldest_partition_month(cur, table)
        if oldest is not None and oldest > start:
            start = min(oldest, date(today.year, today.month, 1))
        ensure_month_partitions(cur, table, start, add_months(today, months_ahead))


def _oldest_partition_month(cur: psycopg2.extensions.cursor, table: str) -> date | None:
    cur.execute(
        "SELECT min(c.relname) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = %s AND c.relname ~ %s",
        (table, f"^{table}_[0-9]{{4}}_[0-9]{{2}}$"),
    )
    name = cur.fetchone()[0]  # type: ignore[index]
    if name is None:
        return None
    year, month = name.rsplit("_", 2)[-2:]
    return date(int(year), int(month), 1)


def seed(
    url: str,
    users: int,
    *,
    random_seed: int = 42,
    now: datetime | None = None,
    events_per_user: int = 20,
    progress: bool = False,
    on_step: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Create the demo's platform (if absent) and fill it; return rows per table. Refuses one that has accounts."""
    if users < 1:
        raise ValueError("users must be at least 1")
    now = (now or datetime.now(UTC)).astimezone(UTC)
    conn = connect(url)
    try:
        with conn, conn.cursor() as cur:
            create_platform(cur, now)
            cur.execute("SELECT count(*) FROM (SELECT 1 FROM accounts LIMIT 1) AS a")
            if cur.fetchone()[0]:  # type: ignore[index]
                raise ValueError("the database already has accounts: seed only an empty, migrated database")
            start = add_months((now - timedelta(days=2 * 365 + 30)).date(), 0)
            for table in ("usage_events", "visitor_logs"):
                ensure_month_partitions(cur, table, start, add_months(now.date(), 1))
            cur.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            if cur.fetchone()[0]:  # type: ignore[index]
                # Generated rows are consistent by construction: skip per-row FK triggers while loading.
                cur.execute("SET LOCAL session_replication_role = replica")
            seeder = Seeder(cur, users, random_seed, now, progress)
            seeder.accounts()
            seeder.simple_tables()
            seeder.billing()
            seeder.consents()
            seeder.sessions()
            seeder.events(events_per_user)
            seeder.disputes_and_holds()
        with conn.cursor() as cur:
            conn.autocommit = True
            cur.execute("ANALYZE")
        return seeder.counts
    finally:
        conn.close()
