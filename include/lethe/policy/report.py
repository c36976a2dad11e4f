"""`lethe policy report`: the traceability matrix from the privacy policy to proof.

For each enforceable clause: the policy rules that enforce it (read from the
policy file), the DAG that applies them, and the tests that prove it. A test
file that does not exist is flagged, so the matrix cannot silently overstate.

The retention clauses come from the clause tests themselves (tests/clauses): each
clause in the policy's words, the rule a test pins, the DAG, the test and its
assertion in words. A rule no clause test pins, or a test pinning a rule the
policy lacks, is flagged.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import Any

from lethe.config import PROJECT_DIR
from lethe.policy.model import Policy


@dataclass(frozen=True)
class Clause:
    quote: str
    dag: str
    tests: tuple[str, ...]


CLAUSES = (
    Clause(
        "Data categories ... (every column classified)",
        "(lint) lethe policy check",
        ("tests/integration/test_policy_check.py",),
    ),
    Clause(
        "Generally, the data is retained for as long as we need ... for the purpose",
        "retention_nightly",
        ("tests/dags/test_retention_nightly.py",),
    ),
    Clause(
        "We may also keep the data ... in case of litigation",
        "retention_nightly, subject_erasure",
        ("tests/dags/test_retention_nightly.py", "tests/dags/test_subject_erasure.py"),
    ),
    Clause(
        "You may object to the processing ... for the purposes i) to v)",
        "retention_nightly, usage_sharing",
        ("tests/dags/test_retention_nightly.py", "tests/dags/test_usage_sharing.py"),
    ),
    Clause(
        "Temporary cookies will be removed ... each time you close your browser",
        "retention_nightly",
        ("tests/dags/test_retention_nightly.py",),
    ),
    Clause(
        "you may ask for your data to be removed from our servers",
        "subject_erasure",
        ("tests/dags/test_subject_erasure.py",),
    ),
    Clause(
        "we may keep pseudonyms ... solely for a record about the data removal",
        "subject_erasure",
        ("tests/dags/test_subject_erasure.py",),
    ),
    Clause(
        "keeping and disclosing ... our tax records (clause 7)",
        "subject_erasure",
        ("tests/dags/test_subject_erasure.py",),
    ),
    Clause(
        "we keep backups stored in AWS North Virginia and/or Singapore",
        "backup_nightly, backup_erasure_propagation",
        ("tests/dags/test_backup_dags.py",),
    ),
    Clause(
        "your files and data may remain on our servers even after deletion (a restore never brings them back)",
        "lethe restore",
        ("tests/integration/test_backup.py",),
    ),
    Clause(
        "the contents of your user account will not be disclosed (not even through Airflow's own records)",
        "airflow_metadata_cleanup",
        ("tests/dags/test_airflow_metadata_cleanup.py", "tests/e2e/test_real_scheduler.py"),
    ),
    Clause(
        "we do not associate this data with your name (after a day, usage keeps only a keyed pseudonym)",
        "retention_nightly, subject_erasure, usage_sharing",
        (
            "tests/dags/test_retention_nightly.py",
            "tests/dags/test_subject_erasure.py",
            "tests/dags/test_usage_sharing.py",
        ),
    ),
    Clause(
        "we may share this information in an aggregated anonymous form",
        "usage_sharing",
        ("tests/dags/test_usage_sharing.py",),
    ),
    Clause(
        "Anonymized and aggregated information ... may be made public",
        "usage_sharing",
        ("tests/dags/test_usage_sharing.py",),
    ),
    Clause("All of the above, verified nightly", "compliance_audit", ("tests/dags/test_compliance_audit.py",)),
)


CLAUSE_TESTS = PROJECT_DIR / "tests" / "clauses"
CLAUSE_TEST = "tests/clauses/test_clauses.py::test_clause[{}]"


def clause_facts() -> tuple[dict[str, tuple[str, str]], list[Any]] | None:
    """(clause id -> (section, words), facts) from the clause tests, or None outside a source checkout."""
    if not (CLAUSE_TESTS / "clause_facts.py").exists():
        return None
    if str(CLAUSE_TESTS) not in sys.path:
        sys.path.insert(0, str(CLAUSE_TESTS))
    importlib.import_module("clause_facts")
    facts = importlib.import_module("clause_harness").FACTS
    return importlib.import_module("policy_clauses").CLAUSES, list(facts.values())


def _clause_lines(policy: Policy) -> list[str]:
    found = clause_facts()
    if found is None:
        return ["Clause tests: tests/clauses not found (the report needs a source checkout)"]
    clauses, facts = found
    rules = {rule.name: (table, rule) for table, rule in policy.rules()}
    out = ["Clause tests (clause -> rule -> DAG -> test: what it asserts):"]
    for cid, (section, words) in clauses.items():
        out.append(f'- [{cid}] {section}: "{words}"')
        for f in (f for f in facts if f.clause == cid):
            for name in f.rules or ("(legal holds: lethe.retention honours legal_holds on every rule)",):
                if name in rules:
                    table, rule = rules[name]
                    out.append(f"    rule:  {table}.{name}: keep {rule.keep} {rule.clock}, then {rule.action}")
                    if rule.law:
                        out.append(f"    law:   {' '.join(rule.law.split())}")
                elif f.rules:
                    out.append(f"    rule:  {name}   [NOT IN THE POLICY FILE]")
                else:
                    out.append(f"    rule:  {f.table}: {name}")
            out.append("    DAG:   retention_nightly")
            out.append(f"    test:  {CLAUSE_TEST.format(f.name)}")
            out.append(f"           asserts: {f.says}")
    pinned = {name for f in facts for name in f.rules}
    for table, rule in policy.rules():
        if rule.name not in pinned:
            out.append(f"- {table}.{rule.name}: [NO CLAUSE TEST]")
    return out


def _objection_lines(policy: Policy) -> list[str]:
    """Purposes i) to v): what an objection does, by which rules and processors, and what stays and why."""
    from lethe.objection import purposes

    found = clause_facts()
    facts = found[1] if found else []
    out = ['Objections ("You may object ... for the purposes i) to v) at any time"; lethe objection record):']
    for p in purposes(policy):
        if p["clause"] is None:
            out.append(f"- {p['purpose']}: [NOT ANSWERED IN THE POLICY FILE]")
            continue
        out.append(f"- {p['purpose']} ({p['clause']}): {' '.join(str(p['effect']).split())}")
        for name in p["rules"]:  # type: ignore[attr-defined]
            tests = [CLAUSE_TEST.format(f.name) for f in facts if name.split(".", 1)[1] in f.rules]
            out.append(f"    rule:  {name}   test: {', '.join(tests) or '[NO CLAUSE TEST]'}")
        for name in p["processors"]:  # type: ignore[attr-defined]
            out.append(f"    processor: {name} (asked to delete the person; docs/processors.md)")
        for table, why in p["kept"].items():  # type: ignore[attr-defined]
            out.append(f"    kept:  {table}: {' '.join(why.split())}")
    return out


def render(policy: Policy) -> str:
    out = [f"Traceability matrix: {policy.source}; policy file version {policy.version} ({policy.digest})", ""]
    out += [*_clause_lines(policy), "", *_objection_lines(policy), "", "Other clauses:"]
    for clause in CLAUSES:
        out.append(f'- "{clause.quote}"')
        out.append(f"    DAG:   {clause.dag}")
        for test in clause.tests:
            mark = "" if (PROJECT_DIR / test).exists() else "   [MISSING]"
            out.append(f"    test:  {test}{mark}")
    out += ["", "Rules per purpose (table, rule, keep, clock, action; legal basis):"]
    for purpose_table, rule in policy.tables.items():
        for r in rule.retention:
            out.append(
                f"  [{rule.purpose}] {purpose_table}.{r.name}: keep {r.keep} {r.clock}, then {r.action}"
                f" ({rule.legal_basis})"
            )
        if rule.retain_indefinitely:
            out.append(f"  [{rule.purpose}] {purpose_table}: kept indefinitely: {rule.retain_indefinitely}")
        if rule.erasure:
            why = f" - {rule.erasure.retained_because}" if rule.erasure.retained_because else ""
            out.append(f"  [{rule.purpose}] {purpose_table}: on erasure {rule.erasure.action}{why}")
    return "\n".join(out)
