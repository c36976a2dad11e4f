"""Mentions of erased people in backups' free text, recognised by keyed pseudonyms alone."""

from __future__ import annotations

import pyarrow as pa
import pytest
from lethe.backup.mentions import MentionFinder
from lethe.pseudonym import pseudonym

KEY = b"mention-key"
ERASED = {"email": "Asha.K@example.test", "username": "asha_k", "phone": "+91 98765 43210"}


def finder() -> MentionFinder:
    return MentionFinder(KEY, frozenset(pseudonym(KEY, kind, value) for kind, value in ERASED.items()))


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("write to asha.k@example.test.", "write to [erased]."),
        ("cc ASHA.K@EXAMPLE.TEST, thanks", "cc [erased], thanks"),
        ("@asha_k said so (asha_k)", "@[erased] said so ([erased])"),
        ("call +91 98765 43210 or +919876543210", "call [erased] or [erased]"),
        ("or 919876543210 without the plus", "or [erased] without the plus"),
        # the same number without country code, with the trunk zero, grouped differently (issue 14)
        ("9876543210, 098765 43210 or 98765-43210", "[erased], [erased] or [erased]"),
    ],
)
def test_every_spelling_of_an_erased_identifier_is_redacted(text: str, want: str) -> None:
    assert finder().redact(text) == (want, want.count("[erased]"))


@pytest.mark.parametrize(
    "text",
    [
        "asha_kumar and xasha_k are other people",
        "asha.k@example.org is someone else; so is basha.k@example.test",
        "",
    ],
)
def test_other_people_and_partial_spellings_are_left_alone(text: str) -> None:
    assert finder().redact(text) == (text, 0)


def test_only_the_named_text_columns_change() -> None:
    frame = pa.table({"id": [1, 2, 3], "body": ["hi asha_k", None, "hello"], "title": ["asha_k", "x", "y"]})
    out, hits = finder().redact_columns(frame, ["body"])
    assert hits == 1
    assert out.column("body").to_pylist() == ["hi [erased]", None, "hello"]
    assert out.column("title").to_pylist() == ["asha_k", "x", "y"]
    assert MentionFinder(KEY, frozenset()).redact_columns(frame, ["body"]) == (frame, 0)
