"""An outsider's attacks on `lethe db indexes` and the erasure's index check, tables named with a schema."""

from __future__ import annotations

from pathlib import Path

import psycopg2
import pytest
from erasure_people import ASHA, insert_people
from lethe.db import connect
from lethe.erasure import discovery, indexes
from lethe.policy import load_policy

pytestmark = pytest.mark.integration

SHIPPED = (Path(__file__).parents[2] / "include/lethe/policy/reskill.yaml").read_text()
# A free-text table in a mixed-case schema: the policy quotes each part (lethe.relations.relation).
ARCHIVE = """  Forum.old_posts:
    description: Archived forum posts.
    purpose: services
    legal_basis: contract
    subject: user_id
    backup: true
    free_text: [body]
    columns: {post_id: identifier, user_id: identifier, body: comment}
    retain_indefinitely: archive
    erasure: {action: delete}

"""


FORUM_TABLE = (
    'CREATE TABLE "Forum".old_posts (post_id int PRIMARY KEY, user_id bigint REFERENCES accounts (user_id), body text)'
)


def _policy(tmp_path: Path) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(SHIPPED.replace("  comments:\n", ARCHIVE + "  comments:\n", 1))
    return path


def test_indexes_on_a_table_in_a_mixed_case_schema(db_url: str, tmp_path: Path) -> None:
    policy = load_policy(_policy(tmp_path))
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute('CREATE SCHEMA "Forum"')
        cur.execute(FORUM_TABLE)
    # _state once cast the schema name with ::regnamespace, which folds it to "forum".
    name = indexes.index_name("trgm", "Forum.old_posts", "body")
    done = {i.name: what for i, what in indexes.ensure(db_url, policy)}
    assert done[name] == "created"
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = %s AND n.nspname = %s",
            (name, "Forum"),
        )
        assert cur.fetchall() == [(True,)]


def test_the_mention_search_on_a_table_in_a_mixed_case_schema(db_url: str, tmp_path: Path) -> None:
    """The erasure's mention search on a policy naming `Forum.old_posts` (no indexes built): the search itself
    must not fail because of the missing-index warning."""
    insert_people(db_url)
    policy = load_policy(_policy(tmp_path))
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute('CREATE SCHEMA "Forum"')
        cur.execute(FORUM_TABLE)
        cur.execute("INSERT INTO \"Forum\".old_posts VALUES (1, 2, 'ask ' || %s)", (ASHA["email"],))
    indexes._warned.clear()
    conn = connect(db_url)
    try:
        with conn.cursor() as cur:
            graph = discovery.read_graph(cur, policy)
            people = [p for p in discovery.resolve(cur, policy, [("email", ASHA["email"])]) if p]
            # warn_if_missing -> _state -> 'Forum'::regnamespace once raised InvalidSchemaName.
            found = discovery.find_mentions(cur, graph, policy, people, exclude_linked=False)
    finally:
        conn.rollback()
        conn.close()
    assert [pk for pk, _t, _o in found[("Forum.old_posts", "body")]] == [(1,)]


def test_two_columns_whose_names_join_alike_each_get_an_index(db_url: str, tmp_path: Path) -> None:
    """`forum_posts.body` and `forum.posts_body` were both `lethe_trgm_forum_posts_body`: the second was
    reported as existing while its column had no index."""
    tables = """  forum_posts:
    description: Posts.
    purpose: services
    legal_basis: contract
    subject: null
    backup: true
    free_text: [body]
    columns: {id: identifier, body: comment}
    retain_indefinitely: archive

  forum:
    description: Forum threads.
    purpose: services
    legal_basis: contract
    subject: null
    backup: true
    free_text: [posts_body]
    columns: {id: identifier, posts_body: comment}
    retain_indefinitely: archive

"""
    path = tmp_path / "p.yaml"
    path.write_text(SHIPPED.replace("  comments:\n", tables + "  comments:\n", 1))
    policy = load_policy(path)
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE forum_posts (id int PRIMARY KEY, body text)")
        cur.execute("CREATE TABLE forum (id int PRIMARY KEY, posts_body text)")
    indexes.ensure(db_url, policy)
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT indrelid::regclass::text FROM pg_index"
            " WHERE indrelid IN ('forum'::regclass, 'forum_posts'::regclass)"
            " ORDER BY 1"
        )
        on = [r[0] for r in cur.fetchall()]
    assert on.count("forum") == 2 and on.count("forum_posts") == 2  # primary key + Lethe's trigram index each


def test_a_second_run_during_a_build_leaves_the_first_alone(db_url: str) -> None:
    """Two `lethe db indexes` at once (two deploy jobs): the second once took the first's build in progress
    (an invalid index) for an interrupted one and dropped it; one of them failed (deadlock detected)."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    insert_people(db_url)
    policy = load_policy()
    writer = psycopg2.connect(db_url)  # an open write transaction: a concurrent build waits for it to end
    with writer.cursor() as cur:
        cur.execute("LOCK TABLE comments IN ROW EXCLUSIVE MODE")
    building = indexes.index_name("trgm", "comments", "body")
    with ThreadPoolExecutor(2) as pool, psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        first = pool.submit(indexes.ensure, db_url, policy)
        for _ in range(100):  # until the first run's build of comments.body is under way (invalid until done)
            cur.execute("SELECT 1 FROM pg_class WHERE relname = %s", (building,))
            conn.rollback()
            if cur.fetchone():
                break
            time.sleep(0.1)
        second = pool.submit(indexes.ensure, db_url, policy)
        time.sleep(1)
        writer.commit()
        errors = [type(r.exception()).__name__ for r in (first, second) if r.exception() is not None]
    writer.close()
    assert errors == []
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE c.relname LIKE 'lethe\\_%%' AND i.indisvalid"
        )
        assert cur.fetchone()[0] == len(indexes.wanted(policy))
