"""usage_sharing against a real PostgreSQL and S3 over HTTP: crafted rows, releases read back from the bucket."""

from __future__ import annotations

import hashlib
import hmac
import io
import math
import random
import re
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction

import pandas as pd
import pytest
from lethe.config import BUCKETS, PRIMARY_REGION
from lethe.db import transaction
from lethe.ledger import verify_chain
from lethe.sharing import pipeline, release
from lethe.sharing.aggregate import CELL_KEYS
from lethe.sharing.budget import BudgetExceeded
from lethe.sharing.config import RecipientConfig
from lethe.sharing.gate import PII_PATTERNS, run_gate
from lethe.sharing.pipeline import GateFailed
from lethe.storage import s3_client

pytestmark = pytest.mark.integration

TODAY = datetime.now(UTC).date()
DAY1 = TODAY - timedelta(days=3)  # inside the migrated partitions
END = datetime(TODAY.year, TODAY.month, TODAY.day, tzinfo=UTC) - timedelta(days=1)
START = END - timedelta(days=5)
EXACT = RecipientConfig(name="partner", k=10, max_events_per_cell=5, max_cells_per_day=4)


class Rows:
    """Inserts accounts, consents, usage events and page views with unique ids."""

    def __init__(self, cur) -> None:
        self.cur = cur
        self.next_event = 1
        self.next_log = 1

    def person(self, user_id: int, *, granted_days_ago: int = 400, withdrawn: bool = False, objected: bool = False):
        now = datetime.now(UTC)
        self.cur.execute(
            "INSERT INTO accounts (user_id, name, username, email, phone, password_hash, created_at)"
            " VALUES (%s, %s, %s, %s, %s, 'x', %s)",
            (
                user_id,
                f"Person {user_id}",
                f"member{user_id}",
                f"member{user_id}@example.com",
                f"+91 98765 {user_id:05d}",
                now - timedelta(days=500),
            ),
        )
        self.cur.execute(
            "INSERT INTO consents (consent_id, user_id, purpose, granted_at, withdrawn_at, objected_at)"
            " VALUES (%s, %s, 'analytics', %s, %s, %s)",
            (
                user_id,
                user_id,
                now - timedelta(days=granted_days_ago),
                now - timedelta(hours=1) if withdrawn else None,
                now - timedelta(hours=1) if objected else None,
            ),
        )

    def usage(self, user_id: int, day: date, feature: str, count: int = 1, duration_ms: int = 60_000) -> None:
        for i in range(count):
            at = datetime(day.year, day.month, day.day, 9, tzinfo=UTC) + timedelta(minutes=i)
            self.cur.execute(
                "INSERT INTO usage_events (event_id, user_id, occurred_at, feature, duration_ms)"
                " VALUES (%s, %s, %s, %s, %s)",
                (self.next_event, user_id, at, feature, duration_ms),
            )
            self.next_event += 1

    def visit(
        self,
        user_id: int | None,
        day: date,
        *,
        path: str = "/courses?utm=mail",
        zone: str = "Asia/Kolkata",
        device: str = "desktop",
        browser: str = "Chrome",
        visitor: str | None = None,
    ) -> None:
        at = datetime(day.year, day.month, day.day, 8, tzinfo=UTC)
        self.cur.execute(
            "INSERT INTO visitor_logs (log_id, user_id, visitor_id, occurred_at, ip_address, device_type, browser,"
            " user_agent, language, file_accessed, referrer, os, time_zone)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'en-IN', %s, 'https://example.org/?q=x', 'Linux', %s)",
            (
                self.next_log,
                user_id,
                visitor or f"v{self.next_log:015x}",
                at,
                f"203.0.113.{self.next_log % 250}",
                device,
                browser,
                f"Mozilla/5.0 (X11) {browser}/130.0.1 member{user_id}",
                path,
                zone,
            ),
        )
        self.next_log += 1


def crowd(rows: Rows, first: int, n: int, day: date = DAY1, feature: str = "quiz") -> list[int]:
    """n consenting people who each use `feature` twice and view one page that day."""
    ids = list(range(first, first + n))
    for u in ids:
        rows.person(u)
        rows.visit(u, day)
        rows.usage(u, day, feature, count=2)
    return ids


