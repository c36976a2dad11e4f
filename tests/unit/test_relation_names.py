"""A policy's table name, `table` or `schema.table`, read the same way by every reader of it: split at the last
dot (a schema's name may hold one), each part quoted with its `"` doubled. relation() split at the first dot and
audit.suites at the first dot too, while the catalogue look-ups (regclass_literal) split at the last."""

from __future__ import annotations

import pytest
from lethe import relations
from lethe.audit import suites

NAMES = {
    "accounts": (None, "accounts", '"accounts"'),
    "Shop.Kunden": ("Shop", "Kunden", '"Shop"."Kunden"'),
    "Buch.Haltung.Rechnungen": ("Buch.Haltung", "Rechnungen", '"Buch.Haltung"."Rechnungen"'),
    'Fi"nanz.Rech"nungen': ('Fi"nanz', 'Rech"nungen', '"Fi""nanz"."Rech""nungen"'),
}


@pytest.mark.parametrize("name", sorted(NAMES))
def test_every_reader_splits_a_policy_name_alike(name: str) -> None:
    schema, table, quoted = NAMES[name]
    assert relations.split(name) == (schema, table)
    assert relations.regclass_literal(name) == quoted
    assert relations.relation(name).strings == tuple(p for p in (schema, table) if p is not None)
    assert suites._rel(name) == quoted
