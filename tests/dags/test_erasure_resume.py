"""Erasure requests that fail or are cut short resume to a certificate (issue 14), through real subject_erasure runs.

- One request of a batch of ten fails (a PostgreSQL trigger made here refuses to delete one of that
  person's rows): the other nine are erased and certified, the tenth is failed with its rows untouched,
  and once the trigger is gone the next batch certifies it too.
- A run killed (SIGKILL of the process running dag.test()) right after `erase` committed leaves its
  request erased, not certified. While Airflow still calls that run running, the next batch leaves the
  request and names it (request, state, run, since, why) in its `register` result; once the run is
  marked failed, the next batch resumes it to a certificate in the evidence bucket.
- A run killed in the middle of `erase` (its transaction waiting inside a DELETE, never committed) leaves its
  request `erasing`, and Airflow's metadata still calls the dead run running (dag.test: no scheduler marks
  it failed). The next batch takes the request over anyway (no session holds the dead run's work lock) and
  certifies it; a request a live run holds is named with its run and since when, never skipped silently.
- A run triggered with only a request id leaves no email or phone in Airflow's metadata database
  (every column of every table, read with this test's own SQL) nor in its logs.

People are inserted with plain SQL here; outcomes are read back with this test's own SQL and boto3.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import erasure_people as people
import psycopg2
import pytest

pytestmark = pytest.mark.dags

# Rows each person of these tests has, per table (inserted by _insert_person).
ROWS = {"accounts": 1, "ssh_keys": 1, "sessions": 2, "comments": 2, "usage_events": 1}
NONE = dict.fromkeys(ROWS, 0)
PAUSE_LOCK = 7_140_014  # the advisory lock a trigger of test 2 waits on before a request may become verified
ERASE_PAUSE_LOCK = 7_140_015  # the one a trigger of test 4 waits on inside erase, deleting the person's comment


def _query(url: str, q: str, args: Any = None) -> list[tuple[Any, ...]]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(q, args)
        rows = cur.fetchall() if cur.description else []
    conn.close()
    return rows


def _person(uid: int) -> dict[str, Any]:
    return {
        "user_id": uid,
        "email": f"resume.person{uid}@example.net",
        "phone": f"+91 98{uid:08d}",
        "username": f"resume_person_{uid}",
    }


def _insert_person(url: str, p: dict[str, Any]) -> None:
    uid = p["user_id"]
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO accounts (user_id, name, username, email, phone, password_hash, created_at)"
            " VALUES (%s, %s, %s, %s, %s, 'x', now() - interval '200 days')",
            (uid, f"Person {uid}", p["username"], p["email"], p["phone"]),
        )
        cur.execute("INSERT INTO ssh_keys VALUES (%s, %s, 'ssh-ed25519 AAAA', now())", (uid * 10, uid))
        for i in (1, 2):
            # An address of this person only: an address the erased share with them would be masked as their residue.
            cur.execute(
                "INSERT INTO sessions VALUES (%s, %s, %s, 'persistent', %s, now(), now() + interval '30 days')",
                (uid * 10 + i, uid, f"cookie-{uid}-{i}", f"10.4.{uid}.{i}"),
            )
            cur.execute("INSERT INTO comments VALUES (%s, %s, %s, now())", (uid * 10 + i, uid, f"lesson note {i}"))
        cur.execute("INSERT INTO usage_events VALUES (%s, %s, now() - interval '2 days', 'quiz', 900, 0)", (uid, uid))
    conn.close()


def _rows(url: str, uid: int) -> dict[str, int]:
    return {
        t: _query(url, f"SELECT count(*) FROM {t} WHERE user_id = %s", (uid,))[0][0]  # noqa: S608 - fixed names
        for t in ROWS
    }


def _rows_of(url: str, uid: int) -> dict[str, list[tuple[str, ...]]]:
    """The person's rows themselves, to show they are untouched."""
    return {
        t: [tuple(map(str, r)) for r in _query(url, f"SELECT * FROM {t} WHERE user_id = %s ORDER BY 1", (uid,))]  # noqa: S608
        for t in ROWS
    }