def published_objects(endpoint: str, recipient: str) -> dict[str, bytes]:
    client = s3_client(PRIMARY_REGION, endpoint)
    out = {}
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKETS.sharing, Prefix=f"recipients/{recipient}/")
    for page in pages:
        for obj in page.get("Contents", []):
            out[obj["Key"]] = client.get_object(Bucket=BUCKETS.sharing, Key=obj["Key"])["Body"].read()
    return out


def test_a_person_alone_in_a_cell_is_not_published(db_url: str, s3_endpoint: str) -> None:
    with transaction(db_url) as cur:
        rows = Rows(cur)
        crowd(rows, 1, 12)
        rows.person(100)
        rows.visit(100, DAY1, zone="Europe/Berlin", device="tablet", browser="Firefox")
        rows.usage(100, DAY1, "rare_feature", count=3)
    summary = pipeline.run_release(db_url, s3_endpoint, EXACT, START, END)
    assert summary["status"] == "published" and summary["cells_suppressed"] >= 2
    loaded = release.load_latest_release("partner", s3_endpoint)
    assert loaded is not None and loaded.release_id == summary["release_id"]
    frame = loaded.frame
    assert "rare_feature" not in set(frame["feature"])
    assert "Europe" not in set(frame["region"])
    quiz = frame[(frame["feature"] == "quiz")]
    assert len(quiz) == 1 and int(quiz["people"].iloc[0]) == 12 and int(quiz["events"].iloc[0]) == 24
    pages = frame[frame["source"] == "page"]
    assert list(pages["feature"]) == ["/courses"] and int(pages["people"].iloc[0]) == 12  # query string gone
    assert (frame["people"] >= 10).all()
    csv = pd.read_csv(
        io.BytesIO(published_objects(s3_endpoint, "partner")[f"recipients/partner/{summary['release_id']}/cells.csv"])
    )
    assert len(csv) == len(frame)


def test_withdrawn_or_objected_consent_leaves_the_release_unchanged(db_url: str) -> None:
    with transaction(db_url) as cur:
        rows = Rows(cur)
        crowd(rows, 1, 11)
        # 200 withdrew, 201 objected, 202 consented only after these events: none may count.
        rows.person(200, withdrawn=True)
        rows.person(201, objected=True)
        rows.person(202, granted_days_ago=1)
        for u in (200, 201, 202):
            rows.visit(u, DAY1, zone="America/New_York")
            rows.usage(u, DAY1, "quiz", count=4, duration_ms=3_600_000)
            rows.usage(u, DAY1, "forum", count=1)
    with_them = pipeline.build(db_url, EXACT, START, END)
    with transaction(db_url) as cur:
        for table in ("usage_events", "visitor_logs"):
            cur.execute(f"DELETE FROM {table} WHERE user_id IN (200, 201, 202)")  # noqa: S608 - test constant
    without = pipeline.build(db_url, EXACT, START, END)
    pd.testing.assert_frame_equal(with_them.protected.frame, without.protected.frame)
    assert with_them.aggregate.rows_in == without.aggregate.rows_in
    pd.testing.assert_frame_equal(with_them.aggregate.cells, without.aggregate.cells)
    assert len(without.protected.frame) > 0


