"""Mentions of erased people in other people's free text, found in backups without their raw identifiers.

On the primary, subject_erasure redacts a person's email, username and phone
wherever other people's free text names them, while it still knows the raw
values. After that only the tombstone's keyed pseudonyms of those identifiers
remain. To find the same mentions in a backup, every spelling in a text that
could be an identifier is pseudonymised with the same key and looked up among
the tombstones' identifier pseudonyms; a hit is replaced as the primary does.

What this cannot find: a spelling the primary would also match but that is not a
whole identifier (for example the local part of a phone number without its
country code), because a keyed pseudonym only matches the whole, normalised
value. Those leave the backups with snapshot expiry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pyarrow as pa

from lethe.pseudonym import pseudonym

REPLACEMENT = "[erased]"  # what the primary's redaction writes

# Candidate spellings, longest kinds first: an email contains words, a phone contains digits.
_CANDIDATES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("email", re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")),
    ("phone", re.compile(r"(?<![\w+])\+?\d[\d ().-]{5,}\d(?!\w)")),
    # a handle's @ is fine (@name), an email's is not (the domain of local@domain)
    (
        "username",
        re.compile(
            r"(?<![A-Za-z0-9._%+-])(?<![A-Za-z0-9._%+-]@)[A-Za-z0-9_-](?:[A-Za-z0-9._-]*[A-Za-z0-9_-])?(?![A-Za-z0-9_@-])"
        ),
    ),
)


@dataclass
class MentionFinder:
    """Redacts, in text, every whole identifier whose keyed pseudonym is one of `identifier_pseudonyms`."""

    key: bytes
    identifier_pseudonyms: frozenset[str]
    _seen: dict[tuple[str, str], bool] = field(default_factory=dict, init=False)  # one HMAC per distinct spelling

    def _erased(self, kind: str, spelling: str) -> bool:
        found = self._seen.get((kind, spelling))
        if found is None:
            found = self._seen[(kind, spelling)] = pseudonym(self.key, kind, spelling) in self.identifier_pseudonyms
        return found

    def redact(self, text: str) -> tuple[str, int]:
        """(text with every erased identifier replaced, how many were replaced)."""
        spans: list[tuple[int, int]] = []
        for kind, pattern in _CANDIDATES:
            for match in pattern.finditer(text):
                start, end = match.span()
                if any(s < end and start < e for s, e in spans):
                    continue  # inside a longer spelling already redacted
                spelling = match.group(0)
                variants = [spelling, "+" + spelling] if kind == "phone" and "+" not in spelling else [spelling]
                if any(self._erased(kind, v) for v in variants):  # a phone may be written without its +
                    spans.append((start, end))
        for start, end in sorted(spans, reverse=True):
            text = text[:start] + REPLACEMENT + text[end:]
        return text, len(spans)

    def redact_columns(self, frame: pa.Table, columns: list[str]) -> tuple[pa.Table, int]:
        """Redact the named text columns of a frame; (new frame, mentions replaced)."""
        total = 0
        if not self.identifier_pseudonyms:
            return frame, 0
        for name in columns:
            if name not in frame.column_names:
                continue
            values = frame.column(name).to_pylist()
            changed = False
            for i, value in enumerate(values):
                if not value:
                    continue
                new, hits = self.redact(value)
                if hits:
                    values[i], changed, total = new, True, total + hits
            if changed:
                index = frame.column_names.index(name)
                frame = frame.set_column(index, name, pa.array(values, frame.schema.field(name).type))
        return frame, total
