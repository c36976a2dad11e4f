"""The legal-hold audit counts a held person's rows whose link retention cut: deleting one while held is reported.

A rule with `pseudonym_link` replaces a row's subject key by the person's keyed pseudonym; a hold placed on her
afterwards keeps those rows (test_audit_held_cut_links). The audit's `legal_holds.held_rows_removed` compares the
held rows of each active hold with the previous audit's count: her cut-link rows are hers by her pseudonym, so one
of them deleted while the hold is active is a held row removed. Shown for the bigint shop of
test_audit_held_cut_links and for the citext shop (the hold in any spelling of her key); the rows are planted,
cut and deleted with this test's own SQL and the retention rule that cuts the links.
"""

from __future__ import annotations

import pytest
from test_audit_held_cut_links import (
    bigint_shop,  # noqa: F401  (the fixture)
    citext_shop,  # noqa: F401  (the fixture)
    place_hold,
    run_rule,
)
from test_erasure_citext_key import ANNA, q

pytestmark = pytest.mark.integration


def held_rows(url: str) -> dict[str, dict[str, int]]:
    from lethe.audit import primary
    from lethe.db import transaction
    from lethe.policy import load_policy

    with transaction(url) as cur:
        return primary.held_rows(cur, load_policy())


def delete_one_held_cut_link_row(url: str, link: str, pseudonym: str, key: str) -> None:
    run_rule(url, "visits_unlinked")  # every visit is a day old: each keeps only its person's pseudonym
    assert q(url, f"SELECT count(*) FROM visits WHERE {link} IS NOT NULL") == [(0,)]  # noqa: S608
    place_hold(url, key)
    # her three visits (20-22) carry one pseudonym, Bob's (23) another
    [(hers,)] = q(url, f"SELECT DISTINCT {pseudonym} FROM visits WHERE visit_id IN (20, 21, 22)")  # noqa: S608
    assert q(url, f"SELECT count(*) FROM visits WHERE {pseudonym} = %s", (hers,)) == [(3,)]  # noqa: S608

    from lethe.audit import primary

    before = held_rows(url)  # the previous audit's counts
    assert primary.check_holds(before, None).success
    q(url, "DELETE FROM visits WHERE visit_id = 21")  # one of her held visits goes behind the hold's back
    after = held_rows(url)
    result = primary.check_holds(after, before)
    [check] = result.checks
    assert check["name"] == "held_rows_removed", check
    assert not result.success and check["observed"] == 1, check
    assert check["details"]["tables"] == {"visits": 1}
    # Bob's visit is not held: deleting it is no held row removed
    q(url, "DELETE FROM visits WHERE visit_id = 23")
    assert primary.check_holds(held_rows(url), after).success


def test_deleting_her_held_cut_link_visit_is_reported_on_a_bigint_key(bigint_shop: str) -> None:  # noqa: F811
    delete_one_held_cut_link_row(bigint_shop, "person", "person_pseudonym", "7")


@pytest.mark.parametrize("held", [ANNA, "aNNa@EXAMPLE.com"])
def test_deleting_her_held_cut_link_visit_is_reported_on_a_citext_key(citext_shop: str, held: str) -> None:  # noqa: F811
    delete_one_held_cut_link_row(citext_shop, "customer", "customer_pseudonym", held)