def test_rows_tied_only_to_the_pseudonym_count_as_their_person(db_url: str) -> None:
    """After a day retention cuts the user id and keeps the person's keyed pseudonym (HMAC-SHA256 of
    `user_id:<id>`): the release counts the same people and events as while the rows were linked, and a
    cut page view is never taken for an anonymous visitor."""
    from lethe.connections import pseudonym_key_or_local

    with transaction(db_url) as cur:
        rows = Rows(cur)
        crowd(rows, 1, 12)
        crowd(rows, 50, 11, feature="forum")
    linked = pipeline.build(db_url, EXACT, START, END)
    key = pseudonym_key_or_local()
    with transaction(db_url) as cur:
        for table in ("usage_events", "visitor_logs"):
            cur.execute(f"SELECT DISTINCT user_id FROM {table} WHERE user_id % 2 = 0")  # noqa: S608 - test constant
            for (user_id,) in cur.fetchall():
                cur.execute(
                    f"UPDATE {table} SET user_id = NULL, subject_pseudonym = %s WHERE user_id = %s",  # noqa: S608
                    (hmac.new(key, f"user_id:{user_id}".encode(), hashlib.sha256).hexdigest(), user_id),
                )
        cur.execute("SELECT count(*) FROM usage_events WHERE user_id IS NULL")
        assert cur.fetchone()[0] > 20
    cut = pipeline.build(db_url, EXACT, START, END)
    pd.testing.assert_frame_equal(linked.aggregate.cells, cut.aggregate.cells)
    assert linked.aggregate.rows_in == cut.aggregate.rows_in
    frame = cut.protected.frame
    quiz = frame[(frame["feature"] == "quiz") & (frame["source"] == "usage")]
    assert int(quiz["people"].sum()) == 12 and int(quiz["events"].sum()) == 24
    pd.testing.assert_frame_equal(linked.protected.frame, frame)


def test_noisy_release_within_budget_then_the_next_is_refused(db_url: str, s3_endpoint: str) -> None:
    noisy = RecipientConfig(
        name="public",
        k=10,
        dimensions=("feature",),
        mechanism="laplace",
        epsilon=1.0,
        epsilon_budget=2.5,
        max_events_per_cell=2,
        max_cells_per_day=2,
    )
    with transaction(db_url) as cur:
        crowd(Rows(cur), 1, 400)
    first = pipeline.run_release(db_url, s3_endpoint, noisy, END - timedelta(days=2), END)
    assert first["status"] == "published" and first["epsilon_spent"] == pytest.approx(2.0)
    loaded = release.load_latest_release("public", s3_endpoint)
    assert loaded is not None and loaded.manifest["epsilon_spent"] == pytest.approx(2.0)
    assert loaded.frame["total_duration_ms"].isna().all()  # durations withheld under noise
    assert run_gate(loaded.frame, loaded.config).success
    with pytest.raises(BudgetExceeded, match=r"needs epsilon 1 .* 2 of the budget 2.5 is spent"):
        pipeline.run_release(db_url, s3_endpoint, noisy, END, END + timedelta(days=1))
    keys = published_objects(s3_endpoint, "public")
    assert {k.split("/")[2] for k in keys} == {first["release_id"]}
    with transaction(db_url) as cur:
        cur.execute("SELECT status, epsilon_spent FROM sharing_releases WHERE recipient = 'public' ORDER BY created_at")
        assert cur.fetchall() == [("published", 2.0), ("refused", 0.0)]
        cur.execute("SELECT sum(epsilon) FROM sharing_budget_spend WHERE recipient = 'public'")
        assert cur.fetchone()[0] == pytest.approx(2.0)
        cur.execute("SELECT payload->>'status' FROM ledger WHERE kind = 'sharing_release' ORDER BY entry_id")
        assert [r[0] for r in cur.fetchall()] == ["published", "refused"]
        assert verify_chain(cur).ok
    # The refused window (yesterday) is decided, not retried: nothing is due until tomorrow.
    assert pipeline.plan(db_url, [noisy], TODAY) == []


def test_a_planted_email_fails_the_gate_and_nothing_is_written(db_url: str, s3_endpoint: str) -> None:
    with transaction(db_url) as cur:
        rows = Rows(cur)
        crowd(rows, 1, 12)
        crowd(rows, 50, 12, feature="Contact alice.smith@example.com")
    with pytest.raises(GateFailed, match="no_email_in_dimension_values") as failure:
        pipeline.run_release(db_url, s3_endpoint, EXACT, START, END)
    assert "alice" not in str(failure.value)
    assert published_objects(s3_endpoint, "partner") == {}
    with transaction(db_url) as cur:
        cur.execute("SELECT status, s3_prefix FROM sharing_releases")
        assert cur.fetchall() == [("gate_failed", None)]
    # Not processed: the next run still starts where a new recipient starts.
    (window,) = pipeline.plan(db_url, [EXACT], END.date())
    assert window["start"] == (END - timedelta(days=EXACT.first_window_days)).isoformat()


