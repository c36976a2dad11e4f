"""Clause tests: the `clause` marker, and the mutation score in the terminal summary."""

from __future__ import annotations

import pytest
from clause_harness import MUTATION_REPORT


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "clause(id, words): the privacy-policy clause a test pins, in its own words")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if MUTATION_REPORT:
        terminalreporter.section("policy mutation testing")
        for line in MUTATION_REPORT:
            terminalreporter.write_line(line)
