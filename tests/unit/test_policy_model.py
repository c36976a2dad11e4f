"""The policy file loads, and each kind of mistake is reported with file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest
from lethe.config import DEFAULT_POLICY_FILE
from lethe.policy import PolicyError, load_policy

SHIPPED = DEFAULT_POLICY_FILE.read_text()


def broken(tmp_path: Path, old: str, new: str) -> Path:
    assert old in SHIPPED, f"fixture text not in the shipped policy: {old!r}"
    path = tmp_path / "policy.yaml"
    path.write_text(SHIPPED.replace(old, new, 1))
    return path


def line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def test_shipped_policy_covers_every_purpose_and_basis() -> None:
    policy = load_policy()
    assert {t.purpose for t in policy.tables.values()} >= {
        "services",
        "usage",
        "security",
        "marketing",
        "evidence",
        "legal",
    }
    assert {t.legal_basis for t in policy.tables.values()} == {
        "contract",
        "legitimate_interest",
        "consent",
        "legal_obligation",
    }
    table, rule = policy.rule("raw_usage_events")
    assert table == "usage_events" and rule.action == "drop_partitions" and rule.keep.to_timedelta().days == 90


def test_invalid_duration_is_located(tmp_path: Path) -> None:
    path = broken(tmp_path, "{name: expired_cookies, keep: P0D", "{name: expired_cookies, keep: 30 days")
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    (problem,) = err.value.problems
    assert problem.startswith(f"{path}:{line_of(path, 'expired_cookies')}: tables.sessions.retention.0.keep:")
    assert "not an ISO-8601 duration" in problem


def test_missing_retention_is_located(tmp_path: Path) -> None:
    path = broken(
        tmp_path,
        "    retention:\n"
        "      - {name: ssh_keys_of_closed_accounts, keep: P0D, after: account_closed, action: delete}\n",
        "",
    )
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    (problem,) = err.value.problems
    assert problem.startswith(f"{path}:{line_of(path, '  ssh_keys:')}: tables.ssh_keys:")
    assert "missing retention" in problem


def test_rule_on_unlisted_column_is_located(tmp_path: Path) -> None:
    path = broken(tmp_path, "keep: P3Y, after: ended_at", "keep: P3Y, after: cancelled_at")
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    assert "column 'cancelled_at' is used but not listed under `columns`" in str(err.value)
    assert f"{path}:{line_of(path, '  subscriptions:')}: tables.subscriptions" in str(err.value)


def test_unknown_action_and_category_are_located(tmp_path: Path) -> None:
    path = broken(tmp_path, "public_key: ssh_key", "public_key: secret_sauce")
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    assert f"{path}:{line_of(path, 'secret_sauce')}: tables.ssh_keys.columns.public_key:" in str(err.value)


def test_not_yaml_is_located(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\ntables: [unclosed\n")
    with pytest.raises(PolicyError, match=rf"^{path}:\d+: not valid YAML"):
        load_policy(path)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read the policy file"):
        load_policy(tmp_path / "nope.yaml")


def test_traceability_report_names_existing_tests_and_every_rule() -> None:
    from lethe.policy.report import render

    policy = load_policy()
    report = render(policy)
    assert "[MISSING]" not in report
    for table, rule in policy.rules():
        assert f"{table}.{rule.name}: keep {rule.keep} {rule.clock}, then {rule.action}" in report
        assert rule.clock.startswith(f"after {rule.after}") or rule.clock.startswith(
            f"after the latest of {rule.after}"
        )
    assert "law:   CGST Act 2017, s. 36" in report
    for purpose in ("updates", "third_party", "analytics", "security", "marketing", "quotes"):
        assert f"- {purpose} (" in report  # every objection is answered in the report


def _policy_with(tmp_path: Path, change) -> Path:  # type: ignore[no-untyped-def]
    import yaml

    document = yaml.safe_load(Path(load_policy().path or "").read_text())
    change(document)
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def test_objections_must_answer_every_purpose_and_do_something(tmp_path: Path) -> None:
    def drop_security(d: dict) -> None:  # type: ignore[type-arg]
        del d["objections"]["security"]

    with pytest.raises(PolicyError, match="say what an objection to security does"):
        load_policy(_policy_with(tmp_path, drop_security))

    def empty_updates(d: dict) -> None:  # type: ignore[type-arg]
        d["objections"]["updates"]["kept"] = {}

    with pytest.raises(PolicyError, match=r"objections\.updates: no rule counts from consent_ended:updates"):
        load_policy(_policy_with(tmp_path, empty_updates))


def test_statutory_clocks_cite_their_law_and_consent_needs_a_row_clock(tmp_path: Path) -> None:
    def no_law(d: dict) -> None:  # type: ignore[type-arg]
        del d["tables"]["invoices"]["retention"][0]["law"]

    with pytest.raises(PolicyError, match="must cite its `law`"):
        load_policy(_policy_with(tmp_path, no_law))

    def consent_on_event(d: dict) -> None:  # type: ignore[type-arg]
        d["tables"]["marketing_contacts"]["retention"][0]["unless_consent"] = "marketing"

    with pytest.raises(PolicyError, match="`unless_consent` needs a clock on a column of the row"):
        load_policy(_policy_with(tmp_path, consent_on_event))

    def unknown_purpose(d: dict) -> None:  # type: ignore[type-arg]
        d["tables"]["usage_events"]["retention"][2]["unless_consent"] = "newsletters"

    with pytest.raises(PolicyError, match="unknown consent purpose 'newsletters'"):
        load_policy(_policy_with(tmp_path, unknown_purpose))


def test_processors_are_declared_and_their_mistakes_located(tmp_path: Path) -> None:
    processors = load_policy().processors
    assert set(processors) == {"amazon_ses", "mixpanel", "mailchimp"}
    assert processors["amazon_ses"].regions == ["us-east-1", "ap-southeast-1"]
    assert [n for n, p in processors.items() if "marketing" in p.on_objection] == ["mailchimp"]

    path = broken(tmp_path, "    connector: aws_sesv2\n", "    connector: aws_sesv2\n    http: {method: POST}\n")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert "processors.amazon_ses" in str(caught.value)
    path = broken(tmp_path, "      success_statuses: [204, 404]", "      success_statuses: []\n      oops: 1")
    with pytest.raises(PolicyError, match=r"processors\.mailchimp\.http\.oops"):
        load_policy(path)


def test_kept_column_that_is_also_masked_or_unknown_is_located(tmp_path: Path) -> None:
    path = broken(
        tmp_path, '        method: "How the payment', '        card_last4: "x"\n        method: "How the payment'
    )
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    assert "columns both masked and kept: card_last4" in str(err.value)
    path = broken(
        tmp_path, '        method: "How the payment', '        no_such: "x"\n        method: "How the payment'
    )
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    assert "column 'no_such' is used but not listed under `columns`" in str(err.value)


def test_a_policy_with_phones_says_how_its_national_numbers_read(tmp_path: Path) -> None:
    from lethe import residue

    region = "  phone_region: IN  # re:Skill's members: a number without a country code is Indian\n"
    path = broken(tmp_path, region, "")
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    assert "subject.phone_region: the policy holds phone numbers (tables.accounts.phone" in str(err.value)
    subject = next(i for i, line in enumerate(path.read_text().splitlines(), 1) if line.startswith("subject:"))
    assert f"policy.yaml:{subject}: subject.phone_region:" in str(err.value)  # the line of the section it belongs to
    with pytest.raises(PolicyError, match=r"subject\.phone_region: unknown phone region 'UK'"):
        load_policy(broken(tmp_path, region, "  phone_region: UK\n"))

    # The same national number is a British one under GB and an Indian one under IN: a UK platform's request
    # for 07700 900123 must find +44 7700 900123.
    try:
        load_policy(broken(tmp_path, region, "  phone_region: GB\n"))
        assert residue.normalise("phone", "07700 900123") == "+447700900123"
        assert residue.normalise("phone", "+91 98765 43210") == "+919876543210"  # a country code wins
        load_policy()
        assert residue.normalise("phone", "07700 900123") == "+917700900123"
        assert residue.normalise("phone", "098765 43210") == "+919876543210"
    finally:
        load_policy()  # the shipped policy's reading for the tests after this one


def test_a_numeric_placeholder_key_may_be_written_unquoted(tmp_path: Path) -> None:
    """Found from outside: `placeholder: 0` for a bigint key was refused as "Input should be a valid string"."""
    path = broken(tmp_path, "  phone_region: IN", "  phone_region: IN\n  placeholder: 0")
    assert load_policy(path).subject.placeholder == "0"