def test_published_files_hold_no_personal_data(db_url: str, s3_endpoint: str) -> None:
    with transaction(db_url) as cur:
        rows = Rows(cur)
        crowd(rows, 1, 15)
        for i in range(15):  # anonymous visitors, counted by cookie in page rows
            rows.visit(None, DAY1, path="/labs/run?session=42", visitor=f"anon{i:012x}")
        cur.execute("SELECT email, username, phone FROM accounts")
        personal = [v for row in cur.fetchall() for v in row]
        cur.execute("SELECT visitor_id, host(ip_address), user_agent FROM visitor_logs")
        personal += [v for row in cur.fetchall() for v in row]
    summary = pipeline.run_release(db_url, s3_endpoint, EXACT, START, END)
    objects = published_objects(s3_endpoint, "partner")
    assert sorted(k.rsplit("/", 1)[1] for k in objects) == [
        "cells.csv",
        "cells.parquet",
        "data_dictionary.md",
        "manifest.json",
    ]
    loaded = release.load_latest_release("partner", s3_endpoint)
    assert loaded is not None
    labs = loaded.frame[loaded.frame["feature"] == "/labs"]
    assert int(labs["people"].iloc[0]) == 15  # 15 cookies, never joined to an account
    for key, body in objects.items():
        text = body.decode("utf-8", errors="replace")
        for value in personal:
            assert value not in text, f"{key} holds a raw value of the source rows"
        if key.endswith((".csv", ".md")):
            for kind, pattern in PII_PATTERNS.items():
                if kind in ("phone", "ip_address"):  # dates and version numbers; checked per value below
                    continue
                assert not re.search(pattern, text), f"{key} has something that looks like {kind}"
    assert run_gate(loaded.frame, loaded.config).success
    with transaction(db_url) as cur:
        cur.execute("SELECT source_table, aggregated_until FROM aggregation_watermarks")
        assert cur.fetchall() == []
    marks = pipeline.advance_watermarks(db_url, [EXACT])
    assert marks == {"usage_events": END.isoformat(), "visitor_logs": END.isoformat()}
    assert all(k.startswith(f"recipients/partner/{summary['release_id']}/") for k in objects)


def test_a_release_left_half_written_is_removed_by_the_next_run(db_url: str, s3_endpoint: str) -> None:
    with transaction(db_url) as cur:
        crowd(Rows(cur), 1, 12)
        cur.execute(
            "INSERT INTO sharing_releases (release_id, recipient, status, window_start, window_end, days, mechanism)"
            " VALUES ('20260101-000000-dead00', 'partner', 'pending', %s, %s, 5, 'none')",
            (START, END),
        )
    client = s3_client(PRIMARY_REGION, s3_endpoint)
    client.put_object(Bucket=BUCKETS.sharing, Key="recipients/partner/20260101-000000-dead00/cells.csv", Body=b"x")
    summary = pipeline.run_release(db_url, s3_endpoint, EXACT, START, END)
    keys = set(published_objects(s3_endpoint, "partner"))
    assert not any("dead00" in k for k in keys)
    versions = client.list_object_versions(Bucket=BUCKETS.sharing, Prefix="recipients/partner/20260101-000000-dead00/")
    assert not versions.get("Versions") and not versions.get("DeleteMarkers")
    with transaction(db_url) as cur:
        cur.execute("SELECT release_id, status FROM sharing_releases ORDER BY created_at")
        assert cur.fetchall() == [("20260101-000000-dead00", "abandoned"), (summary["release_id"], "published")]


def _account(cur, user_id: int, *, consent: str = "active", granted: datetime | None = None) -> None:
    """An account and (unless consent == 'none') its analytics consent: active, withdrawn or objected."""
    now = datetime.now(UTC)
    cur.execute(
        "INSERT INTO accounts (user_id, name, username, email, password_hash, created_at)"
        " VALUES (%s, %s, %s, %s, 'x', %s)",
        (user_id, f"Person {user_id}", f"member{user_id}", f"member{user_id}@example.com", now - timedelta(days=500)),
    )
    if consent != "none":
        cur.execute(
            "INSERT INTO consents (consent_id, user_id, purpose, granted_at, withdrawn_at, objected_at)"
            " VALUES (%s, %s, 'analytics', %s, %s, %s)",
            (
                user_id,
                user_id,
                granted or now - timedelta(days=400),
                now - timedelta(hours=1) if consent == "withdrawn" else None,
                now - timedelta(hours=1) if consent == "objected" else None,
            ),
        )


