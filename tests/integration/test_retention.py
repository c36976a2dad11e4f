"""Retention against a real PostgreSQL: properties over random data, crash and resume, clamps, errors.

Expected outcomes are computed in Python from the rows the test itself generated.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lethe import testing
from lethe.db import add_months, ensure_month_partitions, transaction
from lethe.policy import load_policy
from lethe.retention.execute import execute_rule
from lethe.retention.plan import MAX_STAGES, Plan, PlanError, build_plan

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)
RESKILL = Path(load_policy().path or "")


def write_policy(tmp_path: Path, keep: dict[str, int]) -> Path:
    """The shipped policy with some rules' `keep` replaced (days)."""
    data = yaml.safe_load(RESKILL.read_text())
    for table in data["tables"].values():
        for rule in table.get("retention", []):
            if rule["name"] in keep:
                rule["keep"] = f"P{keep[rule['name']]}D"
    path = tmp_path / f"policy-{abs(hash(tuple(sorted(keep.items()))))}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_all(url: str, plan: Plan, batch_size: int = 7) -> dict[str, int]:
    done = {}
    for k in range(MAX_STAGES):
        for rule in plan.stage(k):
            done[rule] = execute_rule(url, plan, rule, batch_size=batch_size).rows
    return done


def make_plan(url: str, policy_file: Path, rules: list[str], now: datetime = NOW) -> Plan:
    with transaction(url) as cur:
        return build_plan(cur, now, policy=load_policy(policy_file), rules=rules)


def add_account(cur, user_id: int, closed_at: datetime | None = None) -> None:
    cur.execute(
        "INSERT INTO accounts (user_id, name, username, email, password_hash, created_at, closed_at)"
        " VALUES (%s, 'P', %s, %s, 'x', %s, %s)",
        (user_id, f"u{user_id}", f"u{user_id}@example.com", NOW - timedelta(days=900), closed_at),
    )


# ---- property: random holds, dates and keeps -------------------------------------------------

PERSON = st.fixed_dictionaries(
    {
        "closed_days_ago": st.one_of(st.none(), st.integers(0, 400)),
        "hold": st.sampled_from(["none", "active", "released"]),
        "quotes_ended_days_ago": st.one_of(st.none(), st.integers(-5, 300)),
        "sessions": st.lists(st.integers(-30, 60), max_size=3),  # expires, days ago (negative: future)
        "comments": st.integers(0, 2),
        "feedback": st.lists(st.integers(0, 900), max_size=2),  # created, days ago
        "events": st.lists(st.integers(0, 700), max_size=4),  # occurred, days ago
    }
)
KEEPS = st.fixed_dictionaries(
    {
        "expired_cookies": st.integers(0, 30),
        "comments_of_closed_accounts": st.integers(0, 200),
        "old_feedback": st.integers(0, 800),
        "raw_usage_events": st.integers(0, 500),
    }
)
# consents_after_closure deletes the very consent rows feedback_after_quote_withdrawal reads its clock from.
RULES = [
    "expired_cookies",
    "comments_of_closed_accounts",
    "old_feedback",
    "feedback_after_quote_withdrawal",
    "consents_after_closure",
]


def reset(url: str) -> None:
    with transaction(url) as cur:
        cur.execute(
            "TRUNCATE accounts, sessions, comments, feedback, consents, legal_holds, usage_events, "
            "aggregation_watermarks CASCADE"
        )
        today = date.today()
        ensure_month_partitions(cur, "usage_events", add_months(today, -30), add_months(today, 3))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(people=st.lists(PERSON, min_size=1, max_size=8), keep=KEEPS)
