"""The compliance audit on a citext-keyed shop under a legal hold: a held row spelt otherwise raises no alarm.

The citext shops of test_holds_citext_key and test_retention_citext_key: customers keyed by `email citext PRIMARY
KEY`, their orders and visits spelling the key in other cases. PostgreSQL says 'Anna@Example.com' and
'anna@example.com' are one customer, so a hold on her in one spelling holds every row of hers, and Lethe keeps
them (the erasure sweep, the retention executor). The audit must read the hold the same way: rows the hold keeps
are allowed, in every spelling, and the audit passes; once the hold is released the same rows are an alarm.
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
from test_erasure_citext_key import ANNA, KEY, SCHEMA, SEED, erase, q
from test_holds_citext_key import ORDERS, hold, orders
from test_holds_citext_key import shop as noted_shop  # noqa: F401  (the fixture)
from test_retention_citext_key import NOW, VISITS, VISITS_POLICY

pytestmark = pytest.mark.integration


def release(url: str) -> None:
    q(url, "UPDATE lethe.legal_holds SET released_at = now()")


# Bob's erasure leaves the note on Anna's held order 1 (spelt 'anna@example.com') naming him: the hold spells
# her as her customer row does, or as another of her orders does.
@pytest.mark.parametrize("held", [ANNA, "ANNA@EXAMPLE.COM"])
def test_the_residue_scan_allows_her_held_row_whatever_the_case_the_hold_spells_her_in(
    noted_shop: str,  # noqa: F811
    held: str,
) -> None:
    from lethe.audit import primary
    from lethe.db import transaction
    from lethe.policy import load_policy

    hold(noted_shop, held)
    assert erase(noted_shop, "bob@example.org")["outcomes"] == {"erased": 1}
    assert orders(noted_shop) == ORDERS[:3]  # her held order 1 still names Bob in its note
    with transaction(noted_shop) as cur:
        result = primary.check_erasure_scan(cur, load_policy(), KEY)
    assert result.success, result.checks
    release(noted_shop)
    with transaction(noted_shop) as cur:
        result = primary.check_erasure_scan(cur, load_policy(), KEY)
    observed = {c["name"]: c["observed"] for c in result.checks}
    assert observed["erased_found_by_value.orders.note"] == 1, result.checks
    assert not result.success


@pytest.fixture
def visits_shop(services: tuple[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    url = testing.empty_database(services[0], "lethe_citext_audit_holds")
    with closing(psycopg2.connect(url)) as conn, conn, conn.cursor() as cur:
        cur.execute(SCHEMA)
        cur.execute(SEED)
        cur.execute(VISITS)
    path = tmp_path / "policy.yaml"
    path.write_text(VISITS_POLICY)
    own_schema.as_primary(monkeypatch, url, path)
    monkeypatch.setattr("lethe.connections.pseudonym_key", lambda: KEY)
    yield url
    testing.drop_database(url)


# visits_expired (20 days) ran on 2026-12-01: every visit (2026-11-01 to 04) is past it; Bob's went, Anna's three
# (spelt 'anna@example.com', 'ANNA@EXAMPLE.COM', 'Anna@Example.com') stay under a hold on her in one spelling.
@pytest.mark.parametrize("held", [ANNA, "anna@example.com", "aNNa@EXAMPLE.com"])
def test_the_retention_audit_allows_her_held_visits_whatever_the_case_the_hold_spells_her_in(
    visits_shop: str, held: str
) -> None:
    from lethe.audit import primary
    from lethe.db import transaction
    from lethe.policy import load_policy
    from lethe.retention.execute import execute_rule
    from lethe.retention.plan import build_plan

    hold(visits_shop, held)
    with transaction(visits_shop) as cur:
        plan = build_plan(cur, NOW, policy=load_policy(), rules=["visits_expired"])
    execute_rule(visits_shop, plan, "visits_expired", policy=load_policy())
    assert q(visits_shop, "SELECT visit_id FROM visits ORDER BY 1") == [(20,), (21,), (22,)]

    def expired_visits() -> dict[str, object]:
        result = primary.check_retention(visits_shop, load_policy(), datetime.now(UTC))
        [check] = [c for c in result.checks if c["name"] == "expired_rows.visits_expired"]
        return check

    check = expired_visits()
    assert check["success"] and check["observed"] == 0, check
    release(visits_shop)
    check = expired_visits()
    assert not check["success"] and check["observed"] == 3, check