def _page(cur, log_id: int, user_id: int | None, at: datetime, path: str, zone, device, browser, agent) -> None:
    cur.execute(
        "INSERT INTO visitor_logs (log_id, user_id, visitor_id, occurred_at, device_type, browser, user_agent,"
        " file_accessed, time_zone) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (log_id, user_id, f"c{log_id:015x}", at, device, browser, agent, path, zone),
    )


def _event(cur, event_id: int, user_id: int, at: datetime, feature: str, duration_ms: int) -> None:
    cur.execute(
        "INSERT INTO usage_events (event_id, user_id, occurred_at, feature, duration_ms) VALUES (%s, %s, %s, %s, %s)",
        (event_id, user_id, at, feature, duration_ms),
    )


def _at(day: date, minute: int) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(minutes=minute)


def test_generalisation_keeps_only_coarse_values(db_url: str) -> None:
    with transaction(db_url) as cur:
        for u in (1, 2, 4):
            _account(cur, u)
        chrome = "Mozilla/5.0 (Linux; Android 15) Chrome/130.0.6723.91 Mobile Safari/537.36"
        edge = "Mozilla/5.0 (Windows NT 10.0) Chrome/130.0.0.0 Safari/537.36 Edg/130.0.2849.68"
        _page(cur, 1, 1, _at(DAY1, 60), "/quiz", "Asia/Kolkata", " Mobile ", "Chrome", chrome)
        _event(cur, 1, 1, _at(DAY1, 61), "quiz", 1000)
        _page(cur, 2, 2, _at(DAY1, 60), "https://reskill.example/Labs/run/7?session=abc#top", "Etc/UTC", "smart fridge",
              None, edge)  # fmt: skip
        _page(
            cur,
            3,
            None,
            _at(DAY1, 60),
            "/",
            None,
            None,
            "Safari",
            "Mozilla/5.0 (Macintosh) Version/18.1 Safari/605.1.15",
        )
        _page(cur, 4, 4, _at(DAY1, 60), "/", "Europe/Berlin", None, "Firefox", None)
        _event(cur, 2, 4, _at(DAY1, 61), "  Code_Lab ", 1000)
    cells = pipeline.build(db_url, RecipientConfig(name="t"), START, END).aggregate.cells
    got = {
        tuple(r)
        for r in cells[["source", "feature", "region", "device_type", "browser_family"]].itertuples(index=False)
    }
    assert got == {
        ("usage", "quiz", "Asia", "mobile", "Chrome 130"),  # region, device, browser from the day's page view
        ("page", "/quiz", "Asia", "mobile", "Chrome 130"),
        ("page", "/labs", "unknown", "other", "Edge 130"),
        ("page", "/", "unknown", "unknown", "Safari 18"),  # an anonymous visitor
        ("usage", "code_lab", "Europe", "unknown", "Firefox"),
        ("page", "/", "Europe", "unknown", "Firefox"),
    }
    pages = cells[cells["source"] == "page"]
    assert pages["total_duration_ms"].isna().all() and pages["median_duration_ms"].isna().all()


