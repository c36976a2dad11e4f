"""The audit after a citext-keyed erasure: her rows back in a spelling her erased row never stored are hers.

A shop keyed by `citext`: PostgreSQL says 'Anna@Example.com' and 'ANNA@EXAMPLE.COM' are one customer. Her keyed
pseudonym (her tombstone's) is of the spelling her customer row stored. After her erasure her rows come back,
spelt only in another case (a re-import, an order table loaded without its foreign key): they are hers, and the
audit's count of an erased person's rows left (erased_subject_rows) must count them, whatever the key holds (an
e-mail, or a handle that is neither an e-mail nor anything the value scan looks for). What is put back is this
test's own SQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import own_schema
import pytest
from lethe import testing
from test_erasure_citext_key import KEY, erase, q, shop  # noqa: F401  (shop: the fixture)

pytestmark = pytest.mark.integration

# members keyed by a case-insensitive handle that is a plain identifier (neither an e-mail nor a username: nothing
# the value scan looks for), found by their e-mail; her posts name her by the handle, in any case
HANDLE_SCHEMA = """
CREATE EXTENSION IF NOT EXISTS citext;
CREATE TABLE members (handle citext PRIMARY KEY, email text, display_name text);
CREATE TABLE posts (post_id bigint PRIMARY KEY, author citext NOT NULL REFERENCES members (handle), body text);
INSERT INTO members VALUES ('Anna-77', 'anna@forum.example', 'Anna Alt'), ('bob-12', 'bob@forum.example', 'Bob Berg');
INSERT INTO posts VALUES (1, 'anna-77', 'hello'), (2, 'Anna-77', 'again'), (3, 'BOB-12', 'hi');
"""

HANDLE_POLICY = """
version: "2026.12.0"
source: "Citext handle test notice"
subject:
  table: members
  key: handle
  identifiers: {email: email}
purposes:
  community: The forum
consent_purposes: []
tables:
  members:
    description: Members, keyed by a case-insensitive handle
    purpose: community
    legal_basis: contract
    backup: true
    subject: handle
    columns: {handle: identifier, email: email, display_name: name}
    retain_indefinitely: "While the account exists"
    erasure: {action: delete}
  posts:
    description: Posts, naming their author by handle in any case
    purpose: community
    legal_basis: contract
    backup: true
    subject: author
    columns: {post_id: identifier, author: identifier, body: comment}
    retain_indefinitely: "While the account exists"
    erasure: {action: delete}
"""


@pytest.fixture
def forum(services: tuple[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    url = own_schema.database(services[0], monkeypatch, tmp_path, "lethe_citext_respelt", HANDLE_SCHEMA, HANDLE_POLICY)
    monkeypatch.setattr("lethe.connections.pseudonym_key", lambda: KEY)
    yield url
    testing.drop_database(url)


def erase_by_email(url: str, email: str) -> dict[str, object]:
    from lethe.db import transaction
    from lethe.erasure import lifecycle, request, tasks
    from lethe.policy import load_policy

    with transaction(url) as cur:
        request_id, _ = request.register(cur, "email", email)
        lifecycle.claim_one(cur, request_id, "respelt-run", [])
        lifecycle.move(cur, "plan", [request_id], run_id="respelt-run")
        lifecycle.move(cur, "approve_unattended", [request_id], run_id="respelt-run")
    return tasks.erase_run("respelt-run", url, KEY, load_policy())


def residue_counts(url: str) -> tuple[dict[str, object], bool]:
    """The audit's erasure checks: the keyed counts, and whether they and the value scan all pass."""
    from lethe.audit import primary
    from lethe.db import transaction
    from lethe.policy import load_policy

    result = primary.check_erasure(url, load_policy(), KEY, datetime.now(UTC))
    with transaction(url) as cur:
        scan = primary.check_erasure_scan(cur, load_policy(), KEY)
    return {c["name"]: c["observed"] for c in result.checks}, result.success and scan.success


def test_her_email_key_back_only_in_another_case_counts_as_her_rows(shop: str) -> None:  # noqa: F811
    from lethe.db import migrate

    migrate(shop)
    assert erase(shop, "anna@example.com")["outcomes"] == {"erased": 1}
    assert residue_counts(shop)[1], "nothing of hers is left yet"
    q(shop, "ALTER TABLE orders DROP CONSTRAINT orders_customer_fkey")
    q(shop, "INSERT INTO customers VALUES ('ANNA@EXAMPLE.COM', NULL)")
    q(shop, "INSERT INTO orders VALUES (5, 'anna@example.com', 'cup', NULL), (6, 'aNNA@example.COM', 'jug', NULL)")
    observed, success = residue_counts(shop)
    assert observed["erased_subject_rows.customers"] == 1, observed
    assert observed["erased_subject_rows.orders"] == 2, observed
    assert not success


def test_her_handle_back_only_in_another_case_counts_as_her_rows(forum: str) -> None:
    from lethe.db import migrate

    migrate(forum)
    assert erase_by_email(forum, "Anna@Forum.example")["outcomes"] == {"erased": 1}
    assert q(forum, "SELECT handle::text FROM members") == [("bob-12",)]
    assert q(forum, "SELECT post_id FROM posts") == [(3,)]
    assert residue_counts(forum)[1], "nothing of hers is left yet"
    q(forum, "INSERT INTO members VALUES ('anna-77', NULL, 'Anna Alt')")
    q(forum, "INSERT INTO posts VALUES (4, 'ANNA-77', 'back'), (5, 'anna-77', 'again')")
    observed, success = residue_counts(forum)
    assert observed["erased_subject_rows.members"] == 1, observed
    assert observed["erased_subject_rows.posts"] == 2, observed
    assert not success
    # Bob's rows are his own, in whatever case: not counted
    q(forum, "DELETE FROM posts WHERE post_id IN (4, 5)")
    q(forum, "DELETE FROM members WHERE handle = 'ANNA-77'")
    q(forum, "INSERT INTO posts VALUES (6, 'Bob-12', 'mine')")
    observed, success = residue_counts(forum)
    assert observed["erased_subject_rows.members"] == 0 and observed["erased_subject_rows.posts"] == 0, observed
    assert success, observed