def test_property_holds_and_unexpired_rows_survive_and_expired_unheld_rows_go(
    db_url: str, tmp_path: Path, people: list[dict], keep: dict[str, int]
) -> None:
    reset(db_url)
    expected_gone: dict[str, set[int]] = {
        "sessions": set(),
        "comments": set(),
        "feedback": set(),
        "usage_events": set(),
        "consents": set(),
    }
    everything: dict[str, set[int]] = {t: set() for t in expected_gone}
    ids = iter(range(1, 10_000))
    days = timedelta(days=1)
    with transaction(db_url) as cur:
        for uid, p in enumerate(people, start=1):
            closed = NOW - p["closed_days_ago"] * days if p["closed_days_ago"] is not None else None
            add_account(cur, uid, closed)
            held = p["hold"] == "active"
            if p["hold"] != "none":
                cur.execute(
                    "INSERT INTO legal_holds (hold_id, subject_key, reason, placed_at, released_at)"
                    " VALUES (%s, %s, 'case', %s, %s)",
                    (uid, str(uid), NOW - 50 * days, NOW - days if p["hold"] == "released" else None),
                )
            quotes_end = None
            if p["quotes_ended_days_ago"] is not None:
                quotes_end = NOW - p["quotes_ended_days_ago"] * days
                cur.execute(
                    "INSERT INTO consents VALUES (%s, %s, 'quotes', %s, %s, NULL)",
                    (uid, uid, NOW - 800 * days, quotes_end),
                )
                everything["consents"].add(uid)
                if closed and closed < NOW - 365 * days and not held:
                    expected_gone["consents"].add(uid)
            for ago in p["sessions"]:
                sid = next(ids)
                expires = NOW - ago * days
                cur.execute(
                    "INSERT INTO sessions VALUES (%s, %s, 'c', 'persistent', NULL, %s, %s)",
                    (sid, uid, expires - 5 * days, expires),
                )
                everything["sessions"].add(sid)
                if expires < NOW - keep["expired_cookies"] * days and not held:
                    expected_gone["sessions"].add(sid)
            for _ in range(p["comments"]):
                cid = next(ids)
                cur.execute("INSERT INTO comments VALUES (%s, %s, 'text', %s)", (cid, uid, NOW - 10 * days))
                everything["comments"].add(cid)
                if closed and closed < NOW - keep["comments_of_closed_accounts"] * days and not held:
                    expected_gone["comments"].add(cid)
            for ago in p["feedback"]:
                fid = next(ids)
                created = NOW - ago * days
                cur.execute("INSERT INTO feedback VALUES (%s, %s, 'text', 4, true, %s)", (fid, uid, created))
                everything["feedback"].add(fid)
                old = created < NOW - keep["old_feedback"] * days
                if (old or (quotes_end is not None and quotes_end < NOW)) and not held:
                    expected_gone["feedback"].add(fid)
            for ago in p["events"]:
                eid = next(ids)
                occurred = NOW - ago * days - timedelta(minutes=eid % 97)
                cur.execute("INSERT INTO usage_events VALUES (%s, %s, %s, 'quiz', 10, 0)", (eid, uid, occurred))
                everything["usage_events"].add(eid)
                if occurred < NOW - keep["raw_usage_events"] * days and not held:
                    expected_gone["usage_events"].add(eid)

    policy = write_policy(tmp_path, keep)
    plan = make_plan(db_url, policy, [*RULES, "raw_usage_events"])
    done = run_all(db_url, plan)

    keys = {
        "sessions": "session_id",
        "comments": "comment_id",
        "feedback": "feedback_id",
        "usage_events": "event_id",
        "consents": "consent_id",
    }
    with transaction(db_url) as cur:
        for table, key in keys.items():
            cur.execute(f"SELECT {key} FROM {table}")  # noqa: S608 - the test's own constants
            gone = everything[table] - {k for (k,) in cur.fetchall()}
            assert gone == expected_gone[table], table
    assert done == {rp.rule: rp.rows for rp in plan.rules}
    assert sum(done.values()) == sum(map(len, expected_gone.values()))


# ---- crash and resume --------------------------------------------------------------------------


def fill_sessions(url: str) -> None:
    with transaction(url) as cur:
        for uid in (1, 2, 3):
            add_account(cur, uid)
        cur.execute(
            "INSERT INTO legal_holds (hold_id, subject_key, reason, placed_at) VALUES (1, '2', 'case', %s)",
            (NOW - timedelta(days=3),),
        )
        cur.execute(
            "INSERT INTO sessions SELECT g, 1 + g %% 3, 'c', 'temporary', NULL, %s - g * interval '1 minute',"
            " %s - (g %% 5 - 2) * interval '1 day' FROM generate_series(1, 20000) g",
            (NOW, NOW),
        )


def sessions_state(url: str) -> list[tuple]:
    with transaction(url) as cur:
        cur.execute("SELECT session_id, user_id, expires_at FROM sessions ORDER BY session_id")
        return cur.fetchall()