def test_contributions_are_bounded_per_cell_and_per_day(db_url: str) -> None:
    config = RecipientConfig(name="t", max_events_per_cell=5, max_cells_per_day=2, max_duration_ms=10_000)
    with transaction(db_url) as cur:
        ids = iter(range(1, 1000))
        for u in range(1, 12):
            _account(cur, u)
        for i in range(40):  # one heavy user, long events
            _event(cur, next(ids), 1, _at(DAY1, i), "quiz", 50_000)
        for i in range(3):  # and three more cells that day
            _event(cur, next(ids), 1, _at(DAY1, 100 + i), f"feature_{i}", 1000)
        for u in range(2, 12):
            for i in range(2):
                _event(cur, next(ids), u, _at(DAY1, i), "quiz", 2000)
    agg = pipeline.build(db_url, config, START, END).aggregate
    quiz = agg.cells[agg.cells["feature"] == "quiz"].iloc[0]
    assert quiz["events"] == 5 + 10 * 2  # the heavy user counts 5 events
    assert quiz["people"] == 11
    assert quiz["total_duration_ms"] == 5 * 10_000 + 20 * 2000  # durations clipped to 10 s
    assert quiz["median_duration_ms"] == 2000  # one mean per person
    # User 1 keeps 2 cells: quiz (busiest) and feature_0 (first of the ties by value).
    assert set(agg.cells["feature"]) == {"quiz", "feature_0"}
    assert agg.contributions == {"max_cells_per_person_day": 2, "max_events_per_person_cell": 5}
    assert agg.rows_in == 40 + 3 + 20 and agg.people_in == 11


# The seeded values and what a release may show of them, written out by hand for the reference below.
PATHS = {"/courses/7?x=1": "/courses", "/": "/", "https://h.example/Forum/t/9#a": "/forum", "/labs": "/labs"}
FEATURES = {"quiz": "quiz", " Code_Lab ": "code_lab", "forum": "forum", "search": "search", "profile": "profile"}
ZONES = {"Asia/Kolkata": "Asia", "Europe/Berlin": "Europe", "Etc/UTC": "unknown", None: "unknown"}
DEVICES = {"desktop": "desktop", " Mobile": "mobile", "fridge": "other", None: "unknown"}
AGENTS = {
    ("Chrome", "Mozilla/5.0 (X11) Chrome/131.0.1 Safari/537.36"): "Chrome 131",
    ("Firefox", "Mozilla/5.0 (X11; rv:132.0) Gecko/20100101 Firefox/132.0"): "Firefox 132",
    ("Firefox", None): "Firefox",
    (None, None): "unknown",
}


