"""Retention that cuts a citext link for a keyed pseudonym: one pseudonym per person, whatever the case of the link.

The citext shop of test_erasure_citext_key (customers keyed by `email citext PRIMARY KEY`) with visits whose
link spells her key in several cases. A day after a visit, retention replaces the link with the person's keyed
pseudonym (pseudonym_link). PostgreSQL says 'Anna@Example.com' and 'anna@example.com' are one customer, so every
visit of hers must carry the one pseudonym of her tombstone (HMAC of the key as her customer row stores it), and
her later erasure must find and delete all of them. Outcomes read back with this test's own SQL.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import own_schema
import psycopg2
import pytest
from lethe import testing
from test_erasure_citext_key import ANNA, KEY, POLICY, SCHEMA, SEED, erase, q

pytestmark = pytest.mark.integration

VISITS_POLICY = (
    POLICY
    + """  visits:
    description: Visits, naming the customer by e-mail in any case until retention cuts the link
    purpose: sales
    legal_basis: contract
    backup: true
    subject: customer
    columns: {visit_id: identifier, customer: identifier, customer_pseudonym: pseudonym, visited_at: timestamp}
    retention:
      - {name: visits_unlinked, keep: PT24H, after: visited_at, action: anonymise, columns: {customer: pseudonym_link}}
      - {name: visits_expired, keep: P20D, after: visited_at, action: delete}
    erasure: {action: delete}
"""
)

VISITS = """
CREATE TABLE visits (
    visit_id bigint PRIMARY KEY,
    customer citext REFERENCES customers (email),
    customer_pseudonym text,
    visited_at timestamptz NOT NULL
);
INSERT INTO visits VALUES (20, 'anna@example.com', NULL, '2026-11-01'), (21, 'ANNA@EXAMPLE.COM', NULL, '2026-11-02'),
    (22, 'Anna@Example.com', NULL, '2026-11-03'), (23, 'bob@example.org', NULL, '2026-11-04');
"""

NOW = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.fixture
def shop(services: tuple[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    url = testing.empty_database(services[0], "lethe_citext_retention")
    with closing(psycopg2.connect(url)) as conn, conn, conn.cursor() as cur:
        cur.execute(SCHEMA)
        cur.execute(SEED)
        cur.execute(VISITS)
    path = tmp_path / "policy.yaml"
    path.write_text(VISITS_POLICY)
    own_schema.as_primary(monkeypatch, url, path)
    # retention reads the key itself (a connection an earlier test defined would win over the variable): the erasure's
    monkeypatch.setattr("lethe.connections.pseudonym_key", lambda: KEY)
    yield url
    testing.drop_database(url)


def test_cut_links_of_one_person_in_any_case_carry_her_one_pseudonym_and_her_erasure_deletes_them(shop: str) -> None:
    from lethe.db import migrate, transaction
    from lethe.policy import load_policy
    from lethe.retention.execute import execute_rule
    from lethe.retention.plan import build_plan

    migrate(shop)
    with transaction(shop) as cur:
        plan = build_plan(cur, NOW, policy=load_policy(), rules=["visits_unlinked"])
    execute_rule(shop, plan, "visits_unlinked", policy=load_policy())

    def pseudonym(key: str) -> str:
        return hmac.new(KEY, f"user_id:{key}".encode(), hashlib.sha256).hexdigest()

    anna, bob = pseudonym(ANNA), pseudonym("bob@example.org")
    assert q(shop, "SELECT visit_id, customer, customer_pseudonym FROM visits ORDER BY 1") == [
        (20, None, anna),
        (21, None, anna),
        (22, None, anna),
        (23, None, bob),
    ]

    assert erase(shop, "anna@example.com")["outcomes"] == {"erased": 1}
    assert q(shop, "SELECT visit_id, customer_pseudonym FROM visits ORDER BY 1") == [(23, bob)]


# A hold on her placed after retention cut her visits' links, spelt as her customer row or one of her visits did:
# those visits are hers by her one pseudonym, so held.
@pytest.mark.parametrize("held", [ANNA, "anna@example.com"])
def test_a_hold_in_any_spelling_keeps_her_cut_link_rows_from_deletion(shop: str, held: str) -> None:
    from lethe.db import migrate, transaction
    from lethe.policy import load_policy
    from lethe.retention.execute import execute_rule
    from lethe.retention.plan import build_plan

    migrate(shop)
    for rule in ("visits_unlinked", "visits_expired"):
        if rule == "visits_expired":  # placed once her visits name her by pseudonym only
            q(
                shop,
                "INSERT INTO lethe.legal_holds (hold_id, subject_key, reference, reason, placed_at)"
                " VALUES (1, %s, 'case 7', 'litigation', now())",
                (held,),
            )
        with transaction(shop) as cur:
            plan = build_plan(cur, NOW, policy=load_policy(), rules=[rule])
        execute_rule(shop, plan, rule, policy=load_policy())
    # Bob's visit (2026-11-04, past 20 days) went; none of hers did
    assert q(shop, "SELECT visit_id FROM visits ORDER BY 1") == [(20,), (21,), (22,)]
