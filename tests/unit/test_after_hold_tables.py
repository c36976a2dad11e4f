"""The tables an erasure's waiting redactions are finished in after a hold's release, read from the request's
`waiting_for_hold:<table>.<column>` counts. The table was taken as the text before the first dot, so a mention
waiting in `billing.invoices.notes` was looked for in a table `billing`, none was read, and it waited forever."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lethe.erasure import after_hold
from lethe.policy import load_policy

BOOKSHOP = Path(__file__).resolve().parents[2] / "examples" / "bookshop" / "policy.yaml"


@pytest.mark.parametrize(
    ("columns", "tables"),
    [
        (["comments.body"], {"comments"}),
        (["billing.invoices.billed_name", "comments.body"], {"billing.invoices", "comments"}),
    ],
)
def test_a_waiting_mention_is_looked_for_in_its_own_table(
    monkeypatch: pytest.MonkeyPatch, columns: list[str], tables: set[str]
) -> None:
    read: list[set[str] | None] = []

    def sweep(*_: Any, only_tables: set[str] | None = None, **__: Any) -> dict[str, Any]:
        read.append(only_tables)
        return {}

    monkeypatch.setattr(after_hold.sweep, "sweep", sweep)
    row = {"detail": {"residue": {after_hold.WAITING + c: 1 for c in columns}}, "identifiers": []}
    after_hold._finish_one(None, load_policy(BOOKSHOP), b"key", row)  # type: ignore[arg-type]
    assert read == [tables]
