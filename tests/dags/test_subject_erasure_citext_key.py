"""The real subject_erasure DAG (dag.test()) on a shop keyed by `email citext`, her key spelt in other cases.

The schema, seed and policy are tests/integration/test_erasure_citext_key.py's. The request names her as one
of her orders spells her; the run ends certified, and this test's own SQL finds none of her rows, her invoices
on the placeholder, Bob whole, one tombstone (the pseudonym of her key as her customer row stores it), and her
address nowhere in Lethe's schema (the request closed: its identifier gone too) nor in what the
tasks logged (dag.test() runs them in this process) or a log file under AIRFLOW_HOME.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import own_schema
import pytest

pytestmark = pytest.mark.dags

_spec = importlib.util.spec_from_file_location(
    "citext_shop", Path(__file__).resolve().parents[1] / "integration" / "test_erasure_citext_key.py"
)
assert _spec and _spec.loader
shop_module = importlib.util.module_from_spec(_spec)
sys.modules["citext_shop"] = shop_module
_spec.loader.exec_module(shop_module)

# Her address as the request types it. A name, not a literal in the call: a traceback printed while the DAG runs
# (logging's "--- Logging error ---" when an earlier test's handler holds a closed stream) quotes the test's own
# source line, which is not something Lethe said
TYPED = "ANNA@EXAMPLE.COM"


@pytest.fixture
def shop(services: tuple[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    from lethe import testing

    url = own_schema.database(
        services[0],
        monkeypatch,
        tmp_path,
        "lethe_citext_dag",
        shop_module.SCHEMA + shop_module.SEED,
        shop_module.POLICY,
    )
    yield url
    testing.drop_database(url)


def test_the_dag_erases_a_citext_keyed_person_named_in_another_case(
    shop: str, s3_endpoint: str, airflow_home: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from lethe.dagrun import run_dag
    from lethe.db import migrate

    q: Any = shop_module.q
    migrate(shop)
    started = time.time()
    run_dag("subject_erasure", {"identifier_kind": "email", "identifier": TYPED, "dry_run": False})

    assert q(shop, "SELECT status FROM lethe.erasure_requests") == [("certified",)]
    assert q(shop, "SELECT email::text, full_name FROM customers ORDER BY 1") == [
        ("bob@example.org", "Bob Berg"),
        (shop_module.PLACEHOLDER, None),
    ]
    assert q(shop, "SELECT order_id, customer::text FROM orders") == [(4, "Bob@Example.org")]
    assert q(shop, "SELECT invoice_no, customer::text, amount FROM invoices ORDER BY 1") == [
        (10, shop_module.PLACEHOLDER, 500),
        (11, shop_module.PLACEHOLDER, 700),
        (12, "BOB@example.org", 900),
    ]
    key = json.loads(os.environ["AIRFLOW_CONN_LETHE_PSEUDONYM_KEY"])["password"].encode()
    expected = hmac.new(key, f"user_id:{shop_module.ANNA}".encode(), hashlib.sha256).hexdigest()
    assert q(shop, "SELECT subject_pseudonym FROM lethe.erasure_tombstones") == [(expected,)]
    assert q(shop, "SELECT DISTINCT subject_pseudonym FROM lethe.kept_pseudonyms") == [(expected,)]

    assert q(shop, "SELECT count(*) FROM lethe.erasure_requests WHERE identifier IS NOT NULL") == [(0,)]
    assert "anna@example" not in shop_module.lethe_text(shop).lower()
    logged = [
        p
        for p in (airflow_home / "logs").rglob("*")
        if p.is_file() and p.stat().st_mtime >= started and "anna@example" in p.read_text(errors="replace").lower()
    ]
    assert not logged, logged
    # what the tasks logged (dag.test() runs them in this process; at the tests' level, WARNING: a failure's record
    # would be here; tests/integration/test_erasure_citext_key.py reads Lethe's records down to DEBUG)
    out, err = capfd.readouterr()
    said = [line for line in (out + err).splitlines() if "anna@example" in line.lower()]
    assert not said, said
