"""usage_sharing against a real PostgreSQL and S3 over HTTP: crafted rows, releases read back from the bucket."""

from __future__ import annotations

import dataclasses
import io
import re
from datetime import UTC, date, datetime, timedelta

import pandas as pd
import psycopg2
import pytest
from lethe.config import BUCKETS, PRIMARY_REGION
from lethe.db import transaction
from lethe.ledger import verify_chain
from lethe.policy import load_policy
from lethe.sharing import pipeline, release
from lethe.sharing.budget import AlreadyReleased, BudgetExceeded
from lethe.sharing.config import RecipientConfig
from lethe.sharing.gate import PII_PATTERNS, run_gate
from lethe.sharing.pipeline import GateFailed
from lethe.storage import s3_client
from pycanon import anonymity

pytestmark = pytest.mark.integration

TODAY = datetime.now(UTC).date()
DAY1 = TODAY - timedelta(days=3)  # inside the migrated partitions
END = datetime(TODAY.year, TODAY.month, TODAY.day, tzinfo=UTC) - timedelta(days=1)
START = END - timedelta(days=5)
ALLOWED = {k: tuple(v) for k, v in load_policy().sharing.allowed_values.model_dump().items()}
EXACT = RecipientConfig(
    name="partner", audience="university", k=10, max_events_per_cell=5, max_cells_per_day=4, allowed=ALLOWED
)
NOISY = RecipientConfig(
    name="public",
    audience="public",
    k=10,
    dimensions=("feature",),
    mechanism="laplace",
    epsilon=1.0,
    delta=1e-6,
    audience_epsilon=1.0,
    audience_delta=1e-6,
    max_events_per_cell=2,
    max_cells_per_day=2,
    allowed=ALLOWED,
)


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
        rows.usage(100, DAY1, "certificate", count=3)
    summary = pipeline.run_release(db_url, s3_endpoint, EXACT, START, END)
    assert summary["status"] == "published" and summary["cells_suppressed"] >= 2
    loaded = release.load_latest_release("partner", s3_endpoint)
    assert loaded is not None and loaded.release_id == summary["release_id"]
    frame = loaded.frame
    assert "certificate" not in set(frame["feature"])
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
    assert_k_anonymous_by_pycanon(db_url, frame, EXACT)


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


def test_noisy_release_spends_the_audience_budget_per_data_day_once(db_url: str, s3_endpoint: str) -> None:
    with transaction(db_url) as cur:
        crowd(Rows(cur), 1, 400)
    first = pipeline.run_release(db_url, s3_endpoint, NOISY, END - timedelta(days=2), END)
    assert first["status"] == "published" and first["epsilon_spent"] == pytest.approx(2.0)
    loaded = release.load_latest_release("public", s3_endpoint)
    assert loaded is not None and loaded.manifest["epsilon_spent"] == pytest.approx(2.0)
    assert loaded.frame["total_duration_ms"].isna().all()  # durations withheld under noise
    quiz = loaded.frame[loaded.frame["feature"] == "quiz"]
    assert len(quiz) == 1 and abs(int(quiz["people"].iloc[0]) - 400) < 60  # DAY1 is in the window; noise of scale 4
    # A noisy manifest says only noisy or public things: no exact count of the cells left out.
    assert "cells_total" not in loaded.manifest and "cells_suppressed" not in loaded.manifest
    assert loaded.manifest["noise"]["library"] == "opendp" and loaded.manifest["noise"]["threshold"] >= 10
    assert run_gate(loaded.frame, loaded.config).success
    # The same day again, to the same audience: refused, whatever the budget would say.
    with pytest.raises(AlreadyReleased, match=r"audience 'public' already received data day\(s\) "):
        pipeline.run_release(db_url, s3_endpoint, NOISY, END - timedelta(days=1), END + timedelta(days=1))
    keys = published_objects(s3_endpoint, "public")
    assert {k.split("/")[2] for k in keys} == {first["release_id"]}
    # Another audience pays for what the public got on those days: 1.0 of its 1.5 is gone.
    partner = dataclasses.replace(NOISY, name="partner-noisy", audience="partner", audience_epsilon=1.5)
    with pytest.raises(BudgetExceeded, match=r"audience 'partner' has less left of its budget of 1\.5"):
        pipeline.run_release(db_url, s3_endpoint, partner, END - timedelta(days=1), END)
    with transaction(db_url) as cur:
        cur.execute("SELECT status, epsilon_spent FROM sharing_releases ORDER BY created_at")
        assert cur.fetchall() == [("published", 2.0), ("refused", 0.0), ("refused", 0.0)]
        cur.execute("SELECT audience, day, recipient, epsilon FROM sharing_audience_days ORDER BY day")
        assert cur.fetchall() == [
            ("public", (END - timedelta(days=2)).date(), "public", 1.0),
            ("public", (END - timedelta(days=1)).date(), "public", 1.0),
        ]
        cur.execute("SELECT payload->>'status' FROM ledger WHERE kind = 'sharing_release' ORDER BY entry_id")
        assert [r[0] for r in cur.fetchall()] == ["published", "refused", "refused"]
        assert verify_chain(cur).ok


