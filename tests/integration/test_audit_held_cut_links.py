"""The compliance audit on rows whose subject link retention cut before a legal hold was placed: no false alarm.

A rule with `pseudonym_link` replaces a row's subject key with the person's keyed pseudonym. A hold placed on her
afterwards keeps those rows: the retention executor recognises them by her pseudonym (computed with the key). The
audit's `expired_rows.<rule>` check must allow them the same way while the hold is active, and count them again
once it is released (and then keep no pseudonym of hers). Shown for the citext shop of test_audit_citext_holds
(the hold in any spelling of her key) and for a shop keyed by bigint; the rows kept are read back with this
test's own SQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import own_schema
import psycopg2
import pytest
from lethe import testing
from test_audit_citext_holds import release
from test_audit_citext_holds import visits_shop as citext_shop  # noqa: F401  (the fixture)
from test_erasure_citext_key import ANNA, KEY, q
from test_retention_citext_key import NOW

pytestmark = pytest.mark.integration

BIGINT_SCHEMA = """
CREATE TABLE people (person_id bigint PRIMARY KEY, full_name text);
CREATE TABLE visits (
    visit_id bigint PRIMARY KEY,
    person bigint REFERENCES people (person_id),
    person_pseudonym text,
    visited_at timestamptz NOT NULL
);
INSERT INTO people VALUES (7, 'Anna Alt'), (8, 'Bob Berg');
INSERT INTO visits VALUES (20, 7, NULL, '2026-11-01'), (21, 7, NULL, '2026-11-02'), (22, 7, NULL, '2026-11-03'),
    (23, 8, NULL, '2026-11-04');
"""

BIGINT_POLICY = """
version: "2026.12.0"
source: "Bigint shop test notice"
subject:
  table: people
  key: person_id
  identifiers: {}
purposes:
  sales: Selling things
consent_purposes: []
tables:
  people:
    description: People, keyed by a number
    purpose: sales
    legal_basis: contract
    backup: true
    subject: person_id
    columns: {person_id: identifier, full_name: name}
    retain_indefinitely: "While the account exists"
    erasure: {action: delete}
  visits:
    description: Visits, naming the person by number until retention cuts the link
    purpose: sales
    legal_basis: contract
    backup: true
    subject: person
    columns: {visit_id: identifier, person: identifier, person_pseudonym: pseudonym, visited_at: timestamp}
    retention:
      - {name: visits_unlinked, keep: PT24H, after: visited_at, action: anonymise, columns: {person: pseudonym_link}}
      - {name: visits_expired, keep: P20D, after: visited_at, action: delete}
    erasure: {action: delete}
"""


@pytest.fixture
def bigint_shop(services: tuple[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    url = testing.empty_database(services[0], "lethe_bigint_audit_cut_holds")
    with closing(psycopg2.connect(url)) as conn, conn, conn.cursor() as cur:
        cur.execute(BIGINT_SCHEMA)
    path = tmp_path / "policy.yaml"
    path.write_text(BIGINT_POLICY)
    own_schema.as_primary(monkeypatch, url, path)
    monkeypatch.setattr("lethe.connections.pseudonym_key", lambda: KEY)
    yield url
    testing.drop_database(url)


def run_rule(url: str, rule: str) -> None:
    from lethe.db import migrate, transaction
    from lethe.policy import load_policy
    from lethe.retention.execute import execute_rule
    from lethe.retention.plan import build_plan

    migrate(url)
    with transaction(url) as cur:
        plan = build_plan(cur, NOW, policy=load_policy(), rules=[rule])
    execute_rule(url, plan, rule, policy=load_policy())


def place_hold(url: str, key: str) -> None:
    """As docs/policy.md tells users to: plain SQL, the key only (no pseudonym)."""
    q(
        url,
        "INSERT INTO lethe.legal_holds (hold_id, subject_key, reason, placed_at) VALUES (1, %s, 'litigation', now())",
        (key,),
    )


def expired_visits(url: str) -> dict[str, object]:
    from lethe.audit import primary
    from lethe.policy import load_policy

    result = primary.check_retention(url, load_policy(), datetime.now(UTC))
    [check] = [c for c in result.checks if c["name"] == "expired_rows.visits_expired"]
    return check


def cut_hold_expire_audit(url: str, link: str, pseudonym: str, key: str) -> None:
    # the link cut first: every visit is a day old at NOW, so each keeps only its person's pseudonym
    run_rule(url, "visits_unlinked")
    cut = q(url, f"SELECT visit_id FROM visits WHERE {link} IS NULL AND {pseudonym} IS NOT NULL ORDER BY 1")  # noqa: S608
    assert cut == [(20,), (21,), (22,), (23,)]
    # then the hold on Anna, then the rule that deletes visits 20 days old: Bob's goes, her three stay
    place_hold(url, key)
    run_rule(url, "visits_expired")
    assert q(url, "SELECT visit_id FROM visits ORDER BY 1") == [(20,), (21,), (22,)]

    check = expired_visits(url)
    assert check["success"] and check["observed"] == 0, check
    # the audit recorded her pseudonym (the one her visits carry) under her hold
    carried = q(url, f"SELECT DISTINCT {pseudonym} FROM visits")  # noqa: S608
    assert len(carried) == 1
    recorded = q(url, "SELECT hold_id, subject_pseudonym FROM lethe.held_pseudonyms")
    assert (1, carried[0][0]) in recorded, recorded
    release(url)
    assert q(url, "SELECT visit_id FROM visits ORDER BY 1") == [(20,), (21,), (22,)]
    check = expired_visits(url)
    assert not check["success"] and check["observed"] == 3, check
    # released: the audit keeps no pseudonym of hers beside the hold any more
    assert q(url, "SELECT count(*) FROM lethe.held_pseudonyms") == [(0,)]


@pytest.mark.parametrize("held", [ANNA, "anna@example.com", "aNNa@EXAMPLE.com"])
def test_the_audit_allows_her_cut_link_visits_held_after_the_cut_on_a_citext_key(
    citext_shop: str,  # noqa: F811
    held: str,
) -> None:
    cut_hold_expire_audit(citext_shop, "customer", "customer_pseudonym", held)


def test_the_audit_allows_her_cut_link_visits_held_after_the_cut_on_a_bigint_key(bigint_shop: str) -> None:
    cut_hold_expire_audit(bigint_shop, "person", "person_pseudonym", "7")
