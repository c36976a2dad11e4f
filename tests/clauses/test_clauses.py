"""Every enforceable clause, pinned by literal facts after the real nightly purge.

All facts are planted into one fresh database (each with its own SQL and its own people), the
whole retention purge runs as retention_nightly runs it (lethe.retention's plan and executor,
every rule, stage by stage, as of clause_harness.NOW), then each fact reads the result with its
own SQL. Expectations are literal, never computed from the policy file.
"""

from __future__ import annotations

from collections.abc import Iterator

import clause_facts  # noqa: F401  (declares the facts)
import pytest
from clause_harness import FACTS, Check, check_all, plant_all, purge
from lethe import testing

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def purged(services: tuple[str, str]) -> Iterator[tuple[str, dict[str, Check]]]:
    url = testing.fresh_database(services[0])
    try:
        checks = plant_all(url, list(FACTS.values()))
        purge(url, None)  # the policy file of LETHE_POLICY_FILE, else the shipped one
        yield url, checks
    finally:
        testing.drop_database(url)


@pytest.mark.parametrize(
    "name",
    [pytest.param(name, marks=pytest.mark.clause(f.clause, f.quote), id=name) for name, f in FACTS.items()],
)
def test_clause(purged: tuple[str, dict[str, Check]], name: str) -> None:
    url, checks = purged
    failed = check_all(url, {name: checks[name]})
    assert not failed, failed[name]
