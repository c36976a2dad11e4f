"""Erasure pieces that need no services: identifier rules, graph order, mention matching, certificate page."""

from __future__ import annotations

import pytest
from lethe.erasure import certificate, discovery, form, request
from lethe.erasure.discovery import ErasureGraphError, ForeignKey


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("email", "asha.rao@example.com"),
        ("phone", "+91 90000 00001"),
        ("username", "asha_rao"),
        ("user_id", "42"),
        ("user_id", "9223372036854775807"),  # the largest bigint: 19 digits
        ("user_id", "0ca70000-0000-4000-8000-00000000000c"),  # a uuid key (examples/bookshop)
    ],
)
def test_valid_identifiers_pass(kind: str, value: str) -> None:
    assert request.validate_identifier(kind, f"  {value} ") == value


@pytest.mark.parametrize(
    ("kind", "value", "rule"),
    [
        ("email", "x' OR 1=1; --", "name@example.com"),
        ("email", "asha.rao@example", "name@example.com"),
        ("phone", "asha.rao@example.com", "digits"),
        ("user_id", "1; DROP TABLE accounts", "digits"),
        ("user_id", "9223372036854775808", "at most 9223372036854775807"),  # one past bigint
        ("user_id", "12345678901234567890", "1 to 19 digits"),
        ("user_id", "0ca70000-0000-4000-8000-00000000000", "or a UUID"),  # one hex digit short
        ("username", "-x!", "2 to 64"),
        ("passport", "X1", "identifier_kind must be one of"),
    ],
)
def test_malformed_identifiers_get_a_plain_message_without_the_value(kind: str, value: str, rule: str) -> None:
    with pytest.raises(request.InvalidIdentifier, match=rule) as caught:
        request.validate_identifier(kind, value)
    assert value not in str(caught.value)


def test_form_pattern_accepts_every_kind_and_refuses_injection() -> None:
    import re

    for value in ("asha.rao@example.com", "+91 9000000001", "asha_rao", "42"):
        assert re.match(form.FORM_PATTERN, value)
    assert not re.match(form.FORM_PATTERN, "x' OR 1=1; --")


def fk(child: str, parent: str) -> ForeignKey:
    return ForeignKey(child, ("parent_id",), parent, ("id",), name=f"{child}_fk")


def test_order_is_parents_first_and_a_cycle_is_reported_not_guessed() -> None:
    order = discovery._parents_first(
        {"accounts", "invoices", "payments"}, [fk("payments", "invoices"), fk("invoices", "accounts")]
    )
    assert order == ["accounts", "invoices", "payments"]
    with pytest.raises(ErasureGraphError, match="cycle among a, b"):
        discovery._parents_first({"accounts", "a", "b"}, [fk("a", "b"), fk("b", "a"), fk("a", "accounts")])


def test_mentions_match_whole_identifiers_only() -> None:
    person = discovery.Subject(1, {"email": "asha.rao@example.com", "phone": "+91 9000000001", "username": "ali"})
    terms = person.search_terms()
    assert discovery.redact("mail ASHA.RAO@example.com.", terms) == "mail [erased]."
    assert discovery.redact("mail asha.rao@example.community", terms) == "mail asha.rao@example.community"
    assert discovery.redact("alibaba ali said", terms) == "alibaba [erased] said"
    assert discovery.redact("thanks @ali, not x@ali.example", terms) == "thanks @[erased], not x@ali.example"
    assert discovery.redact("call +919000000001 or 9000000001", terms) == "call [erased] or [erased]"


def test_markdown_is_rendered_from_the_json_and_shows_backup_status() -> None:
    cert = certificate.build(
        {
            "request_id": "r-1",
            "kind": "email",
            "subject_pseudonym": "abc",
            "detail": {
                "outcome": "erased",
                "tables": {
                    "comments": {"action": "delete", "rows": 2},
                    "invoices": {
                        "action": "pseudonymise",
                        "rows": 1,
                        "legal_basis": "legal_obligation",
                        "retained_because": "tax",
                    },
                },
                "checks": {"residue": {"success": True}},
            },
        },
        "v1",
    )
    assert cert["backup_propagation"] == {"us-east-1": {"status": "pending"}, "ap-southeast-1": {"status": "pending"}}
    cert["backup_propagation"]["us-east-1"] = {"status": "applied", "snapshots": 3}
    page = certificate.render_markdown(cert)
    assert "| comments | delete | 2 |" in page
    assert "| invoices | pseudonymise | 1 | legal_obligation | tax |" in page
    assert "| us-east-1 | applied | snapshots: 3 |" in page
    assert "- residue: passed" in page