def _queue(url: str, person: dict[str, Any], reference: str) -> str:
    from lethe.erasure import request

    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        rid, created = request.register(cur, "email", person["email"], reference=reference, reason="account closed")
    conn.close()
    assert created
    return rid


def _requests(url: str) -> dict[str, tuple[Any, ...]]:
    """request_id -> (status, identifier, processor_identifiers, reason, error, claimed_by)."""
    rows = _query(
        url,
        "SELECT request_id::text, status, identifier, processor_identifiers, reason, detail->>'error', claimed_by"
        " FROM erasure_requests",
    )
    return {r[0]: r[1:] for r in rows}


def _s3(s3_endpoint: str) -> Any:
    import boto3
    from lethe.config import PRIMARY_REGION, local_s3_credentials

    key_id, secret = local_s3_credentials()
    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name=PRIMARY_REGION,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
    )


def _certificates(s3_endpoint: str) -> set[str]:
    """Request ids with a JSON certificate in the evidence bucket."""
    from lethe.config import BUCKETS

    s3 = _s3(s3_endpoint)
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKETS.evidence, Prefix="certificates/")
        for o in page.get("Contents", [])
    ]
    return {k.removeprefix("certificates/").removesuffix(".json") for k in keys if k.endswith(".json")}


def _run(conf: dict[str, Any]) -> Any:
    from lethe.dagrun import run_dag

    return run_dag("subject_erasure", conf)


# --- 1. one failing request in a batch of ten ----------------------------------------------------


def test_one_failing_request_in_a_batch_of_ten_does_not_hold_back_the_other_nine(
    db_url: str, s3_endpoint: str, airflow_home: Path
) -> None:
    from lethe.dagrun import DagRunFailed

    batch = [_person(uid) for uid in range(11, 21)]
    for p in batch:
        _insert_person(db_url, p)
    rids = {p["user_id"]: _queue(db_url, p, f"T-2026-{p['user_id']:04d}") for p in batch}
    bad = batch[6]  # user 17: one of their comments cannot be deleted
    bad_rid = rids[bad["user_id"]]
    bad_rows = _rows_of(db_url, bad["user_id"])
    _query(
        db_url,
        "CREATE FUNCTION refuse_delete() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'storage refused'; END $$"
        " LANGUAGE plpgsql;"
        " CREATE TRIGGER refuse_delete BEFORE DELETE ON comments FOR EACH ROW"
        f" WHEN (OLD.comment_id = {bad['user_id'] * 10 + 1}) EXECUTE FUNCTION refuse_delete()",
    )

    with pytest.raises(DagRunFailed, match=r"tasks not successful: deadlines"):  # the run shows the failure
        _run({"dry_run": False})  # no identifier: the queue, as the nightly batch takes it

    requests = _requests(db_url)
    for p in batch:
        if p is bad:
            continue
        assert _rows(db_url, p["user_id"]) == NONE, p["user_id"]
        status, identifier, processor_ids, reason, _, claimed_by = requests[rids[p["user_id"]]]
        assert (status, identifier, processor_ids, reason, claimed_by) == ("certified", None, None, None, None)
    status, identifier, _, _, error, claimed_by = requests[bad_rid]
    # Failed for its own reason (the error class only), still open with its identifier, released for the next run.
    assert (status, identifier, error, claimed_by) == ("failed", bad["email"], "erase: RaiseException", None)
    assert _rows_of(db_url, bad["user_id"]) == bad_rows
    assert _certificates(s3_endpoint) == set(rids.values()) - {bad_rid}

    _query(db_url, "DROP TRIGGER refuse_delete ON comments; DROP FUNCTION refuse_delete()")
    _run({"dry_run": False})  # the next batch resumes the failed request

    assert _rows(db_url, bad["user_id"]) == NONE
    requests = _requests(db_url)
    assert {rid: r[:4] for rid, r in requests.items()} == dict.fromkeys(rids.values(), ("certified", None, None, None))
    assert _certificates(s3_endpoint) == set(rids.values())


# --- 2. a crash right after erase ------------------------------------------------------------------

RUN_BATCH = "from lethe.dagrun import run_dag; run_dag('subject_erasure', {'dry_run': False})"


