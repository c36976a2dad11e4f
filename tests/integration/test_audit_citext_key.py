"""The compliance audit on a shop keyed by e-mail in `citext`: rows left of an erased person in any spelling count.

The citext shop of test_erasure_citext_key. After Anna's erasure, rows naming her come back in orders (its foreign
key dropped, as a table loaded without one would be), spelt as her customer row stored her key and in another
case. PostgreSQL says both are hers: the audit's count of her rows left must say 2, and the check fail.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from test_erasure_citext_key import ANNA, KEY, erase, q, shop  # noqa: F401  (shop: the fixture)

pytestmark = pytest.mark.integration


def test_the_audit_counts_her_rows_left_in_every_spelling(shop: str) -> None:  # noqa: F811
    from lethe.audit import primary
    from lethe.db import migrate
    from lethe.policy import load_policy

    migrate(shop)
    assert erase(shop, "anna@example.com")["outcomes"] == {"erased": 1}
    q(shop, "ALTER TABLE orders DROP CONSTRAINT orders_customer_fkey")
    q(shop, "INSERT INTO orders VALUES (5, 'ANNA@EXAMPLE.COM', 'cup', NULL), (6, %s, 'saucer', NULL)", (ANNA,))
    result = primary.check_erasure(shop, load_policy(), KEY, datetime.now(UTC))
    observed = {c["name"]: c["observed"] for c in result.checks}
    assert observed["erased_subject_rows.orders"] == 2, result.checks
    assert not result.success
