"""`lethe policy init` on Lantern Books (examples/bookshop): a draft that, after the review docs/policy.md
describes, passes `lethe policy check`.

The draft is read back as YAML by this test; the review decisions are applied here as a person would
(text edits of the draft), then the check runs against the live database.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "bookshop"


def _example() -> Any:
    spec = importlib.util.spec_from_file_location("bookshop_seed", EXAMPLE / "seed.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["bookshop_seed"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def shop(services: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    from lethe import testing
    from lethe.db import migrate

    url = testing.empty_database(services[0], "lethe_init")
    bookshop = _example()
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        bookshop.create_schema(cur)
        bookshop.seed(cur)
    migrate(url)  # Lethe's own schema is there too: the draft must leave it out
    monkeypatch.setenv("LETHE_DATABASE_URL", url)
    yield url
    testing.drop_database(url)


# The review of docs/policy.md (walk-through, "3. Review it"), as edits of the draft's text.
REVIEW = [
    # the shop's kept invoices: pseudonymised, re-pointed to a placeholder customer, recipient details kept by law
    (
        "  key: customer_id\n",
        '  key: customer_id\n  placeholder: "00000000-0000-0000-0000-000000000000"\n',
    ),
    (
        re.compile(r"(  billing\.invoices:\n(?:    .*\n|      .*\n)*?)    erasure: \{action: delete\}.*\n"),
        r"\1    erasure:\n"
        r"      action: pseudonymise\n"
        r"      columns: {customer_id: placeholder}\n"
        r"      keep: {billed_name: VAT invoice, billed_address: VAT invoice, vat_number: VAT invoice,"
        r" amount_cents: tax record}\n"
        r"      retained_because: Invoices are kept for seven years.\n",
    ),
]


def review(text: str) -> str:
    for old, new in REVIEW:
        if isinstance(old, str):
            assert old in text, old
            text = text.replace(old, new, 1)
        else:
            assert old.search(text), old.pattern
            text = old.sub(new, text, count=1)
    # every retention guess answered (here: a reason per table), then every marker deleted
    text = text.replace('"# REVIEW: give retention rules, or say why it is kept"', '"reviewed: kept while in use"')
    return re.sub(r"  # REVIEW.*$", "", text, flags=re.M)


def test_init_drafts_a_policy_that_passes_the_check_after_review(shop: str, tmp_path: Path) -> None:
    from lethe.cli import main
    from lethe.policy import load_policy
    from lethe.policy.check import schema_problems

    draft = tmp_path / "policy.yaml"
    assert main(["policy", "init", "--subject", "customers", "--out", str(draft)]) == 0
    text = draft.read_text()
    data = yaml.safe_load(text)
    tables = data["tables"]

    # Every table of the shop (partitions and Lethe's schema left out), every column classified.
    with psycopg2.connect(shop) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT CASE WHEN table_schema = 'public' THEN table_name ELSE table_schema || '.' || table_name END,"
            " count(*) FROM information_schema.columns WHERE table_schema IN ('public', 'billing')"
            " AND table_name NOT LIKE 'orders\\_2%%' GROUP BY 1"
        )
        live = dict(cur.fetchall())
    assert {t: len(r["columns"]) for t, r in tables.items()} == live
    # Guesses from names, types and sampled values; links from foreign keys, those on partitions too.
    assert tables["customers"]["columns"].items() >= {"email": "email", "phone": "phone", "full_name": "name"}.items()
    assert tables["sessions"]["columns"]["ip"] == "ip_address" and tables["sessions"]["columns"]["token"] == "cookie"
    assert tables["comments"]["free_text"] == ["body"]
    assert tables["orders"]["subject"] == "customer_id"  # its only foreign keys are on its partitions
    assert tables["billing.invoices"]["subject"] == "customer_id"
    assert tables["addresses"]["subject"] is None and tables["addresses"]["erasure"] == {"action": "delete"}
    assert "erasure" not in tables["products"]  # pointed to by reviews, but no personal data in it
    assert data["subject"]["identifiers"] == {"user_id": "customer_id", "email": "email", "phone": "phone"}
    # Nothing sampled is written into the draft.
    for person in _example().NAMED:
        assert person.email not in text and person.name not in text

    # Unreviewed, the check refuses it: one problem per guess, each at its line.
    markers = [n for n, line in enumerate(text.splitlines(), 1) if "# REVIEW" in line]
    problems = schema_problems(load_policy(draft), shop)
    assert len(problems) == len(markers) > 50
    assert all(p.startswith(f"{draft}:") and "not reviewed" in p for p in problems)

    draft.write_text(review(text))
    assert schema_problems(load_policy(draft), shop) == []