def test_killed_purge_resumes_to_the_same_end_state(db_url: str, services: tuple[str, str], tmp_path: Path) -> None:
    twin = testing.fresh_database(services[0])
    try:
        for url in (db_url, twin):
            fill_sessions(url)
        plan = make_plan(db_url, RESKILL, ["expired_cookies"])
        # Expired: expires_at one or two days ago (g % 5 in 3, 4); held: user 2 (g % 3 == 1).
        expired = [g for g in range(1, 20001) if g % 5 in (3, 4)]
        assert plan.rules[0].rows == sum(1 for g in expired if g % 3 != 1)
        assert plan.rules[0].held == sum(1 for g in expired if g % 3 == 1)

        # Uninterrupted run on an identical copy.
        twin_plan = make_plan(twin, RESKILL, ["expired_cookies"])
        run_all(twin, twin_plan, batch_size=10)

        plan_file = tmp_path / "plan.json"
        plan_file.write_text(json.dumps(plan.to_dict()))
        code = (
            "import json, sys; from lethe.retention.execute import execute_rule; from lethe.retention.plan import Plan;"
            "execute_rule(sys.argv[1], Plan.from_dict(json.load(open(sys.argv[2]))), 'expired_cookies', batch_size=10)"
        )
        proc = subprocess.Popen([sys.executable, "-c", code, db_url, str(plan_file)], env=os.environ.copy())
        deadline = time.monotonic() + 120
        batches = 0
        while batches < 5 and time.monotonic() < deadline and proc.poll() is None:
            with transaction(db_url) as cur:
                cur.execute(
                    "SELECT coalesce(sum(batches), 0) FROM retention_progress WHERE plan_id = %s", (plan.plan_id,)
                )
                batches = cur.fetchone()[0]
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL, "the purge finished before it could be killed"
        with transaction(db_url) as cur:
            cur.execute("SELECT rows_done, finished FROM retention_progress WHERE plan_id = %s", (plan.plan_id,))
            rows_done, finished = cur.fetchone()
            cur.execute("SELECT count(*) FROM ledger WHERE kind = 'retention'")
            assert cur.fetchone()[0] == 0
        assert 0 < rows_done < plan.rules[0].rows and not finished

        result = execute_rule(db_url, plan, "expired_cookies", batch_size=10)
        assert result.resumed and result.rows == plan.rules[0].rows
        assert sessions_state(db_url) == sessions_state(twin)
        with transaction(db_url) as cur:
            cur.execute("SELECT payload FROM ledger WHERE kind = 'retention'")
            entries = [p for (p,) in cur.fetchall()]
        assert len(entries) == 1 and entries[0]["counts"]["done"] == plan.rules[0].rows
        # A third attempt (e.g. a retried task) changes nothing and writes no second entry.
        assert execute_rule(db_url, plan, "expired_cookies").rows == plan.rules[0].rows
        with transaction(db_url) as cur:
            cur.execute("SELECT count(*) FROM ledger WHERE kind = 'retention'")
            assert cur.fetchone()[0] == 1
    finally:
        testing.drop_database(twin)


# ---- watermark clamp, anonymisation, errors ---------------------------------------------------


def test_unaggregated_usage_is_kept_until_the_watermark(db_url: str) -> None:
    with transaction(db_url) as cur:
        add_account(cur, 1)
        for i, ago in enumerate((200, 150, 120, 100), start=1):
            cur.execute("INSERT INTO usage_events VALUES (%s, 1, %s, 'quiz', 10, 0)", (i, NOW - timedelta(days=ago)))
        cur.execute("INSERT INTO aggregation_watermarks VALUES ('usage_events', %s)", (NOW - timedelta(days=130),))
    plan = make_plan(db_url, RESKILL, ["raw_usage_events"])
    assert plan.rules[0].cutoff == (NOW - timedelta(days=130)).isoformat()
    run_all(db_url, plan)
    with transaction(db_url) as cur:
        cur.execute("SELECT event_id FROM usage_events ORDER BY 1")
        assert [k for (k,) in cur.fetchall()] == [3, 4]  # 120 and 100 days old: past P90D but not aggregated


def test_anonymise_truncates_ips_once_and_keeps_held_rows(db_url: str) -> None:
    with transaction(db_url) as cur:
        add_account(cur, 1)
        add_account(cur, 2)
        cur.execute(
            "INSERT INTO legal_holds (hold_id, subject_key, reason, placed_at) VALUES (1, '2', 'case', %s)", (NOW,)
        )
        rows = [
            (1, 1, "203.0.113.77", 10),
            (2, 1, "2001:db8:abcd:12::1", 10),
            (3, 2, "198.51.100.9", 10),
            (4, 1, "192.0.2.5", 2),
        ]
        for log_id, uid, ip, ago in rows:
            cur.execute(
                "INSERT INTO visitor_logs (log_id, user_id, visitor_id, occurred_at, ip_address, user_agent)"
                " VALUES (%s, %s, 'v', %s, %s, 'Mozilla/5.0')",
                (log_id, uid, NOW - timedelta(days=ago), ip),
            )
    plan = make_plan(db_url, RESKILL, ["visitor_ip_truncation"])
    assert run_all(db_url, plan) == {"visitor_ip_truncation": 2}
    with transaction(db_url) as cur:
        cur.execute("SELECT log_id, host(ip_address), masklen(ip_address), user_agent FROM visitor_logs ORDER BY 1")
        assert cur.fetchall() == [
            (1, "203.0.113.0", 24, None),
            (2, "2001:db8:abcd::", 48, None),
            (3, "198.51.100.9", 32, "Mozilla/5.0"),  # held
            (4, "192.0.2.5", 32, "Mozilla/5.0"),  # not yet 7 days old
        ]
    again = make_plan(db_url, RESKILL, ["visitor_ip_truncation"])
    assert again.rules[0].rows == 0 and again.rules[0].held == 1