def test_renaming_a_recipient_cannot_release_a_day_again(db_url: str, s3_endpoint: str) -> None:
    """The attack: rename the recipient, get the same days again, subtract, read one person's day."""
    with transaction(db_url) as cur:
        rows = Rows(cur)
        crowd(rows, 1, 12)
    first = pipeline.run_release(db_url, s3_endpoint, EXACT, START, END)
    # Person 13 joins DAY1's crowd afterwards (a late row): the difference of two releases would be exactly them.
    with transaction(db_url) as cur:
        rows = Rows(cur)
        rows.next_event, rows.next_log = 10_000, 10_000
        crowd(rows, 13, 1)
    renamed = dataclasses.replace(EXACT, name="partner-v2")
    assert pipeline.plan(db_url, [renamed], END.date()) == []  # nothing is due: the audience had these days
    with pytest.raises(AlreadyReleased, match=r"audience 'university' already received data day\(s\) .* under any"):
        pipeline.run_release(db_url, s3_endpoint, renamed, START, END)
    assert published_objects(s3_endpoint, "partner-v2") == {}
    # Nor can the old name move to a fresh audience and start again.
    moved = dataclasses.replace(EXACT, audience="fresh-audience")
    with pytest.raises(AlreadyReleased, match="belongs to audience 'university' since its first release"):
        pipeline.run_release(db_url, s3_endpoint, moved, START, END)
    # The budget tables are append-only, like the ledger.
    for statement in (
        "UPDATE sharing_audience_days SET audience = 'other'",
        "DELETE FROM sharing_audience_days",
        "TRUNCATE sharing_audience_days CASCADE",
        "DELETE FROM sharing_recipient_audiences",
    ):
        with pytest.raises(psycopg2.errors.RaiseException, match="append-only"), transaction(db_url) as cur:
            cur.execute(statement)
    with transaction(db_url) as cur:
        cur.execute("SELECT count(*), min(release_id) FROM sharing_audience_days")
        assert cur.fetchone() == (5, first["release_id"])


def test_a_planted_email_fails_the_gate_and_nothing_is_written(db_url: str, s3_endpoint: str) -> None:
    with transaction(db_url) as cur:
        rows = Rows(cur)
        crowd(rows, 1, 12)
        crowd(rows, 50, 12, feature="Contact alice.smith@example.com")
    # The allow-list shows the value as `other`; were it (wrongly) listed, the gate's patterns still catch it.
    careless = dataclasses.replace(EXACT, allowed={**ALLOWED, "feature": ("quiz", "contact alice.smith@example.com")})
    assert "other" in set(pipeline.build(db_url, EXACT, START, END).protected.frame["feature"])
    with pytest.raises(GateFailed, match="no_email_in_dimension_values") as failure:
        pipeline.run_release(db_url, s3_endpoint, careless, START, END)
    assert "alice" not in str(failure.value)
    assert published_objects(s3_endpoint, "partner") == {}
    with transaction(db_url) as cur:
        cur.execute("SELECT status, s3_prefix FROM sharing_releases")
        assert cur.fetchall() == [("gate_failed", None)]
    # Not processed: the next run still starts where a new recipient starts.
    (window,) = pipeline.plan(db_url, [careless], END.date())
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
    assert "/labs" not in set(loaded.frame["feature"])  # 15 cookies never linked to an account: left out
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


