"""Create Lantern Books' schema (schema.sql) in a database and fill it with a few dozen made-up customers.

    python examples/bookshop/seed.py postgresql://user@127.0.0.1:5432/bookshop

Deterministic for a given `now` and `seed`. A few named customers are always there, for the walk-through
in docs/policy.md and the tests: Ada (erased in the walk-through), Bram and Cato (who share an address),
Dirk (closed his account 60 days ago, has an invoice), Eva (revoked her newsletter consent 10 days ago)
and Fenna (whose review mentions Ada's email address). All names, emails and numbers are invented.
"""

from __future__ import annotations

import random
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

SCHEMA = Path(__file__).with_name("schema.sql")
POLICY = Path(__file__).with_name("policy.yaml")


@dataclass(frozen=True)
class Person:
    key: str
    email: str
    phone: str
    name: str


ADA = Person("0a11ce00-0000-4000-8000-00000000000a", "ada.visser@example.nl", "+31 6 1234 5678", "Ada Visser")
BRAM = Person("0b4a3000-0000-4000-8000-00000000000b", "bram.kok@example.nl", "+31 6 2345 6789", "Bram Kok")
CATO = Person("0ca70000-0000-4000-8000-00000000000c", "cato.kok@example.nl", "+31 6 3456 7890", "Cato Kok")
DIRK = Person("0d14c000-0000-4000-8000-00000000000d", "dirk.smit@example.nl", "+31 6 4567 8901", "Dirk Smit")
EVA = Person("0e7a0000-0000-4000-8000-00000000000e", "eva.bakker@example.nl", "+31 6 5678 9012", "Eva Bakker")
FENNA = Person("0fe00000-0000-4000-8000-00000000000f", "fenna.mulder@example.nl", "+31 6 6789 0123", "Fenna Mulder")
NAMED = (ADA, BRAM, CATO, DIRK, EVA, FENNA)

_FIRST = ["Anouk", "Daan", "Femke", "Jesse", "Lotte", "Milan", "Noor", "Ruben", "Sanne", "Thijs", "Yara", "Joris"]
_LAST = ["de Jong", "Jansen", "de Vries", "van Dijk", "Bos", "Meijer", "de Boer", "Peters", "Hendriks", "Dekker"]
_CITIES = ["Utrecht", "Leiden", "Zwolle", "Delft", "Haarlem", "Arnhem"]
_STREETS = ["Lindenlaan", "Kerkstraat", "Molenweg", "Stationsplein", "Havenkade", "Dorpsstraat"]
PRODUCTS = [
    ("BK-0001", "The Quiet Harbour", 1999),
    ("BK-0002", "Maps of Small Islands", 2450),
    ("BK-0003", "Salt", 1500),
]


def create_schema(cur: Any) -> None:
    cur.execute(SCHEMA.read_text())


