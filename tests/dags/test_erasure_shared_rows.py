"""Erasures on a schema Lethe did not invent, where other people's rows are tied to the person's.

Found from outside (a multi-tenant schema), each certified or failing while it happened:
- the sweep deleted a team whose owner_email was the erased person's, because the row had no subject link and its
  table is erased by deleting; ON DELETE CASCADE then took other people's memberships with it. A row other rows
  point to is masked instead;
- a table linking to itself (users.manager_id) failed every erasure as "a cycle among" the tables. Other people's
  links to the erased row are nulled;
- a support ticket Yan opened was deleted because Zoe was its assignee: every foreign key to her made a row hers.
  A row is its subject link's; her name in another link (assignee_id) is cut;
- phones were read as Indian whatever the platform: a UK request for 07700 900789 was certified "no data found".
  The policy says how its national numbers read (`subject.phone_region`).
Everything is read back with this test's own SQL.
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
  manager_id bigint REFERENCES users, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE teams (
  team_id bigint PRIMARY KEY, name text NOT NULL, owner_email text, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE memberships (
  team_id bigint NOT NULL REFERENCES teams ON DELETE CASCADE,
  user_id bigint NOT NULL REFERENCES users ON DELETE CASCADE,
  PRIMARY KEY (team_id, user_id));
CREATE TABLE page_views (
  view_id bigint PRIMARY KEY, user_id bigint REFERENCES users ON DELETE CASCADE, url text NOT NULL,
  viewed_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE tickets (
  ticket_id bigint PRIMARY KEY, user_id bigint NOT NULL REFERENCES users, assignee_id bigint REFERENCES users,
  title text NOT NULL);
INSERT INTO users VALUES (1, 'zoe.quill@teams.test', 'Zoe Quill', '+44 7700 900123', NULL),
  (2, 'yan.berg@teams.test', 'Yan Berg', '+44 7700 900456', 1),
  (3, 'ann.lee@teams.test', 'Ann Lee', '+44 7700 900789', 2);
INSERT INTO teams VALUES (10, 'Northwind', 'zoe.quill@teams.test'), (11, 'Southwind', 'yan.berg@teams.test');
INSERT INTO memberships VALUES (10, 1), (10, 2), (11, 2);
INSERT INTO tickets VALUES (500, 2, 1, 'Invoice address'), (501, 1, 2, 'Password reset');
INSERT INTO page_views (view_id, url) VALUES (100, '/reset?email=zoe.quill%40teams.test'), (101, '/pricing');
"""

POLICY = """
version: "2026.12.0"
source: "Teams test notice"

subject:
  table: users
  key: user_id
  identifiers: {user_id: user_id, email: email, phone: phone}
  phone_region: GB

purposes:
  service: Providing the teams workspace

consent_purposes: []

tables:
  users:
    description: Accounts
    purpose: service
    backup: false
    legal_basis: contract
    subject: user_id
    columns:
      {user_id: identifier, email: email, full_name: name, phone: phone, manager_id: identifier, created_at: timestamp}
    retain_indefinitely: "Kept while the account exists"
    erasure: {action: delete}
  teams:
    description: Teams, each with the e-mail of whoever owns it (no link to a person)
    purpose: service
    backup: false
    legal_basis: contract
    subject: null
    columns: {team_id: identifier, name: attribute, owner_email: email, created_at: timestamp}
    retain_indefinitely: "The team"
    erasure: {action: delete}
  memberships:
    description: Who is in which team
    purpose: service
    backup: false
    legal_basis: contract
    subject: user_id
    columns: {team_id: identifier, user_id: identifier}
    retain_indefinitely: "Kept while the account exists"
    erasure: {action: delete}
  tickets:
    description: Support tickets; the person who opened one, and the colleague it is assigned to
    purpose: service
    backup: false
    legal_basis: contract
    subject: user_id
    columns: {ticket_id: identifier, user_id: identifier, assignee_id: identifier, title: attribute}
    retain_indefinitely: "Kept while the account exists"
    erasure: {action: delete}
  page_views:
    description: Page views, anonymous unless signed in
    purpose: service
    backup: false
    legal_basis: legitimate_interest
    subject: user_id
    columns: {view_id: identifier, user_id: identifier, url: usage, viewed_at: timestamp}
    free_text: [url]
    retention:
      - {name: old_views, keep: P30D, after: viewed_at, action: delete}
    erasure: {action: delete}
"""


def q(url: str, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(statement, params)
        return cur.fetchall() if cur.description else []


@pytest.fixture
def teams(services: tuple[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    from lethe import testing

    url = own_schema.database(services[0], monkeypatch, tmp_path, "lethe_teams", SCHEMA, POLICY)
    yield url
    testing.drop_database(url)


def test_rows_tied_to_the_person_but_not_theirs_are_kept_and_cut_loose(
    teams: str, s3_endpoint: str, airflow_home: Path
) -> None:
    from lethe.dagrun import run_dag
    from lethe.db import migrate

    migrate(teams)
    run_dag("subject_erasure", {"identifier_kind": "email", "identifier": "Zoe.Quill@teams.test", "dry_run": False})

    # Her report Yan keeps his row, without a manager; Yan's own report keeps hers.
    assert q(teams, "SELECT user_id, manager_id FROM users ORDER BY 1") == [(2, None), (3, 2)]
    # Yan's memberships stay, the team Zoe owned included; hers is gone.
    assert q(teams, "SELECT team_id, user_id FROM memberships ORDER BY 1, 2") == [(10, 2), (11, 2)]
    teams_left = q(teams, "SELECT team_id, name, owner_email FROM teams ORDER BY 1")
    assert [(t, n) for t, n, _ in teams_left] == [(10, "Northwind"), (11, "Southwind")]
    assert teams_left[1][2] == "yan.berg@teams.test"
    assert "zoe" not in (teams_left[0][2] or "").lower()
    # Yan's ticket stays, unassigned; the one she opened is gone.
    assert q(teams, "SELECT ticket_id, user_id, assignee_id FROM tickets") == [(500, 2, None)]
    # The anonymous page view carrying her e-mail, which nothing points to, is deleted; the other stays.
    assert q(teams, "SELECT view_id FROM page_views ORDER BY 1") == [(101,)]
    # Nothing of her anywhere in the company's tables, by a plain reading of every row.
    for (table,) in q(teams, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"):
        found = q(teams, f"SELECT count(*) FROM public.{table} t WHERE lower(t::text) LIKE '%%quill%%'")  # noqa: S608
        assert found == [(0,)], table

    # A British platform's request by the national spelling of a phone stored in international form.
    run_dag("subject_erasure", {"identifier_kind": "phone", "identifier": "07700 900789", "dry_run": False})
    assert q(teams, "SELECT user_id, manager_id FROM users ORDER BY 1") == [(2, None)]
    assert q(teams, "SELECT status FROM lethe.erasure_requests ORDER BY received_at") == [
        ("certified",),
        ("certified",),
    ]