def test_ten_cookies_of_one_human_are_not_ten_people(db_url: str, s3_endpoint: str) -> None:
    """The attack: one visitor with ten cookies made a published cell of "10 people" on a sensitive page."""
    with transaction(db_url) as cur:
        rows = Rows(cur)
        crowd(rows, 1, 12)
        for i in range(10):  # an anonymous visitor clearing cookies between views of a sensitive page
            rows.visit(None, DAY1, path="/help/debt-counselling", visitor=f"anon{i:012x}")
        rows.person(500)  # a member with ten cookies, each once logged in (on another day)
        for i in range(10):
            rows.visit(500, DAY1 - timedelta(days=20), visitor=f"member500cookie{i:03d}")
            rows.visit(None, DAY1, path="/forum/thread/9", visitor=f"member500cookie{i:03d}")
    built = pipeline.build(db_url, EXACT, START, END)
    cells = built.aggregate.cells
    assert "/help" not in set(cells["feature"])  # never-linked cookies are left out of people counts
    forum = cells[cells["feature"] == "/forum"]
    assert list(forum["people"]) == [1] and list(forum["events"]) == [5]  # one human (capped at 5 views)
    assert "/forum" not in set(built.protected.frame["feature"])  # and so suppressed
    assert set(built.protected.frame["feature"]) == {"quiz", "/courses"}


def test_an_objectors_logged_out_views_are_not_counted(db_url: str) -> None:
    """The attack: a logged-out page view from a cookie linked to a person who objected still counted."""
    with transaction(db_url) as cur:
        rows = Rows(cur)
        crowd(rows, 1, 12)
        rows.person(300, objected=True)
        rows.visit(300, DAY1 - timedelta(days=30), visitor="objector-cookie")  # the link, long before
        for _ in range(3):
            rows.visit(None, DAY1, visitor="objector-cookie")  # logged out, same /courses page as the crowd
        rows.person(301)  # a consenting member's logged-out views count as theirs
        rows.visit(301, DAY1 - timedelta(days=30), visitor="member-cookie")
        rows.visit(None, DAY1, visitor="member-cookie")
    with_objector = pipeline.build(db_url, EXACT, START, END).aggregate.cells
    with transaction(db_url) as cur:
        cur.execute("DELETE FROM visitor_logs WHERE visitor_id = 'objector-cookie'")
    without = pipeline.build(db_url, EXACT, START, END).aggregate.cells
    pd.testing.assert_frame_equal(with_objector, without)
    pages = without[without["source"] == "page"]
    assert int(pages["people"].sum()) == 13  # the crowd and member 301, by account


def test_a_username_path_is_never_published(db_url: str, s3_endpoint: str) -> None:
    """The attack: a profile path `/<username>` was a feature value in every release, the public one included."""
    with transaction(db_url) as cur:
        rows = Rows(cur)
        crowd(rows, 1, 400)
        for u in range(1, 401):  # everyone visits the same popular profile page
            rows.visit(u, DAY1, path="/jane_doe_1987?tab=posts")
        cur.execute(
            "INSERT INTO accounts (user_id, name, username, email, password_hash, created_at)"
            " VALUES (999, 'Jane Doe', 'jane_doe_1987', 'jane@example.com', 'x', now())"
        )
    for config in (EXACT, NOISY):
        pipeline.run_release(db_url, s3_endpoint, config, END - timedelta(days=3), END)
        for key, body in published_objects(s3_endpoint, config.name).items():
            assert b"jane_doe" not in body.lower(), key
        loaded = release.load_latest_release(config.name, s3_endpoint)
        assert loaded is not None and set(loaded.frame["feature"]) <= {"quiz", "/courses", "/other"}
        # The exact release shows the profile page as /other (the noisy one's 2-cells-a-day bound drops it).
        assert config.noisy or "/other" in set(loaded.frame["feature"])


