"""Lethe's search indexes (`lethe db indexes`): created by the step, used by the planner for the erasure's
mention search and identifier checks, and the search finds the same rows with them as without them."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest
from erasure_people import ASHA, insert_people
from lethe.cli import main
from lethe.db import connect
from lethe.erasure import discovery, indexes, verify
from lethe.policy import load_policy

pytestmark = pytest.mark.integration

FILLER = 30_000  # people and comments/messages each: enough that reading the table costs more than an index lookup


class Recording(psycopg2.extensions.cursor):
    """Keeps every statement it ran, as sent (parameters bound)."""

    sent: list[str] = []

    def execute(self, query: Any, vars: Any = None) -> Any:
        result = super().execute(query, vars)
        Recording.sent.append(self.query.decode() if isinstance(self.query, bytes) else str(self.query))
        return result


def _fill(url: str) -> None:
    """Other people, their comments and messages, none of them naming Asha; Bhavin's mentions of her are
    planted by insert_people."""
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO accounts (user_id, name, username, email, phone, password_hash, created_at)"
            " SELECT 1000 + i, 'Person ' || i, 'user' || i, 'user' || i || '@example.net',"
            " '+91 8' || lpad(i::text, 9, '0'), 'x', now() FROM generate_series(1, %s) i",
            (FILLER,),
        )
        cur.execute(
            "INSERT INTO comments SELECT 10000 + i, 1000 + i, 'about lesson ' || md5(i::text) || ' by user' || i,"
            " now() FROM generate_series(1, %s) i",
            (FILLER,),
        )
        cur.execute(
            "INSERT INTO communications SELECT 10000 + i, 1000 + i, 'email', 'inbound', 'Re: ' || (i %% 97),"
            " 'reply ' || md5(i::text) || ' from user' || i || '@example.net', now() FROM generate_series(1, %s) i",
            (FILLER,),
        )
        cur.execute("ANALYZE")


def _search(url: str) -> tuple[dict[tuple[str, str], list[tuple[Any, ...]]], list[str]]:
    """The mention search and the identifier checks for Asha, in a transaction rolled back:
    (table.column -> [(primary key, owners)]), the statements sent."""
    policy = load_policy()
    Recording.sent = []
    conn = connect(url)
    try:
        with conn.cursor(cursor_factory=Recording) as cur:
            graph = discovery.read_graph(cur, policy)
            people = [p for p in discovery.resolve(cur, policy, [("email", ASHA["email"])]) if p]
            found = discovery.find_mentions(cur, graph, policy, people, exclude_linked=False)
            verify.residue(cur, policy, graph, people)
    finally:
        conn.rollback()
        conn.close()
    rows = {key: sorted((pk, tuple(sorted(owners))) for pk, _text, owners in hits) for key, hits in found.items()}
    return rows, Recording.sent


def _explain(url: str, statement: str) -> str:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("EXPLAIN " + statement)
        return "\n".join(r[0] for r in cur.fetchall())


def _valid_indexes(url: str) -> set[str]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE c.relname LIKE 'lethe\\_%%' AND i.indisvalid"
        )
        return {r[0] for r in cur.fetchall()}


def test_the_step_creates_the_indexes_the_search_uses_and_finds_the_same_rows(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    insert_people(db_url)
    _fill(db_url)
    policy = load_policy()
    names = {i.name for i in indexes.wanted(policy)}
    assert all(name.startswith("lethe_") and len(name.encode()) <= 63 for name in names)
    assert {
        indexes.index_name("trgm", "comments", "body"),
        indexes.index_name("trgm", "communications", "body"),
        indexes.index_name("lower", "accounts", "email"),
    } <= names

    indexes._warned.clear()
    with caplog.at_level(logging.WARNING, logger="lethe.erasure.indexes"):
        without, _ = _search(db_url)
        _search(db_url)
    warnings = [r.getMessage() for r in caplog.records if r.name == "lethe.erasure.indexes"]
    assert len(warnings) == 1 and "comments.body" in warnings[0]  # said once, by table and column
    assert ASHA["email"] not in warnings[0] and "asha" not in warnings[0].lower()
    # Bhavin's three mentions of Asha and her own comment with her email (insert_people), found by the plain scan
    assert without == {
        ("comments", "body"): [((101,), (str(ASHA["user_id"]),)), ((201,), (str(ASHA["user_id"]),))],
        ("issue_reports", "body"): [((201,), (str(ASHA["user_id"]),))],
        ("communications", "body"): [((201,), (str(ASHA["user_id"]),))],
    }

    done = dict((i.name, what) for i, what in indexes.ensure(db_url, policy))
    assert done == {name: "created" for name in names}
    assert _valid_indexes(db_url) == names
    assert {what for _i, what in indexes.ensure(db_url, policy)} == {"exists"}  # a second run changes nothing

    with_index, sent = _search(db_url)
    assert with_index == without

    # The planner takes the index for the statements the erasure sends (large tables, selective terms).
    def statement(prefix: str) -> str:
        return next(s for s in sent if s.startswith(prefix))

    for prefix, index in [
        ('SELECT t."comment_id", t."body" FROM "comments" t WHERE t."body" ILIKE ANY', "lethe_trgm_comments_body"),
        (
            'SELECT t."message_id", t."body" FROM "communications" t WHERE t."body" ILIKE ANY',
            "lethe_trgm_communications_body",
        ),
        ('SELECT count(*) FROM "accounts" WHERE lower("email") = ANY', "lethe_lower_accounts_email"),
        ('SELECT count(*) FROM "accounts" WHERE regexp_replace("phone"', "lethe_phone_accounts_phone"),
    ]:
        assert index in _explain(db_url, statement(prefix)), prefix

    # Without the indexes (dropped), the same rows again.
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        for name in names:
            cur.execute(f'DROP INDEX "{name}"')
    assert _valid_indexes(db_url) == set()
    again, sent = _search(db_url)
    assert again == without
    assert "lethe_trgm_comments_body" not in _explain(db_url, statement('SELECT t."comment_id"'))


def test_an_interrupted_build_is_rebuilt_and_nothing_is_built_for_a_missing_table(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = load_policy()
    email, disputes = (
        indexes.index_name("lower", "accounts", "email"),
        indexes.index_name("trgm", "disputes", "summary"),
    )
    comments = indexes.index_name("trgm", "comments", "body")
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        # What an interrupted CREATE INDEX CONCURRENTLY leaves: the index, marked invalid.
        cur.execute(f'CREATE INDEX "{email}" ON accounts (lower(email))')
        cur.execute("UPDATE pg_index SET indisvalid = false WHERE indexrelid = %s::regclass", (f'"{email}"',))
        cur.execute("DROP TABLE disputes CASCADE")
    assert main(["db", "indexes"]) == 0  # LETHE_DATABASE_URL is db_url
    printed = capsys.readouterr().out.splitlines()
    assert f"search index {email} on accounts.email: rebuilt" in printed
    assert f"search index {disputes} on disputes.summary: skipped: no such table" in printed
    assert f"search index {comments} on comments.body: created" in printed
    assert _valid_indexes(db_url) == {i.name for i in indexes.wanted(policy)} - {disputes}


def test_an_index_the_policy_no_longer_asks_for_is_dropped_and_no_other(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["db", "indexes"]) == 0
    comments = indexes.index_name("trgm", "comments", "body")
    assert comments in _valid_indexes(db_url)
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        # The platform's own indexes: one of its names starts like Lethe's, one lives outside the policy's schemas.
        cur.execute("CREATE INDEX lethe_trgm_comments_ours ON comments (created_at)")
        cur.execute("CREATE SCHEMA elsewhere; CREATE TABLE elsewhere.notes (body text)")
        cur.execute("CREATE INDEX lethe_trgm_notes_body_0123abcd ON elsewhere.notes (body)")
    shipped = (Path(__file__).parents[2] / "include/lethe/policy/reskill.yaml").read_text()
    free_text = (
        "    backup: true\n    free_text: [body]\n    columns: {comment_id: identifier, user_id: identifier, body"
    )
    assert shipped.count(free_text) == 1
    policy_file = tmp_path / "policy.yaml"  # comments.body is no longer searched as free text
    policy_file.write_text(shipped.replace(free_text, free_text.replace("    free_text: [body]\n", "")))
    capsys.readouterr()

    assert main(["db", "indexes", "--file", str(policy_file)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert f"search index {comments} on comments (body): dropped: the policy no longer asks for it" in printed
    assert sum("dropped" in line for line in printed) == 1
    assert _valid_indexes(db_url) == {i.name for i in indexes.wanted(load_policy(str(policy_file)))} | {
        "lethe_trgm_comments_ours",
        "lethe_trgm_notes_body_0123abcd",
    }
    assert main(["db", "indexes", "--file", str(policy_file)]) == 0  # nothing left to drop
    assert "dropped" not in capsys.readouterr().out
