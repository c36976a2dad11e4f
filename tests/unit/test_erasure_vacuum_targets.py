"""What an erase run vacuums after its commits: what each erasure recorded as written, else what it changed."""

from __future__ import annotations

from lethe.erasure import vacuum


def test_recorded_relations_replace_the_tables_an_erasure_changed() -> None:
    recorded = {
        "tables": {"usage_events": {"action": "deleted", "rows": 3}, "accounts": {"action": "deleted", "rows": 1}},
        "vacuum": ["public.accounts", "public.usage_events_2025_03"],
    }
    assert vacuum.targets([recorded]) == ["public.accounts", "public.usage_events_2025_03"]


def test_a_detail_without_the_record_vacuums_every_table_it_changed_whole() -> None:
    older = {
        "tables": {"visitor_logs": {"action": "pseudonymised"}, "legal_holds": {"action": "held"}},
        "redactions": {"comments.body": 1},
        "residue": {"masked:sessions.ip_address": 1, "kept:invoices.billing_name": 1},
    }
    recorded = {"tables": {"accounts": {"action": "deleted"}}, "vacuum": ["public.accounts"]}
    assert vacuum.targets([older, recorded]) == ["comments", "public.accounts", "sessions", "visitor_logs"]


def test_an_erasure_that_wrote_nothing_vacuums_nothing() -> None:
    assert vacuum.targets([{"tables": {"accounts": {"action": "deleted", "rows": 0}}, "vacuum": []}]) == []


def test_tables_in_other_schemas_are_vacuumed_by_their_whole_name() -> None:
    """Found from outside: the sweep masked a row of crm.leads, and `crm` (no table) was all the vacuum got, so the
    dead tuple kept the person's e-mail in the pages."""
    detail = {
        "tables": {"billing.invoices": {"action": "pseudonymised"}},
        "redactions": {"support.tickets.body": 1},
        "residue": {"masked:crm.leads.email": 1, "deleted:visitor_logs.url": 1, "kept:billing.invoices.name": 1},
    }
    assert vacuum.touched([detail]) == ["billing.invoices", "crm.leads", "support.tickets", "visitor_logs"]
