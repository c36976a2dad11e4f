"""An erasure whose own statements make the database copy the person somewhere else (an audit trigger).

Found from outside: with `AFTER UPDATE OR DELETE ON users ... INSERT INTO users_audit SELECT OLD.*` (or
`to_jsonb(OLD)`), subject_erasure deleted the person and certified it while the trigger had just copied
her e-mail, name and phone into the audit table. The checks after the erase read only where the person
was before it. Now the rows the erasure's transaction wrote outside its own targets are read too: erased
there when the policy gives the table an erasure rule, else the erasure fails before its commit naming the
table and column. Everything is read back with this test's own SQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import own_schema
import psycopg2
import pytest

pytestmark = pytest.mark.dags

SCHEMA = """
CREATE TABLE users (
  user_id bigint PRIMARY KEY, email text NOT NULL UNIQUE, full_name text, phone text,
  created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE notes (
  note_id bigint PRIMARY KEY, user_id bigint NOT NULL REFERENCES users ON DELETE CASCADE, body text NOT NULL);
INSERT INTO users (user_id, email, full_name, phone) VALUES
  (1, 'zoe.quill@audit.test', 'Zoe Quill', '+44 7700 900123'),
  (2, 'yan.berg@audit.test', 'Yan Berg', '+44 7700 900456');
INSERT INTO notes VALUES (10, 1, 'call me back on +44 7700 900123'), (11, 2, 'Yan''s note');
"""

# The person's audit rows are hers while her account exists; a delete nulls their link. The policy covers the table.
AUDIT = """
-- Old versions of accounts, linked to them until the account goes (then the link is nulled).
CREATE TABLE users_audit (
  audit_id bigserial PRIMARY KEY, op text NOT NULL, user_id bigint REFERENCES users ON DELETE SET NULL,
  email text, full_name text, phone text);
CREATE FUNCTION audit_users() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO users_audit (op, user_id, email, full_name, phone)
  VALUES (TG_OP, OLD.user_id, OLD.email, OLD.full_name, OLD.phone);
  RETURN OLD;
END $$;
CREATE TRIGGER users_audit_trg BEFORE UPDATE OR DELETE ON users FOR EACH ROW EXECUTE FUNCTION audit_users();
"""

# What the outside tester had: a whole copy of the old row, and the old row as JSON, in tables no rule covers
# (one the policy declares a system table, one in a schema of its own).
UNCOVERED = """
CREATE TABLE users_history (op text NOT NULL, at timestamptz NOT NULL DEFAULT now(), LIKE users);
CREATE FUNCTION history_users() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO users_history SELECT TG_OP, now(), OLD.*;
  RETURN NULL;
END $$;
CREATE TRIGGER users_history_trg AFTER UPDATE OR DELETE ON users FOR EACH ROW EXECUTE FUNCTION history_users();
CREATE SCHEMA audit;
CREATE TABLE audit.change_log (change_id bigserial PRIMARY KEY, tbl text NOT NULL, old jsonb);
CREATE FUNCTION audit.log_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO audit.change_log (tbl, old) VALUES (TG_TABLE_NAME, to_jsonb(OLD));
  RETURN NULL;
END $$;
CREATE TRIGGER notes_log_trg AFTER UPDATE OR DELETE ON notes FOR EACH ROW EXECUTE FUNCTION audit.log_change();
"""

POLICY = """
version: "2026.12.0"
source: "Audit test notice"

subject:
  table: users
  key: user_id
  identifiers: {user_id: user_id, email: email, phone: phone}
  phone_region: GB

purposes:
  service: Providing the service

consent_purposes: []

tables:
  users:
    description: Accounts
    purpose: service
    backup: false
    legal_basis: contract
    subject: user_id
    columns: {user_id: identifier, email: email, full_name: name, phone: phone, created_at: timestamp}
    retain_indefinitely: "Kept while the account exists"
    erasure: {action: delete}
  notes:
    description: A person's own notes
    purpose: service
    backup: false
    legal_basis: contract
    subject: user_id
    columns: {note_id: identifier, user_id: identifier, body: comment}
    retain_indefinitely: "Kept while the account exists"
    erasure: {action: delete}
"""

AUDIT_POLICY = """
  users_audit:
    description: Old versions of accounts, written by a trigger
    purpose: service
    backup: false
    legal_basis: legitimate_interest
    subject: user_id
    columns: {audit_id: identifier, op: attribute, user_id: identifier, email: email, full_name: name, phone: phone}
    retain_indefinitely: "Kept while the account exists"
    erasure: {action: delete}
"""

ZOE = ("zoe.quill", "quill", "7700 900123", "7700900123")


def q(url: str, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SET statement_timeout = '30s'")
        cur.execute(statement, params)
        return cur.fetchall() if cur.description else []


def zoe_anywhere(url: str) -> dict[str, int]:
    """Rows of every table of the company's schemas whose text (the whole row, JSON included) holds any of Zoe."""
    found = {}
    tables = q(url, "SELECT schemaname, tablename FROM pg_tables WHERE schemaname IN ('public', 'audit')")
    for schema, table in tables:
        for needle in ZOE:
            rows = q(url, f"SELECT count(*) FROM {schema}.{table} t WHERE lower(t::text) LIKE %s", (f"%{needle}%",))  # noqa: S608
            if rows[0][0]:
                found[f"{schema}.{table}:{needle}"] = rows[0][0]
    return found


def policy_warnings(url: str) -> list[str]:
    from lethe.policy import load_policy
    from lethe.policy.check import schema_problems, warnings

    policy = load_policy()
    assert schema_problems(policy, url) == []
    return warnings(policy, url)


@pytest.fixture
def audited(services: tuple[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    from lethe import testing

    url = own_schema.database(services[0], monkeypatch, tmp_path, "lethe_audit", SCHEMA + AUDIT, POLICY + AUDIT_POLICY)
    yield url
    testing.drop_database(url)


@pytest.fixture
def unaudited(services: tuple[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    from lethe import testing

    policy = POLICY.replace("consent_purposes: []", "consent_purposes: []\nsystem_tables: [users_history]")
    url = own_schema.database(services[0], monkeypatch, tmp_path, "lethe_audit", SCHEMA + UNCOVERED, policy)
    yield url
    testing.drop_database(url)


def test_what_a_trigger_copies_during_the_erasure_is_erased_when_the_policy_covers_its_table(
    audited: str, s3_endpoint: str, airflow_home: Path
) -> None:
    from lethe.dagrun import run_dag
    from lethe.db import migrate

    migrate(audited)
    assert policy_warnings(audited) == []  # the trigger writes a table the policy erases in: nothing to warn of
    assert set(zoe_anywhere(audited)) == {
        "public.users:zoe.quill",
        "public.users:quill",
        "public.users:7700 900123",
        "public.notes:7700 900123",
    }
    run_dag("subject_erasure", {"identifier_kind": "email", "identifier": "zoe.quill@audit.test", "dry_run": False})

    assert q(audited, "SELECT status FROM lethe.erasure_requests") == [("certified",)]
    assert zoe_anywhere(audited) == {}
    # Yan is untouched; the trigger's copy of Zoe (its link nulled by the delete) is gone.
    assert q(audited, "SELECT user_id, email FROM users") == [(2, "yan.berg@audit.test")]
    assert q(audited, "SELECT note_id FROM notes") == [(11,)]
    assert q(audited, "SELECT count(*) FROM users_audit") == [(0,)]
    (residue,) = q(audited, "SELECT detail->'residue' FROM lethe.erasure_requests")[0]
    assert residue.get("deleted:users_audit.email") == 1, residue


def test_an_erasure_whose_trigger_copies_the_person_outside_the_policy_fails_before_its_commit(
    unaudited: str, s3_endpoint: str, airflow_home: Path
) -> None:
    from lethe.dagrun import DagRunFailed, run_dag
    from lethe.db import migrate

    migrate(unaudited)
    # `lethe policy check` warns of both triggers beforehand (warnings: the check still passes).
    schema, users, notes = policy_warnings(unaudited)
    assert schema.startswith("schema audit holds 1 table(s) the policy does not name (audit.change_log)"), schema
    assert "users_history_trg" in users and "writes users_history," in users, users
    assert "notes_log_trg" in notes and "writes audit.change_log," in notes, notes
    tables = ("users", "notes", "users_history", "audit.change_log")
    before = {t: q(unaudited, f"SELECT * FROM {t} ORDER BY 1") for t in tables}  # noqa: S608
    with pytest.raises(DagRunFailed):
        run_dag("subject_erasure", {"identifier_kind": "email", "identifier": "zoe.quill@audit.test", "dry_run": False})

    # Nothing was committed: Zoe's rows are as they were, and no trigger's copy of her survives.
    assert {t: q(unaudited, f"SELECT * FROM {t} ORDER BY 1") for t in tables} == before  # noqa: S608
    assert before["users_history"] == before["audit.change_log"] == []
    status, error = q(unaudited, "SELECT status, detail->>'error' FROM lethe.erasure_requests")[0]
    assert status == "failed"
    assert q(unaudited, "SELECT count(*) FROM lethe.erasure_tombstones") == [(0,)]
    # The error names the tables, columns and triggers, and what to do; never a value.
    for named in ("users_history.email", "users_history.phone", "audit.change_log.old", "users_history_trg", "policy"):
        assert named in error, error
    assert not any(n in error.lower() for n in ZOE), error
