"""Usage sharing on a citext-keyed shop: her cut-link usage counts as hers whatever the case her consent spells her in.

The citext shop of test_erasure_citext_key (customers keyed by `email citext PRIMARY KEY`) with the sharing source
of a usage release: consents to `analytics`, usage events and page views naming the customer by e-mail. A day after
an event retention cuts its link and keeps the customer's keyed pseudonym (HMAC of her key as her customer row
stores it, 'Anna@Example.com'). Her consent row spells her 'anna@example.com'; PostgreSQL says that is her, so the
release's exact cells must count her three events and her as one person, like Bob's one event (his consent spelt as
his customer row). Read back from the aggregate query (lethe.sharing.query.compute) Lethe's release is made from.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import own_schema
import psycopg2
import pytest
from lethe import testing
from test_erasure_citext_key import KEY, POLICY, SCHEMA, SEED, q
from test_retention_citext_key import NOW

pytestmark = pytest.mark.integration

SHARING_POLICY = (
    POLICY.replace("consent_purposes: []", "consent_purposes: [analytics]")
    .replace("  accounting: Tax records\n", "  accounting: Tax records\n  analytics: Usage statistics\n")
    .replace(
        "tables:\n",
        """clocks:
  consent_ended: {table: consents, subject: customer, purpose: purpose, ended: [withdrawn_at]}
sharing:
  source:
    consent: {purpose: analytics, granted: granted_at}
    usage: {table: usage_events, person: customer, at: occurred_at, feature: feature, duration_ms: duration_ms}
    pages:
      table: page_views
      person: customer
      visitor: visitor_id
      at: occurred_at
      path: path
      time_zone: time_zone
      device_type: device_type
      browser: browser
      user_agent: user_agent
tables:
""",
        1,
    )
    + """  consents:
    description: Consents per customer, naming her by e-mail in any case
    purpose: sales
    legal_basis: legitimate_interest
    backup: true
    subject: customer
    columns: {consent_id: identifier, customer: identifier, purpose: attribute, granted_at: timestamp,
              withdrawn_at: timestamp}
    retain_indefinitely: "Evidence of consent"
    erasure: {action: delete}
  usage_events:
    description: Product usage, naming the customer by e-mail in any case until retention cuts the link
    purpose: analytics
    legal_basis: consent
    backup: true
    subject: customer
    columns: {event_id: identifier, customer: identifier, customer_pseudonym: pseudonym, occurred_at: timestamp,
              feature: usage, duration_ms: usage}
    retention:
      - {name: usage_unlinked, keep: PT24H, after: occurred_at, action: anonymise, columns: {customer: pseudonym_link}}
    erasure: {action: delete}
  page_views:
    description: Page views of customers and anonymous visitors
    purpose: analytics
    legal_basis: consent
    backup: true
    subject: customer
    columns: {log_id: identifier, customer: identifier, visitor_id: cookie, occurred_at: timestamp, path: usage,
              time_zone: device, device_type: device, browser: device, user_agent: device}
    retain_indefinitely: "Test table"
    erasure: {action: delete}
"""
)

SHARING = """
CREATE TABLE consents (
    consent_id bigint PRIMARY KEY,
    customer citext NOT NULL REFERENCES customers (email),
    purpose text NOT NULL,
    granted_at timestamptz NOT NULL,
    withdrawn_at timestamptz
);
CREATE TABLE usage_events (
    event_id bigint PRIMARY KEY,
    customer citext REFERENCES customers (email),
    customer_pseudonym text,
    occurred_at timestamptz NOT NULL,
    feature text NOT NULL,
    duration_ms bigint
);
CREATE TABLE page_views (
    log_id bigint PRIMARY KEY,
    customer citext REFERENCES customers (email),
    visitor_id text,
    occurred_at timestamptz NOT NULL,
    path text,
    time_zone text,
    device_type text,
    browser text,
    user_agent text
);
INSERT INTO consents VALUES (30, 'anna@example.com', 'analytics', '2026-10-01', NULL),
    (31, 'bob@example.org', 'analytics', '2026-10-01', NULL);
INSERT INTO usage_events VALUES (50, 'anna@example.com', NULL, '2026-11-02 09:00Z', 'quiz', 60000),
    (51, 'ANNA@EXAMPLE.COM', NULL, '2026-11-02 09:01Z', 'quiz', 60000),
    (52, 'Anna@Example.com', NULL, '2026-11-02 09:02Z', 'quiz', 60000),
    (53, 'bob@example.org', NULL, '2026-11-02 09:03Z', 'quiz', 60000);
"""


@pytest.fixture
def shop(services: tuple[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    url = testing.empty_database(services[0], "lethe_citext_sharing")
    with closing(psycopg2.connect(url)) as conn, conn, conn.cursor() as cur:
        cur.execute(SCHEMA)
        cur.execute(SEED)
        cur.execute(SHARING)
    path = tmp_path / "policy.yaml"
    path.write_text(SHARING_POLICY)
    own_schema.as_primary(monkeypatch, url, path)
    monkeypatch.setattr("lethe.connections.pseudonym_key", lambda: KEY)
    yield url
    testing.drop_database(url)


def test_her_cut_link_usage_counts_as_hers_when_her_consent_spells_her_key_in_another_case(shop: str) -> None:
    from lethe.db import migrate, transaction
    from lethe.policy import load_policy
    from lethe.retention.execute import execute_rule
    from lethe.retention.plan import build_plan
    from lethe.sharing.config import RecipientConfig
    from lethe.sharing.query import compute

    migrate(shop)
    config = RecipientConfig(name="partner", k=1, dimensions=("feature",))
    start, end = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 3, tzinfo=UTC)
    linked = compute(shop, config, start, end, policy=load_policy(), key=KEY)
    assert (linked.rows_in, linked.people_in) == (4, 2)

    with transaction(shop) as cur:
        plan = build_plan(cur, NOW, policy=load_policy(), rules=["usage_unlinked"])
    execute_rule(shop, plan, "usage_unlinked", policy=load_policy())
    assert q(shop, "SELECT count(*) FROM usage_events WHERE customer IS NULL AND customer_pseudonym IS NOT NULL") == [
        (4,)
    ]
    cut = compute(shop, config, start, end, policy=load_policy(), key=KEY)
    # the same people and events as while the rows named her
    assert (cut.rows_in, cut.people_in) == (4, 2)
    assert cut.cells[["feature", "events", "people"]].values.tolist() == [["quiz", 4, 2]]
