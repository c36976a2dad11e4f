"""The audit's cut-link rows (counted with the pseudonym key, outside GX) join their rule's expired_rows check."""

from __future__ import annotations

from lethe.audit.primary import add_cut_link_rows
from lethe.quality import CheckResult


def checks() -> CheckResult:
    return CheckResult(
        suite="retention",
        success=True,
        checks=[
            {"name": "stale.a", "success": True, "observed": 0},
            {"name": "expired_rows.a", "success": True, "observed": 0},
            {"name": "expired_rows.b", "success": True, "observed": 0},
            {"name": "expired_rows.c", "success": True, "observed": 0},
        ],
    )


def test_cut_link_rows_are_added_to_their_rules_check_and_fail_it() -> None:
    result = checks()
    add_cut_link_rows(result, {"a": 2, "b": 0})
    by_name = {c["name"]: c for c in result.checks}
    assert (by_name["expired_rows.a"]["success"], by_name["expired_rows.a"]["observed"]) == (False, 2)
    assert by_name["expired_rows.a"]["cut_link_rows"] == 2
    assert (by_name["expired_rows.b"]["success"], by_name["expired_rows.b"]["observed"]) == (True, 0)
    assert "cut_link_rows" not in by_name["expired_rows.c"]  # no event clock on a cut table: not counted
    assert by_name["stale.a"] == {"name": "stale.a", "success": True, "observed": 0}
    assert not result.success and result.failed == ["expired_rows.a"]


def test_a_cut_link_query_that_failed_fails_its_check() -> None:
    result = checks()
    add_cut_link_rows(result, {"b": None})
    assert result.failed == ["expired_rows.b"]
    assert result.checks[2]["error"] == "the check's query failed: see the task log"
