"""A released hold on a citext-keyed person names her by pseudonym only once she is erased, whatever its spelling.

The citext shop of test_erasure_citext_key (customers keyed by `email citext PRIMARY KEY`, her customer row storing
'Anna@Example.com'). A legal hold on her, spelt in another case, was placed and released; then she asked to be
erased. Her released hold stays as the record of a legal obligation, but must no longer hold her address nor its
free reference: only her keyed pseudonym (of her key as her customer row stored it, her tombstone's). Bob's released
hold is not his erasure's business and stays as it was. Read back with this test's own SQL.
"""

from __future__ import annotations

import hashlib
import hmac

import pytest
from test_erasure_citext_key import ANNA, KEY, erase, q, shop  # noqa: F401  (shop: the fixture)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("held", [ANNA, "anna@example.com", "ANNA@EXAMPLE.COM"])
def test_her_released_hold_in_any_spelling_keeps_only_her_pseudonym_after_her_erasure(
    shop: str,  # noqa: F811
    held: str,
) -> None:
    from lethe.db import migrate

    migrate(shop)
    q(
        shop,
        "INSERT INTO lethe.legal_holds (hold_id, subject_key, reference, reason, placed_at, released_at)"
        " VALUES (1, %s, 'case 7 of Anna Alt', 'litigation', now() - interval '2 days', now() - interval '1 day'),"
        " (2, 'bob@example.org', 'case 8', 'litigation', now() - interval '2 days', now() - interval '1 day')",
        (held,),
    )
    assert erase(shop, "anna@example.com")["outcomes"] == {"erased": 1}
    pseudonym = hmac.new(KEY, f"user_id:{ANNA}".encode(), hashlib.sha256).hexdigest()
    assert q(shop, "SELECT hold_id, subject_key, reference, subject_pseudonym FROM lethe.legal_holds ORDER BY 1") == [
        (1, None, None, pseudonym),
        (2, "bob@example.org", "case 8", None),
    ]