def seed(cur: Any, now: datetime | None = None, customers: int = 24, seed: int = 7) -> dict[str, int]:
    """Fill the (empty) schema; return rows per table."""
    now = now or datetime.now(UTC)
    rng = random.Random(seed)
    order_no = iter(range(1000, 100000))
    invoice_no = iter(range(1, 100000))

    def address(line1: str, city: str, created: datetime) -> int:
        cur.execute(
            "INSERT INTO addresses (line1, city, postcode, created_at) VALUES (%s, %s, %s, %s) RETURNING address_id",
            (line1, city, f"{rng.randint(1000, 9999)} {rng.choice('ABCDEFGH')}{rng.choice('KLMNPRST')}", created),
        )
        return int(cur.fetchone()[0])

    def customer(p: Person, address_id: int | None, signed_up: datetime, closed: datetime | None = None) -> None:
        cur.execute(
            "INSERT INTO customers (customer_id, email, phone, full_name, address_id, signed_up_at, closed_on)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (p.key, p.email, p.phone, p.name, address_id, signed_up, closed),
        )

    def order(p: Person, at: datetime, ship_to: int | None) -> int:
        n = next(order_no)
        cur.execute(
            "INSERT INTO orders (order_id, placed_at, customer_id, ship_to, total_cents) VALUES (%s, %s, %s, %s, %s)",
            (n, at, p.key, ship_to, rng.choice(PRODUCTS)[2]),
        )
        return n

    def invoice(p: Person, at: datetime, billed_address: str) -> None:
        cur.execute(
            "INSERT INTO billing.invoices (invoice_no, customer_id, billed_name, billed_address, vat_number,"
            " amount_cents, issued_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (f"LB-{at:%Y}-{next(invoice_no):05d}", p.key, p.name, billed_address, None, rng.randint(900, 9000), at),
        )

    def session(p: Person | None, ip: str, started: datetime, seen: datetime) -> None:
        cur.execute(
            "INSERT INTO sessions (token, customer_id, ip, user_agent, started_at, last_seen_at)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (
                uuid.UUID(int=rng.getrandbits(128)).hex,
                p.key if p else None,
                ip,
                "Mozilla/5.0 (X11; Linux)",
                started,
                seen,
            ),
        )

    def comment(p: Person, body: str, at: datetime) -> None:
        cur.execute(
            "INSERT INTO comments (product_sku, customer_id, display_name, body, posted_at)"
            " VALUES (%s, %s, %s, %s, %s)",
            (rng.choice(PRODUCTS)[0], p.key, p.name.split()[0], body, at),
        )

    def consent(p: Person, topic: str, given: datetime, revoked: datetime | None = None) -> None:
        cur.execute(
            "INSERT INTO consent_log (customer_id, topic, given_at, revoked_at) VALUES (%s, %s, %s, %s)",
            (p.key, topic, given, revoked),
        )
        if topic == "newsletter":
            cur.execute(
                "INSERT INTO newsletter_subscribers (customer_id, email, subscribed_at) VALUES (%s, %s, %s)",
                (p.key, p.email, given),
            )

    day = timedelta(days=1)
    cur.executemany("INSERT INTO products (sku, title, price_cents) VALUES (%s, %s, %s)", PRODUCTS)

    # Ada: her own address, orders in two partitions shipped there, an invoice, sessions, a review, the newsletter.
    ada_home = address("Lindenlaan 12", "Utrecht", now - 500 * day)
    customer(ADA, ada_home, now - 500 * day)
    order(ADA, now - 400 * day, ada_home)
    order(ADA, now - 30 * day, ada_home)
    invoice(ADA, now - 30 * day, "Lindenlaan 12, Utrecht")
    session(ADA, "198.51.100.23", now - 2 * day, now - day)
    session(ADA, "198.51.100.23", now - 9 * day, now - 8 * day)
    comment(ADA, "Lovely edition, arrived well packed.", now - 20 * day)
    consent(ADA, "newsletter", now - 500 * day)

    # Bram and Cato share one address: erasing one of them must not take it from the other.
    shared = address("Molenweg 3", "Zwolle", now - 700 * day)
    customer(BRAM, shared, now - 700 * day)
    customer(CATO, shared, now - 650 * day)
    order(BRAM, now - 100 * day, shared)
    order(CATO, now - 50 * day, shared)

    # Dirk closed his account 60 days ago; his invoice is kept for seven years.
    dirk_home = address("Havenkade 40", "Delft", now - 900 * day)
    customer(DIRK, dirk_home, now - 900 * day, closed=now - 60 * day)
    order(DIRK, now - 200 * day, dirk_home)
    invoice(DIRK, now - 200 * day, "Havenkade 40, Delft")
    session(DIRK, "203.0.113.77", now - 70 * day, now - 65 * day)
    comment(DIRK, "Not my genre, but well written.", now - 100 * day)

    # Eva revoked her newsletter consent 10 days ago.
    eva_old = address("Stationsplein 1", "Leiden", now - 800 * day)  # her previous address, still on an old order
    eva_home = address("Kerkstraat 8", "Leiden", now - 200 * day)
    customer(EVA, eva_home, now - 800 * day)
    order(EVA, now - 720 * day, eva_old)
    consent(EVA, "newsletter", now - 800 * day, revoked=now - 10 * day)

    # Fenna's review mentions Ada by her email address.
    fenna_home = address("Dorpsstraat 77", "Arnhem", now - 300 * day)
    customer(FENNA, fenna_home, now - 300 * day)
    comment(FENNA, "Gift from ada.visser@example.nl, thank you Ada!", now - 15 * day)

    address("Kerkstraat 99", "Haarlem", now - 600 * day)  # nobody's any more: retention removes it

    for i in range(customers):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        p = Person(
            str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            f"{first.lower()}.{last.replace(' ', '').lower()}{i}@example.org",
            f"+31 6 {rng.randint(1000, 9999)} {rng.randint(1000, 9999)}",
            f"{first} {last}",
        )
        signed = now - rng.randint(30, 900) * day
        home = address(f"{rng.choice(_STREETS)} {rng.randint(1, 200)}", rng.choice(_CITIES), signed)
        customer(p, home, signed)
        for _ in range(rng.randint(0, 3)):
            at = signed + rng.randint(0, max(1, (now - signed).days - 1)) * day
            order(p, at, home)
            if rng.random() < 0.5:
                invoice(p, at, f"{rng.choice(_STREETS)} {rng.randint(1, 200)}, {rng.choice(_CITIES)}")
        seen = now - rng.randint(0, 90) * day
        session(p, f"192.0.2.{rng.randint(1, 254)}", seen - day, seen)
        if rng.random() < 0.4:
            consent(p, "newsletter", signed)
    session(None, "192.0.2.200", now - 3 * day, now - 3 * day)  # an anonymous visitor

    counts = {}
    for table in ("addresses", "customers", "products", "orders", "billing.invoices", "sessions", "comments",
                  "consent_log", "newsletter_subscribers"):  # fmt: skip
        cur.execute(f"SELECT count(*) FROM {table}")  # noqa: S608 - fixed names of this file
        counts[table] = int(cur.fetchone()[0])
    return counts


def main(argv: list[str]) -> int:
    import psycopg2

    if len(argv) != 2:
        print("usage: seed.py DATABASE_URL (an empty database)", file=sys.stderr)
        return 2
    conn = psycopg2.connect(argv[1])
    try:
        with conn, conn.cursor() as cur:
            create_schema(cur)
            counts = seed(cur)
    finally:
        conn.close()
    print(", ".join(f"{table} {n}" for table, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