def test_a_suppressed_cell_cannot_be_derived_across_recipients(db_url: str, s3_endpoint: str) -> None:
    """The attack: recipient A's quiz total minus recipient B's quiz cells by region gives B's suppressed cell."""
    by_feature = dataclasses.replace(EXACT, name="by-feature", audience="a", dimensions=("feature",))
    by_region = dataclasses.replace(EXACT, name="by-region", audience="b", dimensions=("feature", "region"))
    day2 = DAY1 - timedelta(days=1)
    with transaction(db_url) as cur:
        rows = Rows(cur)
        for day, first in ((DAY1, 1), (day2, 200)):
            crowd(rows, first, 14, day=day)  # quiz and /courses in Asia
            for u in range(first + 50, first + 53):  # and three people in Europe: suppressed cells of by-region
                rows.person(u)
                rows.visit(u, day, zone="Europe/Paris")
                rows.usage(u, day, "quiz", count=2)

    def window(day: date) -> tuple[datetime, datetime]:
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        return start, start + timedelta(days=1)

    # DAY1: the coarse release first; the finer one would give its suppressed Europe cells away.
    assert pipeline.run_release(db_url, s3_endpoint, by_feature, *window(DAY1))["status"] == "published"
    with pytest.raises(GateFailed, match="no_suppressed_cell_derivable_across_recipients") as refused:
        pipeline.run_release(db_url, s3_endpoint, by_region, *window(DAY1))
    message = str(refused.value)
    assert f"recipient 'by-region' day {DAY1} usage feature=quiz region=Europe (from 'by-feature'" in message
    assert f"recipient 'by-region' day {DAY1} page feature=/courses region=Europe (from 'by-feature'" in message
    assert published_objects(s3_endpoint, "by-region") == {}
    # day2: the other order. The finer release goes first; the coarse one is refused for the finer one's sake.
    assert pipeline.run_release(db_url, s3_endpoint, by_region, *window(day2))["status"] == "published"
    with pytest.raises(GateFailed, match="no_suppressed_cell_derivable_across_recipients") as refused:
        pipeline.run_release(db_url, s3_endpoint, by_feature, *window(day2))
    assert f"recipient 'by-region' day {day2} usage feature=quiz region=Europe (from 'by-feature'" in str(refused.value)
    # A release that suppresses nothing another one publishes whole is not refused.
    whole = dataclasses.replace(by_region, name="whole", audience="c", k=3)
    assert pipeline.run_release(db_url, s3_endpoint, whole, *window(DAY1))["status"] == "published"
    with transaction(db_url) as cur:
        cur.execute(
            "SELECT r.recipient, count(*) FILTER (WHERE published), count(*) FILTER (WHERE NOT published)"
            " FROM sharing_release_cells JOIN sharing_releases r USING (release_id) GROUP BY 1 ORDER BY 1"
        )
        assert cur.fetchall() == [("by-feature", 2, 0), ("by-region", 2, 2), ("whole", 4, 0)]
    for name in ("by-feature", "by-region", "whole"):
        loaded = release.load_latest_release(name, s3_endpoint)
        assert loaded is not None
        assert_k_anonymous_by_pycanon(db_url, loaded.frame, loaded.config)


def assert_k_anonymous_by_pycanon(db_url: str, frame: pd.DataFrame, config: RecipientConfig) -> None:
    """pyCANON checks k on person-level rows rebuilt here with plain SQL, restricted to the published cells.

    One row per person and cell (members by account, as the crafted rows of these tests are), its
    quasi-identifiers the cell's values: k-anonymity of that table is "every published cell has at least k people".
    """
    with transaction(db_url) as cur:
        cur.execute(
            """
            WITH ok AS (SELECT user_id, granted_at FROM consents WHERE purpose = 'analytics'
                        AND withdrawn_at IS NULL AND objected_at IS NULL),
            views AS (
                SELECT v.user_id, v.occurred_at, v.log_id, v.occurred_at::date AS day, v.file_accessed,
                       split_part(v.time_zone, '/', 1) AS region, lower(v.device_type) AS device_type,
                       v.browser || ' ' || substring(v.user_agent FROM v.browser || '/([0-9]+)') AS browser_family
                FROM visitor_logs v JOIN ok USING (user_id) WHERE v.occurred_at >= ok.granted_at),
            first_view AS (SELECT DISTINCT ON (user_id, day) * FROM views ORDER BY user_id, day, occurred_at, log_id)
            SELECT DISTINCT e.user_id, e.occurred_at::date, 'usage', e.feature, f.region, f.device_type,
                   f.browser_family
            FROM usage_events e JOIN ok USING (user_id)
            LEFT JOIN first_view f ON f.user_id = e.user_id AND f.day = e.occurred_at::date
            WHERE e.occurred_at >= ok.granted_at
            UNION
            SELECT DISTINCT user_id, day, 'page', '/' || split_part(split_part(file_accessed, '?', 1), '/', 2),
                   region, device_type, browser_family FROM views
            """
        )
        people = pd.DataFrame(cur.fetchall(), columns=["person", "day", "source", *DIMS])
    for dim in DIMS:
        if dim not in config.dimensions:
            people[dim] = "all"
    qi = ["day", "source", *DIMS]
    published = frame[qi].astype(str).drop_duplicates()
    people = people.drop(columns="person").astype(str).merge(published, on=qi)
    assert len(published) > 0 and len(people.drop_duplicates()) == len(published)  # every cell rebuilt
    assert anonymity.k_anonymity(people, qi) >= config.k


DIMS = ["feature", "region", "device_type", "browser_family"]
