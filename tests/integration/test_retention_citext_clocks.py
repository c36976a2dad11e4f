"""Event clocks on cut-link rows of a citext-keyed shop: her consent or closed account spelt in another case.

The citext shop of test_retention_citext_key: visits whose link retention cut a day after the visit, keeping
the customer's keyed pseudonym (HMAC of her key as her customer row stores it, 'Anna@Example.com'). Two more
rules delete visits a week after the customer's marketing consent ended (`consent_ended:marketing`, read from
`consents`) or her account closed (`account_closed`, read from `accounts`). Her consent and account rows spell her
key 'anna@example.com' and 'ANNA@example.COM': PostgreSQL says that is her, so her visits must go like Bob's
(whose rows spell his key as his customer row does). What is left is read back with this test's own SQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import own_schema
import psycopg2
import pytest
from lethe import testing
from test_erasure_citext_key import KEY, SCHEMA, SEED, q
from test_retention_citext_key import NOW, VISITS, VISITS_POLICY

pytestmark = pytest.mark.integration

CLOCKS_POLICY = (
    VISITS_POLICY.replace("consent_purposes: []", "consent_purposes: [marketing]")
    .replace(
        "tables:\n",
        """clocks:
  consent_ended: {table: consents, subject: customer, purpose: purpose, ended: [withdrawn_at, objected_at]}
  account_closed: {table: accounts, subject: customer, column: closed_at}
tables:
""",
        1,
    )
    .replace(
        "      - {name: visits_expired,",
        """      - {name: visits_after_objection, keep: P7D, after: "consent_ended:marketing", action: delete}
      - {name: visits_after_closing, keep: P7D, after: account_closed, action: delete}
      - {name: visits_expired,""",
    )
    + """  consents:
    description: Marketing consent per customer, naming her by e-mail in any case
    purpose: sales
    legal_basis: legitimate_interest
    backup: true
    subject: customer
    columns: {consent_id: identifier, customer: identifier, purpose: attribute, granted_at: timestamp,
              withdrawn_at: timestamp, objected_at: timestamp}
    retain_indefinitely: "Evidence of consent"
    erasure: {action: delete}
  accounts:
    description: Accounts of customers, naming her by e-mail in any case
    purpose: sales
    legal_basis: contract
    backup: true
    subject: customer
    columns: {account_id: identifier, customer: identifier, closed_at: timestamp}
    retain_indefinitely: "While the customer exists"
    erasure: {action: delete}
"""
)

# Anna's consent ended and her account closed on 2026-11-10 (more than a week before NOW), her rows spelling her
# key otherwise than her customer row; Bob's the same day, spelt as his customer row does.
CLOCKS = """
CREATE TABLE consents (
    consent_id bigint PRIMARY KEY,
    customer citext NOT NULL REFERENCES customers (email),
    purpose text NOT NULL,
    granted_at timestamptz NOT NULL,
    withdrawn_at timestamptz,
    objected_at timestamptz
);
CREATE TABLE accounts (
    account_id bigint PRIMARY KEY,
    customer citext NOT NULL REFERENCES customers (email),
    closed_at timestamptz
);
INSERT INTO consents VALUES (30, 'anna@example.com', 'marketing', '2026-10-01', '2026-11-10', NULL),
    (31, 'bob@example.org', 'marketing', '2026-10-01', NULL, '2026-11-10');
INSERT INTO accounts VALUES (40, 'ANNA@example.COM', '2026-11-10'), (41, 'bob@example.org', '2026-11-10');
"""


@pytest.fixture
def shop(services: tuple[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    url = testing.empty_database(services[0], "lethe_citext_clocks")
    with closing(psycopg2.connect(url)) as conn, conn, conn.cursor() as cur:
        cur.execute(SCHEMA)
        cur.execute(SEED)
        cur.execute(VISITS)
        cur.execute(CLOCKS)
    path = tmp_path / "policy.yaml"
    path.write_text(CLOCKS_POLICY)
    own_schema.as_primary(monkeypatch, url, path)
    monkeypatch.setattr("lethe.connections.pseudonym_key", lambda: KEY)
    yield url
    testing.drop_database(url)


def run(url: str, *rules: str) -> None:
    from lethe.db import transaction
    from lethe.policy import load_policy
    from lethe.retention.execute import execute_rule
    from lethe.retention.plan import build_plan

    for rule in rules:
        with transaction(url) as cur:
            plan = build_plan(cur, NOW, policy=load_policy(), rules=[rule])
        execute_rule(url, plan, rule, policy=load_policy())


@pytest.mark.parametrize("rule", ["visits_after_objection", "visits_after_closing"])
def test_her_cut_link_visits_go_when_her_clock_row_spells_her_key_in_another_case(shop: str, rule: str) -> None:
    from lethe.db import migrate

    migrate(shop)
    run(shop, "visits_unlinked")
    # the links are cut: her visits (20-22) name her by her one pseudonym only, Bob's (23) by his
    assert q(shop, "SELECT count(*) FROM visits WHERE customer IS NULL AND customer_pseudonym IS NOT NULL") == [(4,)]
    run(shop, rule)
    # her clock started on 2026-11-10 as Bob's did: all four visits are past their week
    assert q(shop, "SELECT visit_id FROM visits ORDER BY 1") == []


def test_a_hold_on_her_still_keeps_her_cut_link_visits_from_her_clock(shop: str) -> None:
    from lethe.db import migrate

    migrate(shop)
    run(shop, "visits_unlinked")
    q(
        shop,
        "INSERT INTO lethe.legal_holds (hold_id, subject_key, reference, reason, placed_at)"
        " VALUES (1, 'anna@EXAMPLE.com', 'case 7', 'litigation', now())",
    )
    run(shop, "visits_after_objection", "visits_after_closing")
    assert q(shop, "SELECT visit_id FROM visits ORDER BY 1") == [(20,), (21,), (22,)]
