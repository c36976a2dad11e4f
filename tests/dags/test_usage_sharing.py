"""usage_sharing end to end with dag.test(): crafted rows in, releases in the sharing bucket out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from lethe.config import BUCKETS, DEFAULT_POLICY_FILE, PRIMARY_REGION
from lethe.dagrun import DagRunFailed, run_dag
from lethe.db import transaction
from lethe.sharing.gate import run_gate
from lethe.sharing.release import load_latest_release
from lethe.storage import s3_client

pytestmark = pytest.mark.dags

# Every run is pinned to the moment the module was read: a suite crossing midnight UTC must not move the window.
RUN_AT = datetime.now(UTC).replace(microsecond=0)
MIDNIGHT = RUN_AT.replace(hour=0, minute=0, second=0)


def crowd(db_url: str, people: int, *, withdrawn: tuple[int, ...] = ()) -> None:
    """`people` consenting members using `quiz` on each of the last two days; some withdrew since."""
    now = datetime.now(UTC)
    with transaction(db_url) as cur:
        event = 0
        for u in range(1, people + 1):
            cur.execute(
                "INSERT INTO accounts (user_id, name, username, email, password_hash, created_at)"
                " VALUES (%s, %s, %s, %s, 'x', %s)",
                (u, f"Person {u}", f"member{u}", f"member{u}@example.com", now - timedelta(days=400)),
            )
            cur.execute(
                "INSERT INTO consents (consent_id, user_id, purpose, granted_at, withdrawn_at)"
                " VALUES (%s, %s, 'analytics', %s, %s)",
                (u, u, now - timedelta(days=300), now - timedelta(hours=2) if u in withdrawn else None),
            )
            for days_ago in (1, 2):
                at = MIDNIGHT - timedelta(days=days_ago) + timedelta(hours=10)
                cur.execute(
                    "INSERT INTO visitor_logs (log_id, user_id, visitor_id, occurred_at, ip_address, device_type,"
                    " browser, user_agent, file_accessed, time_zone) VALUES (%s, %s, %s, %s, '198.51.100.7',"
                    " 'mobile', 'Safari', 'Mozilla/5.0 Version/18.1 Safari/605.1', '/quiz/12?attempt=3',"
                    " 'Asia/Kolkata')",
                    (event, u, f"v{u:015x}", at),
                )
                for _ in range(3):
                    event += 1
                    cur.execute(
                        "INSERT INTO usage_events (event_id, user_id, occurred_at, feature, duration_ms)"
                        " VALUES (%s, %s, %s, 'quiz', 90000)",
                        (event, u, at + timedelta(minutes=event % 50)),
                    )


def releases(db_url: str) -> dict[str, str]:
    with transaction(db_url) as cur:
        cur.execute("SELECT recipient, status FROM sharing_releases ORDER BY created_at")
        return dict(cur.fetchall())


def test_usage_sharing_publishes_each_recipient_and_advances_the_watermark(
    db_url: str, s3_endpoint: str, airflow_home: Path
) -> None:
    crowd(db_url, 30, withdrawn=(29, 30))
    run_dag("usage_sharing", logical_date=RUN_AT)
    assert releases(db_url) == {"research_partner": "published", "public_report": "published"}
    loaded = load_latest_release("research_partner", s3_endpoint)
    assert loaded is not None and loaded.manifest["days"] == 7
    quiz = loaded.frame[loaded.frame["feature"] == "quiz"]
    assert sorted(quiz["people"].astype(int)) == [28, 28]  # two days; the two who withdrew are not counted
    assert set(quiz["region"]) == {"Asia"} and set(quiz["browser_family"]) == {"Safari 18"}
    assert set(loaded.frame.loc[loaded.frame["source"] == "page", "feature"]) == {"/quiz"}
    assert run_gate(loaded.frame, loaded.config).success
    public = load_latest_release("public_report", s3_endpoint)
    assert public is not None and public.manifest["epsilon_spent"] == pytest.approx(7.0)
    with transaction(db_url) as cur:
        cur.execute("SELECT source_table, aggregated_until FROM aggregation_watermarks ORDER BY 1")
        assert cur.fetchall() == [("usage_events", MIDNIGHT), ("visitor_logs", MIDNIGHT)]
        cur.execute("SELECT count(*) FROM ledger WHERE kind = 'sharing_release' AND payload->>'status' = 'published'")
        assert cur.fetchone()[0] == 2
    # A second run the same day has nothing left to publish.
    run_dag("usage_sharing", logical_date=RUN_AT)
    with transaction(db_url) as cur:
        cur.execute("SELECT count(*) FROM sharing_releases")
        assert cur.fetchone()[0] == 2


def test_usage_sharing_refuses_a_release_over_budget_and_writes_nothing(
    db_url: str, s3_endpoint: str, airflow_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = yaml.safe_load(DEFAULT_POLICY_FILE.read_text())
    policy["sharing"]["recipients"] = {
        "tight": {
            "description": "A recipient whose budget is smaller than one release.",
            "dimensions": ["feature"],
            "mechanism": "gaussian",
            "epsilon": 0.5,
            "delta": 1e-6,
            "epsilon_budget": 1.0,
            "first_window_days": 3,
        }
    }
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    monkeypatch.setenv("LETHE_POLICY_FILE", str(path))
    crowd(db_url, 12)
    with pytest.raises(DagRunFailed, match="publish"):
        run_dag("usage_sharing", logical_date=RUN_AT)
    assert releases(db_url) == {"tight": "refused"}
    client = s3_client(PRIMARY_REGION, s3_endpoint)
    assert client.list_objects_v2(Bucket=BUCKETS.sharing).get("KeyCount", 0) == 0
    with transaction(db_url) as cur:
        cur.execute("SELECT message FROM sharing_releases")
        assert "needs epsilon 1.5" in cur.fetchone()[0]
        cur.execute("SELECT count(*) FROM sharing_budget_spend")
        assert cur.fetchone()[0] == 0
