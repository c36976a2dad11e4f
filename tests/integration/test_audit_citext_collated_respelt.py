"""The audit after a citext-keyed erasure, the key column carrying its own collation (ICU's Turkish).

citext's equality folds both sides by lower() in the database's default collation, whatever the column's; lower()
of the column's text folds by the column's collation. In Turkish 'I' lowers to a dotless i: PostgreSQL says the
handle 'INGRID-7' is the member 'ingrid-7', her tombstone keeps the pseudonym of 'ingrid-7' (folded as citext
compares), and her rows back spelt 'INGRID-7' must count as hers (erased_subject_rows), folded the same way.
What is put back is this test's own SQL. A PostgreSQL built without ICU (the embedded one) cannot hold such a
column: the tests are skipped there, and run against a server that has ICU (LETHE_DATABASE_URL).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import own_schema
import pytest
from lethe import testing
from test_audit_citext_respelt import HANDLE_POLICY, erase_by_email, residue_counts
from test_erasure_citext_key import KEY, q

pytestmark = pytest.mark.integration

TURKISH = "CREATE COLLATION IF NOT EXISTS lethe_turkish (provider = icu, locale = 'tr')"
COLLATED_SCHEMA = """
CREATE EXTENSION IF NOT EXISTS citext;
CREATE COLLATION IF NOT EXISTS lethe_turkish (provider = icu, locale = 'tr');
CREATE TABLE members (handle citext COLLATE lethe_turkish PRIMARY KEY, email text, display_name text);
CREATE TABLE posts (post_id bigint PRIMARY KEY, author citext COLLATE lethe_turkish NOT NULL
  REFERENCES members (handle), body text);
INSERT INTO members VALUES ('ingrid-7', 'ingrid@forum.example', 'Ingrid Alt'), ('bob-12', 'bob@forum.example', 'Bob');
INSERT INTO posts VALUES (1, 'ingrid-7', 'hello'), (2, 'INGRID-7', 'again'), (3, 'BOB-12', 'hi');
"""


def _requires_icu(server_url: str) -> None:
    """Skip where the server cannot create an ICU collation (a build without ICU); the probe is rolled back."""
    from contextlib import closing

    import psycopg2

    with closing(psycopg2.connect(server_url)) as conn, conn.cursor() as cur:
        try:
            cur.execute(TURKISH)
        except psycopg2.errors.FeatureNotSupported as exc:
            pytest.skip(f"this PostgreSQL has no ICU ({exc.pgerror.strip() if exc.pgerror else exc})")
        finally:
            conn.rollback()


@pytest.fixture
def collated_forum(services: tuple[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    _requires_icu(services[0])
    url = own_schema.database(
        services[0], monkeypatch, tmp_path, "lethe_citext_collated", COLLATED_SCHEMA, HANDLE_POLICY
    )
    monkeypatch.setattr("lethe.connections.pseudonym_key", lambda: KEY)
    yield url
    testing.drop_database(url)


def test_her_handle_back_in_a_case_the_column_collation_folds_otherwise(collated_forum: str) -> None:
    from lethe.db import migrate

    url = collated_forum
    migrate(url)
    assert q(url, "SELECT 'INGRID-7'::citext = 'ingrid-7'::citext, lower('INGRID-7' COLLATE lethe_turkish)") == [
        (True, "\u0131ngr\u0131d-7")
    ]
    assert erase_by_email(url, "ingrid@forum.example")["outcomes"] == {"erased": 1}
    assert q(url, "SELECT post_id FROM posts") == [(3,)]
    assert residue_counts(url)[1], "nothing of hers is left yet"
    q(url, "INSERT INTO members VALUES ('INGRID-7', NULL, 'Ingrid Alt')")
    q(url, "INSERT INTO posts VALUES (4, 'INGRID-7', 'back'), (5, 'Ingrid-7', 'again')")
    assert q(url, "SELECT count(*) FROM posts WHERE author = 'ingrid-7'") == [(2,)]
    observed, success = residue_counts(url)
    assert observed["erased_subject_rows.members"] == 1, observed
    assert observed["erased_subject_rows.posts"] == 2, observed
    assert not success


def test_the_restore_check_folds_her_key_as_citext_does(
    collated_forum: str, services: tuple[str, str], s3_endpoint: str
) -> None:
    """verify_no_tombstoned_rows, given a target holding her rows spelt 'INGRID-7' only (no row spelling her as
    her tombstone does), counts them by the tombstone's case-folded pseudonym, folded as citext compares."""
    from contextlib import closing

    import psycopg2
    from lethe.backup.manifest import read
    from lethe.backup.restore import verify_no_tombstoned_rows
    from lethe.backup.snapshot import take_snapshot
    from lethe.config import BUCKETS
    from lethe.db import migrate
    from lethe.policy import load_policy
    from lethe.pseudonym import folded_subject_pseudonym, subject_pseudonym
    from lethe.storage import s3_client

    region, sid = "us-east-1", "20261201T020000Z"
    migrate(collated_forum)
    take_snapshot(collated_forum, region, s3_endpoint, sid, load_policy(), KEY)
    manifest = read(s3_client(region, s3_endpoint), BUCKETS.backup(region), sid)
    target = testing.empty_database(services[0], "lethe_citext_collated_target")
    try:
        with closing(psycopg2.connect(target)) as conn, conn, conn.cursor() as cur:
            cur.execute(COLLATED_SCHEMA.split("INSERT", 1)[0])
        q(target, "INSERT INTO members VALUES ('INGRID-7', NULL, 'Ingrid Alt'), ('bob-12', NULL, 'Bob')")
        q(target, "INSERT INTO posts VALUES (4, 'INGRID-7', 'back'), (5, 'Ingrid-7', 'again'), (3, 'Bob-12', 'hi')")
        erased = {subject_pseudonym(KEY, "ingrid-7")}
        folded = {folded_subject_pseudonym(KEY, "ingrid-7")}
        assert verify_no_tombstoned_rows(target, manifest, erased, KEY, load_policy(), folded) == 3
    finally:
        testing.drop_database(target)