def test_plan_errors_name_the_rule_and_what_is_wrong(db_url: str, tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="no retention rule named nope"):
        make_plan(db_url, RESKILL, ["nope"])
    data = yaml.safe_load(RESKILL.read_text())
    data["tables"]["sessions"]["retention"][0] = {
        "name": "expired_cookies",
        "keep": "P1D",
        "after": "expires_at",
        "action": "drop_partitions",
    }
    data["tables"]["sessions"]["partitioned_by"] = "expires_at"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(PlanError, match="table sessions, rule expired_cookies: drop_partitions, but sessions is not"):
        make_plan(db_url, bad, ["expired_cookies"])


def test_anonymise_masks_varchar_and_domain_columns(db_url: str) -> None:
    """Found from outside: `name varchar(100)` or an e-mail in a domain made the plan refuse `redact` ("needs a
    text column; name is character varying(100)"), so retention_nightly purged nothing at all."""
    from lethe.cli import main

    with transaction(db_url) as cur:
        cur.execute("CREATE DOMAIN mail AS varchar(200)")
        cur.execute("CREATE DOMAIN work_mail AS mail")
        cur.execute("ALTER TABLE accounts ALTER COLUMN name TYPE varchar(100)")
        cur.execute("ALTER TABLE accounts ALTER COLUMN email TYPE work_mail")
        cur.execute(
            "INSERT INTO accounts (user_id, name, username, email, password_hash, created_at, closed_at)"
            " VALUES (7, 'Closed One', 'closed7', 'closed7@example.com', 'h', now() - interval '3 years',"
            " now() - interval '60 days')"
        )
        # An invoice still points at the account: the row stays, its details go.
        cur.execute("INSERT INTO invoices VALUES (7, 7, NULL, 'Closed One', 'Street 1', 'TAX', 1000, 'INR', now())")
    assert main(["purge"]) == 0
    with transaction(db_url) as cur:
        cur.execute("SELECT name, username, email FROM accounts WHERE user_id = 7")
        name, username, email = cur.fetchone()
    assert name != "Closed One" and "closed7" not in username and "closed7" not in email, (name, username, email)


def test_a_self_referencing_account_table_is_purged_and_a_referenced_manager_kept(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found from outside: `accounts.manager_id REFERENCES accounts` made every purge fail with a traceback
    ("foreign keys around 'accounts' nest deeper than 8 levels (a cycle?)"), so closed accounts were never deleted."""
    from lethe.cli import main

    data = yaml.safe_load(RESKILL.read_text())
    data["tables"]["accounts"]["columns"]["manager_id"] = "identifier"
    policy = tmp_path / "managers.yaml"
    policy.write_text(yaml.safe_dump(data))

    with transaction(db_url) as cur:
        cur.execute("ALTER TABLE accounts ADD COLUMN manager_id bigint REFERENCES accounts (user_id)")
        for uid, closed in ((8, True), (9, True), (10, False)):
            cur.execute(
                "INSERT INTO accounts (user_id, name, username, email, password_hash, created_at, closed_at)"
                " VALUES (%s, %s, %s, %s, 'h', now() - interval '3 years', %s)",
                (uid, f"Person {uid}", f"person{uid}", f"person{uid}@example.com", "-infinity" if closed else None),
            )
        cur.execute("UPDATE accounts SET manager_id = 9 WHERE user_id = 10")  # 10, still here, reports to 9
    with monkeypatch.context() as m:
        m.setenv("LETHE_POLICY_FILE", str(policy))
        assert main(["purge"]) == 0
    with transaction(db_url) as cur:
        cur.execute("SELECT user_id FROM accounts WHERE user_id IN (8, 9, 10) ORDER BY 1")
        assert [r[0] for r in cur.fetchall()] == [9, 10]  # 8 closed and unreferenced: gone; 9 still a manager