def _waiting_on(url: str, lock: int) -> list[int]:
    return [
        pid
        for (pid,) in _query(
            url,
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = %s",
            (lock,),
        )
    ]


def _kill_run_paused_on(url: str, lock: int, log: Path, script: str = RUN_BATCH) -> str:
    """Run `script` in a process, SIGKILL it while one of its statements waits on `lock`; return the run's output.

    Once the process is dead the lock is let go: the dead client's backend finishes the statement it was in,
    finds nobody to answer to and ends, rolling its transaction back (what PostgreSQL does with any dead
    client's session). Returns once those backends are gone.
    """
    holder = psycopg2.connect(url)
    holder.autocommit = True
    out = log.open("w+")
    proc = None
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (lock,))
        proc = subprocess.Popen(
            [sys.executable, "-c", script],
            env=os.environ.copy(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 600  # a bound on waiting only (a loaded machine), nothing measured
        while not (waiting := _waiting_on(url, lock)):
            if proc.poll() is not None:
                out.seek(0)
                pytest.fail(f"the run ended (exit {proc.returncode}) before the pause:\n{out.read()[-4000:]}")
            assert time.monotonic() < deadline, "the run never reached the pause"
            time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGKILL)  # the worker dies: no finally, no rollback sent
        proc.wait()
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        holder.close()
        out.seek(0)
        printed = out.read()
        out.close()
    deadline = time.monotonic() + 120
    while _query(url, "SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s)", (waiting,)):
        assert time.monotonic() < deadline, f"the dead run's sessions {waiting} never ended"
        time.sleep(0.2)
    return printed


def _airflow_run_state(run_id: str) -> str:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        run = session.query(DagRun).filter_by(dag_id="subject_erasure", run_id=run_id).one()
        return str(getattr(run.state, "value", run.state))


def _xcom(run_id: str, task_id: str) -> Any:
    """What a task of a run returned, read from Airflow's metadata database with this test's own SQL."""
    conn = sqlite3.connect(f"file:{_metadata_db()}?mode=ro", uri=True)
    try:
        ((value,),) = conn.execute(
            "SELECT value FROM xcom WHERE dag_id = 'subject_erasure' AND run_id = ? AND task_id = ? AND key = ?",
            (run_id, task_id, "return_value"),
        ).fetchall()
    finally:
        conn.close()
    return json.loads(value)


def _mark_run_failed(run_id: str) -> None:
    """What the scheduler does to a run whose worker died (or an operator's "mark failed")."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState

    with create_session() as session:
        run = session.query(DagRun).filter_by(dag_id="subject_erasure", run_id=run_id).one()
        run.set_state(DagRunState.FAILED)


def test_a_run_killed_right_after_erase_is_resumed_to_a_certificate(
    db_url: str, s3_endpoint: str, airflow_home: Path, tmp_path: Path
) -> None:
    people.insert_people(db_url)
    rid = _queue(db_url, people.ASHA, "T-2026-0002")
    # Once erase has committed, `verify` waits on a lock this test holds when it moves the request on:
    # the process is killed there, with erase's work committed and nothing after it.
    _query(
        db_url,
        "CREATE FUNCTION pause_before_verified() RETURNS trigger AS $$"
        f" BEGIN PERFORM pg_advisory_xact_lock({PAUSE_LOCK}); RETURN NEW; END $$ LANGUAGE plpgsql;"
        " CREATE TRIGGER pause_before_verified BEFORE UPDATE ON erasure_requests FOR EACH ROW"
        " WHEN (OLD.status = 'erased' AND NEW.status = 'verified') EXECUTE FUNCTION pause_before_verified()",
    )
    _kill_run_paused_on(db_url, PAUSE_LOCK, tmp_path / "killed_run.log")
    _query(db_url, "DROP TRIGGER pause_before_verified ON erasure_requests; DROP FUNCTION pause_before_verified()")

    # Left mid-way: erased (her rows are gone, erase committed), not verified or certified, identifier kept.
    assert people.count_rows(db_url, 1) == dict.fromkeys(people.ASHA_ROWS, 0)
    ((status, identifier, dead_run),) = _query(db_url, "SELECT status, identifier, claimed_by FROM erasure_requests")
    assert (status, identifier) == ("erased", people.ASHA["email"])
    assert dead_run is not None
    assert rid not in _certificates(s3_endpoint)

    # Airflow still calls the dead run running (under dag.test nothing ever marks it failed), and an `erased`
    # request is one a live run holds between its tasks: the next batch leaves it, and says so.
    assert _airflow_run_state(dead_run) == "running"
    left = _run({"dry_run": False})
    registered = _xcom(left.run_id, "register")
    assert (registered["claimed"], registered["held_by_other_runs"]) == (0, 1), registered
    ((held),) = registered["not_taken"]
    assert (held["request_id"], held["status"], held["claimed_by"]) == (rid, "erased", dead_run)
    assert held["claimed_since"] and "Airflow reports that run queued or running" in held["why"]
    assert _query(db_url, "SELECT status, claimed_by FROM erasure_requests") == [("erased", dead_run)]

    _mark_run_failed(dead_run)  # what the scheduler does once it notices the worker died
    _run({"dry_run": False})  # the next batch takes over the dead run's request

    assert _query(db_url, "SELECT status, identifier, claimed_by FROM erasure_requests") == [("certified", None, None)]
    assert _certificates(s3_endpoint) == {rid}
    from lethe.config import BUCKETS

    body = _s3(s3_endpoint).get_object(Bucket=BUCKETS.evidence, Key=f"certificates/{rid}.json")["Body"].read()
    cert = json.loads(body)
    assert cert["outcome"] == "erased" and cert["reference"] == "T-2026-0002"
    assert {t: v["rows"] for t, v in cert["tables"].items()} == people.ASHA_ROWS  # what the killed run erased
    assert people.ASHA["email"] not in body.decode()
    assert people.count_rows(db_url, 1) == dict.fromkeys(people.ASHA_ROWS, 0)
    assert people.count_rows(db_url, 2)["accounts"] == 1  # nobody else was erased on the way
    assert _query(db_url, "SELECT count(*) FROM erasure_tombstones") == [(1,)]


# --- 4. a crash in the middle of erase -----------------------------------------------------------


def test_a_run_killed_in_the_middle_of_erase_is_taken_over_by_the_next_batch(
    db_url: str, s3_endpoint: str, airflow_home: Path, tmp_path: Path
) -> None:
    people.insert_people(db_url)
    rid = _queue(db_url, people.ASHA, "T-2026-0004")
    # Inside erase's transaction, deleting Asha's first comment waits on a lock this test holds: the process
    # is killed there, after `erasing` was committed and before the erasure's own commit.
    _query(
        db_url,
        "CREATE FUNCTION pause_in_erase() RETURNS trigger AS $$"
        f" BEGIN PERFORM pg_advisory_xact_lock({ERASE_PAUSE_LOCK}); RETURN OLD; END $$ LANGUAGE plpgsql;"
        " CREATE TRIGGER pause_in_erase BEFORE DELETE ON comments FOR EACH ROW"
        " WHEN (OLD.comment_id = 101) EXECUTE FUNCTION pause_in_erase()",
    )
    _kill_run_paused_on(db_url, ERASE_PAUSE_LOCK, tmp_path / "killed_run.log")
    _query(db_url, "DROP TRIGGER pause_in_erase ON comments; DROP FUNCTION pause_in_erase()")

    # Left mid-way: erasing, its transaction rolled back (every row of hers is still there), identifier kept.
    assert people.count_rows(db_url, 1) == people.ASHA_ROWS
    ((status, identifier, dead_run),) = _query(db_url, "SELECT status, identifier, claimed_by FROM erasure_requests")
    assert (status, identifier) == ("erasing", people.ASHA["email"])
    assert dead_run is not None
    # Nothing told Airflow the run died (no scheduler under dag.test): by Airflow's word it is still running.
    assert _airflow_run_state(dead_run) == "running"
    assert _certificates(s3_endpoint) == set()
    assert _query(db_url, "SELECT count(*) FROM erasure_tombstones") == [(0,)]

    run = _run({"dry_run": False})  # the next batch, as the nightly schedule or a user triggers it

    registered = _xcom(run.run_id, "register")
    assert registered["claimed"] == 1, registered
    assert _query(db_url, "SELECT status, identifier, claimed_by FROM erasure_requests") == [("certified", None, None)]
    assert people.count_rows(db_url, 1) == dict.fromkeys(people.ASHA_ROWS, 0)
    assert people.count_rows(db_url, 2)["accounts"] == 1  # nobody else was erased on the way
    assert _query(db_url, "SELECT count(*) FROM erasure_tombstones") == [(1,)]
    assert _certificates(s3_endpoint) == {rid}
    from lethe.config import BUCKETS

    body = _s3(s3_endpoint).get_object(Bucket=BUCKETS.evidence, Key=f"certificates/{rid}.json")["Body"].read()
    cert = json.loads(body)
    assert cert["outcome"] == "erased" and cert["reference"] == "T-2026-0004"
    assert {t: v["rows"] for t, v in cert["tables"].items()} == people.ASHA_ROWS
    assert people.ASHA["email"] not in body.decode()


# --- 3. a request-id-only trigger keeps identifiers out of Airflow ---------------------------------


def _metadata_db() -> Path:
    conn = os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert conn.startswith("sqlite:///"), conn
    return Path(conn.removeprefix("sqlite:///"))


def _metadata_columns_containing(db: Path, needles: list[str]) -> dict[str, int]:
    """'table.column' -> rows whose value (as text, any type) contains one of `needles` (case-insensitive)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        assert {"dag_run", "log", "xcom", "task_instance", "rendered_task_instance_fields"} <= set(tables)
        found: dict[str, int] = {}
        for table in tables:
            columns = [c[1] for c in conn.execute(f'PRAGMA table_info("{table}")')]
            for column in columns:
                (n,) = conn.execute(
                    f'SELECT count(*) FROM "{table}" WHERE '  # noqa: S608 - names from sqlite_master
                    + " OR ".join(f'instr(lower(CAST("{column}" AS TEXT)), ?) > 0' for _ in needles),
                    [n.lower() for n in needles],
                ).fetchone()
                if n:
                    found[f"{table}.{column}"] = n
        return found
    finally:
        conn.close()


class _Lines(logging.Handler):
    """Lethe's log lines from the tasks (what a task log file holds), whatever level Airflow prints at here."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(record.getMessage())


def test_a_run_given_only_a_request_id_leaves_no_identifier_in_airflow(
    db_url: str,
    s3_endpoint: str,
    airflow_home: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)  # the tasks' own log lines, at Airflow's default level
    person = _person(31)
    _insert_person(db_url, person)
    rid = _queue(db_url, person, "T-2026-0031")

    lines = _Lines()
    lethe_log = logging.getLogger("lethe")
    level = lethe_log.level
    lethe_log.addHandler(lines)
    lethe_log.setLevel(logging.INFO)
    try:
        _run({"request_id": rid})  # as `lethe erasure submit --execute` and the compliance page trigger it
    finally:
        lethe_log.removeHandler(lines)
        lethe_log.setLevel(level)

    assert _rows(db_url, 31) == NONE  # the run did erase (the request's own dry_run is off)
    assert _query(db_url, "SELECT status, identifier FROM erasure_requests") == [("certified", None)]
    assert rid in _certificates(s3_endpoint)

    needles = [person["email"], person["phone"], person["phone"].replace(" ", ""), person["username"]]
    db = _metadata_db()
    # The scan sees what the run left: its request id is in its conf.
    assert "dag_run.conf" in _metadata_columns_containing(db, [rid])
    assert _metadata_columns_containing(db, needles) == {}

    # Nor in any file of Airflow's home (its task logs when it writes them, the database file's raw pages),
    # nor in what the tasks logged.
    leaked = []
    for path in airflow_home.rglob("*"):
        if path.is_file():
            text = path.read_bytes().decode("latin-1").lower()
            leaked += [f"{path}: {n}" for n in needles if n.lower() in text]
    assert leaked == []
    out, err = capfd.readouterr()
    logs = (out + err + caplog.text + "\n".join(lines.seen)).lower()
    assert "erasure executed" in logs and "erasure run closed" in logs  # the capture did see the tasks' logs
    assert [n for n in needles if n.lower() in logs] == []