def _reference_cells(cur, start: datetime, end: datetime, cap: int, per_day: int) -> dict[tuple, tuple]:
    """The bounded cells as docs/sharing.md defines them, in plain Python over rows read here."""
    cur.execute(
        "SELECT user_id, granted_at FROM consents WHERE purpose = 'analytics'"
        " AND withdrawn_at IS NULL AND objected_at IS NULL"
    )
    granted = dict(cur.fetchall())
    cur.execute(
        "SELECT user_id, visitor_id, occurred_at, file_accessed, time_zone, device_type, browser, user_agent"
        " FROM visitor_logs WHERE occurred_at >= %s AND occurred_at < %s ORDER BY occurred_at",
        (start, end),
    )
    rows = []  # (unit, day, cell, duration)
    first_view: dict[tuple, tuple] = {}
    for user, visitor, at, path, zone, device, browser, agent in cur.fetchall():
        if user is not None and (user not in granted or at < granted[user]):
            continue
        day = at.astimezone(UTC).date()
        looks = (ZONES[zone], DEVICES[device], AGENTS[(browser, agent)])
        rows.append(((user, visitor if user is None else None), day, ("page", PATHS[path], *looks), None))
        if user is not None:
            first_view.setdefault((user, day), looks)  # rows come in time order
    cur.execute(
        "SELECT user_id, occurred_at, feature, duration_ms FROM usage_events WHERE occurred_at >= %s"
        " AND occurred_at < %s",
        (start, end),
    )
    for user, at, feature, duration in cur.fetchall():
        if user not in granted or at < granted[user]:
            continue
        day = at.astimezone(UTC).date()
        looks = first_view.get((user, day), ("unknown", "unknown", "unknown"))
        rows.append(((user, None), day, ("usage", FEATURES[feature], *looks), min(max(duration, 0), 4 * 3600 * 1000)))
    person_cells: dict[tuple, list] = {}
    for unit, day, cell, duration in rows:
        person_cells.setdefault((unit, day, cell), []).append(duration)
    by_person_day: dict[tuple, list] = {}
    for (unit, day, cell), durations in person_cells.items():
        by_person_day.setdefault((unit, day), []).append((cell, durations))
    kept: dict[tuple, list] = {}
    for (_, day), cells in by_person_day.items():
        cells.sort(key=lambda c: (-len(c[1]), c[0]))  # busiest first, then by the cell's values
        for cell, durations in cells[:per_day]:
            kept.setdefault((day, *cell), []).append(durations)
    out = {}
    for key, people in kept.items():
        events = sum(min(len(d), cap) for d in people)
        timed = [d for d in people if d[0] is not None]
        total = median = None
        if timed:  # page views carry no duration
            exact = sum(Fraction(sum(d) * min(len(d), cap), len(d)) for d in timed)
            means = sorted(Fraction(sum(d), len(d)) for d in timed)
            middle = (means[(len(means) - 1) // 2] + means[len(means) // 2]) / 2
            total, median = math.floor(exact + Fraction(1, 2)), math.floor(middle + Fraction(1, 2))  # SQL's round()
        out[key] = (events, len(people), total, median)
    return out


def test_cells_computed_in_postgres_equal_a_plain_reference(db_url: str) -> None:
    rng = random.Random(20)
    config = RecipientConfig(name="t", max_events_per_cell=3, max_cells_per_day=4)
    days = [DAY1 - timedelta(days=1), DAY1]
    with transaction(db_url) as cur:
        event_id = log_id = 0
        for u in range(1, 61):
            consent = rng.choice(["active"] * 5 + ["none", "withdrawn", "objected", "late"])
            # `late`: granted halfway through the window, so only the later rows count.
            _account(cur, u, consent="active" if consent == "late" else consent,
                     granted=_at(DAY1, 12 * 60) if consent == "late" else None)  # fmt: skip
            heavy = u % 7 == 0  # above both bounds: many events in a cell, many cells a day
            for day in days:
                minute = rng.randrange(0, 300)
                for _ in range(rng.randrange(1, 4)):
                    minute += rng.randrange(1, 40)
                    log_id += 1
                    browser, agent = rng.choice(list(AGENTS))
                    _page(cur, log_id, u, _at(day, minute), rng.choice(list(PATHS)), rng.choice(list(ZONES)),
                          rng.choice(list(DEVICES)), browser, agent)  # fmt: skip
                for _ in range(rng.randrange(20, 40) if heavy else rng.randrange(0, 6)):
                    minute += rng.randrange(1, 20)
                    event_id += 1
                    _event(cur, event_id, u, _at(day, minute), rng.choice(list(FEATURES)), rng.randrange(0, 20_000_000))
        for v in range(30):  # anonymous visitors, a few returning on the second day
            for day in days[: 1 + v % 2]:
                log_id += 1
                browser, agent = rng.choice(list(AGENTS))
                _page(cur, log_id, None, _at(day, rng.randrange(0, 1400)), rng.choice(list(PATHS)),
                      rng.choice(list(ZONES)), rng.choice(list(DEVICES)), browser, agent)  # fmt: skip
                cur.execute("UPDATE visitor_logs SET visitor_id = %s WHERE log_id = %s", (f"anon{v:012x}", log_id))
        want = _reference_cells(cur, START, END, config.max_events_per_cell, config.max_cells_per_day)
    agg = pipeline.build(db_url, config, START, END).aggregate
    got = {
        tuple(r[: len(CELL_KEYS)]): tuple(None if pd.isna(v) else int(v) for v in r[len(CELL_KEYS) :])
        for r in agg.cells.itertuples(index=False)
    }
    assert got == want
    # The seed reaches what the test is about: excluded people, and people above both bounds.
    assert agg.contributions == {"max_cells_per_person_day": 4, "max_events_per_person_cell": 3}
    with transaction(db_url) as cur:
        cur.execute(
            "SELECT count(DISTINCT user_id) FILTER (WHERE c.user_id IS NULL OR c.withdrawn_at IS NOT NULL"
            " OR c.objected_at IS NOT NULL) FROM usage_events e LEFT JOIN consents c USING (user_id)"
        )
        assert cur.fetchone()[0] >= 5
    assert agg.bytes_in < 200 * len(got)  # only the cells crossed to the worker
