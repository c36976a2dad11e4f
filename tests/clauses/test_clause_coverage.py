"""The clause tests cover the policy file: a rule without a clause test fails CI.

No services: reads the policy file (LETHE_POLICY_FILE or the shipped one), the facts' declarations
and the published privacy policy text.
"""

from __future__ import annotations

import re
from pathlib import Path

import clause_facts  # noqa: F401  (declares the facts)
from clause_harness import FACTS
from lethe.policy import load_policy
from policy_clauses import CLAUSES

POLICY_TEXT = Path(__file__).with_name("privacy-policy.txt")


def _words(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def test_every_retention_rule_has_a_clause_test() -> None:
    pinned = {rule for f in FACTS.values() for rule in f.rules}
    missing = [f"{table}.{rule.name}" for table, rule in load_policy().rules() if rule.name not in pinned]
    assert not missing, (
        "retention rules without a clause test (add a fact in tests/clauses/clause_facts.py whose expectations"
        f" are written from the clause): {', '.join(missing)}"
    )


def test_clause_tests_pin_rules_of_the_policy_on_their_table() -> None:
    rules = {rule.name: table for table, rule in load_policy().rules()}
    wrong = [
        f"{f.name} pins {rule} on {f.table}, but the policy has it on {rules.get(rule, 'no table')}"
        for f in FACTS.values()
        for rule in f.rules
        if rules.get(rule) != f.table
    ]
    assert not wrong, "\n".join(wrong)


def test_every_table_with_rules_for_people_has_a_legal_hold_test() -> None:
    policy = load_policy()
    held = {f.table for f in FACTS.values() if f.clause == "litigation" and not f.rules}
    missing = [t for t, spec in policy.tables.items() if spec.subject and spec.retention and t not in held]
    assert not missing, f"tables without a legal-hold clause test (HELD_ROWS in clause_facts.py): {missing}"


def test_clauses_are_quoted_verbatim_from_the_privacy_policy() -> None:
    text = _words(POLICY_TEXT.read_text())
    misquoted = [cid for cid, (_, quote) in CLAUSES.items() if _words(quote) not in text]
    assert not misquoted, f"clauses not quoted word for word from {POLICY_TEXT.name}: {misquoted}"
    unused = set(CLAUSES) - {f.clause for f in FACTS.values()}
    assert not unused, f"clauses no test pins: {sorted(unused)}"


def test_report_traces_clause_to_rule_dag_test_and_assertion(tmp_path: Path) -> None:
    import yaml
    from lethe.policy.report import render

    text = render(load_policy())
    for f in FACTS.values():
        assert f"tests/clauses/test_clauses.py::test_clause[{f.name}]" in text
        assert f"asserts: {f.says}" in text
    assert "[NO CLAUSE TEST]" not in text and "[NOT IN THE POLICY FILE]" not in text

    document = yaml.safe_load(Path(load_policy().path or "").read_text())
    document["tables"]["comments"]["retention"].append(
        {"name": "old_comments", "keep": "P5Y", "after": "created_at", "action": "delete"}
    )
    document["tables"]["invoices"]["retention"] = []
    document["tables"]["invoices"]["retain_indefinitely"] = "test"
    changed = tmp_path / "policy.yaml"
    changed.write_text(yaml.safe_dump(document, sort_keys=False))
    text = render(load_policy(changed))
    assert "- comments.old_comments: [NO CLAUSE TEST]" in text
    assert "rule:  invoices_statutory_period   [NOT IN THE POLICY FILE]" in text


def test_docs_clause_table_names_every_rule_and_clause_test() -> None:
    """docs/policy.md's clause-by-clause table: each rule of the policy and each clause test is in it."""
    docs = Path(__file__).parents[2] / "docs" / "policy.md"
    text = docs.read_text()
    table = text[text.index("## Clause by clause") :]
    named = set(re.findall(r"`([a-z][a-z0-9_]*(?:<table>)?)`", table))
    missing = [rule.name for _, rule in load_policy().rules() if rule.name not in named]
    missing += [f.name for f in FACTS.values() if f.name not in named and not f.name.startswith("legal_hold_keeps_")]
    assert "legal_hold_keeps_<table>" in named
    assert not missing, f"{docs.name}, 'Clause by clause': rules and clause tests missing: {missing}"
