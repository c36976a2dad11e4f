"""Legal holds on a shop keyed by e-mail in `citext`: a hold covers the person, whatever the case it spells her key in.

The citext shop of test_erasure_citext_key (customers keyed by `email citext PRIMARY KEY`, orders and invoices
spelling the key in other cases), with a free-text note on orders. PostgreSQL says 'Anna@Example.com' and
'anna@example.com' are one customer, so a hold placed on her in any spelling holds every row of hers: her erasure
waits for the hold's release, and another person's erasure leaves the text of her held rows alone (evidence).

Outcomes read back with this test's own SQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import own_schema
import psycopg2
import pytest
from lethe import testing
from test_erasure_citext_key import ANNA, POLICY, SCHEMA, SEED, erase, q

pytestmark = pytest.mark.integration

NOTE_POLICY = POLICY.replace(
    "columns: {order_id: identifier, customer: identifier, item: attribute, ship_to: name}",
    "free_text: [note]\n    columns: {order_id: identifier, customer: identifier, item: attribute, ship_to: name,"
    " note: comment}",
)

ORDERS = [
    (1, "anna@example.com", "kettle", "Anna Alt", "deliver to the neighbour, bob@example.org"),
    (2, "ANNA@EXAMPLE.COM", "teapot", None, None),
    (3, "Anna@Example.com", "cups", None, None),
    (4, "Bob@Example.org", "spoon", "Bob Berg", None),
]


@pytest.fixture
def shop(services: tuple[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    assert "note: comment" in NOTE_POLICY
    url = testing.empty_database(services[0], "lethe_citext_holds")
    with closing(psycopg2.connect(url)) as conn, conn, conn.cursor() as cur:
        cur.execute(SCHEMA)
        cur.execute("ALTER TABLE orders ADD COLUMN note text")
        cur.execute(SEED)
        cur.execute("UPDATE orders SET note = %s WHERE order_id = 1", (ORDERS[0][4],))
    path = tmp_path / "policy.yaml"
    path.write_text(NOTE_POLICY)
    own_schema.as_primary(monkeypatch, url, path)
    yield url
    testing.drop_database(url)


def hold(url: str, spelling: str) -> None:
    from lethe.db import migrate

    migrate(url)
    q(
        url,
        "INSERT INTO lethe.legal_holds (hold_id, subject_key, reference, reason, placed_at)"
        " VALUES (1, %s, 'case 7', 'litigation', now())",
        (spelling,),
    )


def orders(url: str) -> list[tuple[object, ...]]:
    return q(url, "SELECT order_id, customer::text, item, ship_to, note FROM orders ORDER BY 1")


# The hold spells her as the customer row does, as an order does, and in a spelling stored nowhere.
@pytest.mark.parametrize("held", [ANNA, "anna@example.com", "aNNa@EXAMPLE.com"])
def test_her_erasure_waits_for_a_hold_on_her_in_any_spelling(shop: str, held: str) -> None:
    hold(shop, held)
    summary = erase(shop, "anna@example.com")
    assert summary["outcomes"] == {"held": 1}, summary
    # nothing of hers went: her customer row, her orders and invoices in every spelling
    assert q(shop, "SELECT email::text FROM customers ORDER BY 1") == [(ANNA,), ("bob@example.org",)]
    assert orders(shop) == ORDERS
    assert q(shop, "SELECT invoice_no, customer::text FROM invoices ORDER BY 1") == [
        (10, "anna@example.com"),
        (11, "ANNA@example.com"),
        (12, "BOB@example.org"),
    ]
    assert q(shop, "SELECT count(*) FROM lethe.erasure_tombstones") == [(0,)]


@pytest.mark.parametrize("held", [ANNA, "ANNA@EXAMPLE.COM"])
def test_another_persons_erasure_leaves_the_text_of_her_held_rows_alone(shop: str, held: str) -> None:
    hold(shop, held)
    summary = erase(shop, "bob@example.org")
    assert summary["outcomes"] == {"erased": 1}, summary
    assert summary["verify"] == {"requests": 1, "verified": 1, "failed": 0}, summary  # her held row: allowed
    # Bob is gone; Anna's order 1 (spelt 'anna@example.com') is under the hold: its note still names Bob
    assert orders(shop) == ORDERS[:3]
