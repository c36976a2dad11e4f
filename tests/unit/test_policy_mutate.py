"""lethe.policy.mutate without services: which mutants are made, the equivalents file, the verdict."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from lethe.policy import load_policy
from lethe.policy.mutate import Outcome, generate, load_equivalents, report

SCHEMA = {"accounts": {"name": ("text", False), "phone": ("text", True)}, "comments": {"body": ("text", False)}}


def _document() -> dict:
    return yaml.safe_load(Path(load_policy().path or "").read_text())


def test_mutants_cover_every_rule_and_each_is_a_valid_policy(tmp_path: Path) -> None:
    mutants, notes = generate(_document(), SCHEMA)
    ids = {m.id for m in mutants}
    for _, rule in load_policy().rules():
        assert f"remove:{rule.name}" in ids
    assert {"keep-halved:invoices_statutory_period", "keep-doubled:old_communications"} <= ids
    assert {"unmask:closed_account_details:name", "action:closed_account_details:anonymise->delete"} <= ids
    assert "action:comments_of_closed_accounts:delete->anonymise" in ids  # body is text: redacted
    assert "holds-ignored:accounts" in ids
    assert "keep-halved:expired_cookies: P0D halved is P0D: no mutant" in notes
    halved = next(m for m in mutants if m.id == "keep-halved:invoices_statutory_period")
    assert halved.document is not None
    assert halved.document["tables"]["invoices"]["retention"][0]["keep"] == "P1460D"
    kinds = {m.id.split(":")[0]: m for m in mutants if m.document is not None}  # one of each kind
    assert set(kinds) == {
        "remove",
        "keep-halved",
        "keep-doubled",
        "action",
        "unmask",
        "consent-ignored",
        "starts-at-the-date",
        "also-after-ignored",
    }
    ignored = kinds["consent-ignored"].document
    assert ignored is not None
    assert not any(
        "unless_consent" in r
        for t in ignored["tables"].values()
        for r in t.get("retention") or []
        if r["name"] == kinds["consent-ignored"].id.split(":")[1]
    )
    for m in kinds.values():
        path = tmp_path / "m.yaml"
        path.write_text(yaml.safe_dump(m.document, sort_keys=False))
        load_policy(path)  # a mutant still loads: only the clause tests can catch it
    alone = next(m for m in mutants if m.id == "remove:invoices_statutory_period")
    assert alone.document is not None  # a table's only rule removed: the table is then kept indefinitely
    assert alone.document["tables"]["invoices"]["retain_indefinitely"].startswith("mutant:")


def test_survivors_fail_unless_equivalent_and_stale_equivalents_fail(tmp_path: Path) -> None:
    mutants, _ = generate(_document(), SCHEMA)
    a, b, c = mutants[:3]
    listed = tmp_path / "eq.txt"
    listed.write_text(f"# comment\n{b.id}  no test can tell\nremove:no_such_rule  gone\n")
    equivalents = load_equivalents(listed)
    lines, problems = report([Outcome(a, False, ""), Outcome(b, False, ""), Outcome(c, True, "f: x")], equivalents, [])
    assert lines[0].startswith("mutation score: 1/2 killed (50.0%); 1 equivalent, 1 survived, 3 mutants")
    assert problems == [
        f"surviving mutant {a.id}: {a.description}",
        "equivalent_mutants.txt lists remove:no_such_rule, which is no mutant of this policy",
    ]
    listed.write_text(f"{a.id}\n")
    with pytest.raises(ValueError, match=r"eq\.txt:1: give the mutant id, then a one-line reason"):
        load_equivalents(listed)
