"""Mentions of erased people in other people's free text, found in backups without their raw identifiers.

On the primary, subject_erasure redacts a person wherever the residue scanner
(lethe.residue) finds them, while it still knows the raw values; their tombstone
keeps a keyed pseudonym of every normalised value of their footprint (emails,
phones as E.164, usernames, names, cookies, IPs). Backups use the scanner's own
candidate extraction in keyed mode: every spelling in a text that could be part
of a footprint is normalised the same way, pseudonymised with the same key and
looked up among the tombstones, so a phone written `098765 43210` or a name is
redacted in the backups exactly as on the primary.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pyarrow as pa

from lethe import residue

REPLACEMENT = residue.REPLACEMENT  # what the primary's redaction writes
# Texts remembered with their redaction: at most REDACTED_CACHE of them, each at most CACHED_TEXT chars long
# (about 2 x 32 MB at worst; a long text is matched each time, as 2,000 texts of 50 KB grew memory by 100 MB).
REDACTED_CACHE = 1 << 14
CACHED_TEXT = 2048


@dataclass
class MentionFinder:
    """Redacts, in text, every spelling whose keyed pseudonym is one of `identifier_pseudonyms`."""

    key: bytes
    identifier_pseudonyms: frozenset[str]
    # The tombstones' keyed prefilter terms (residue.Prefilter.keyed_terms); None when one of them has none.
    prefilter_pseudonyms: frozenset[str] | None = None
    _index: residue.KeyedIndex = field(init=False)
    _prefilter: residue.Prefilter | None = field(init=False, default=None)
    _redacted: Callable[[str], tuple[str, int]] = field(init=False)

    def __post_init__(self) -> None:
        self._index = residue.KeyedIndex(self.key, self.identifier_pseudonyms)  # caches one HMAC per spelling
        if self.prefilter_pseudonyms is not None:
            # Most texts hold none of the erased people's words, digits or addresses: they skip matching.
            self._prefilter = residue.Prefilter.keyed(self.key, self.prefilter_pseudonyms)
            self._index.phone_tails = self._prefilter.tails
        # The same text comes back in every snapshot that holds its row: it is matched once.
        self._redacted = functools.lru_cache(maxsize=REDACTED_CACHE)(self._redact)

    def _redact(self, text: str) -> tuple[str, int]:
        if self._prefilter is not None and not self._prefilter.may_hold(text):
            return text, 0
        return residue.redact_text(self._index, text)

    def redact(self, text: str) -> tuple[str, int]:
        """(text with every erased person's spelling replaced, how many were replaced)."""
        return self._redacted(text) if len(text) <= CACHED_TEXT else self._redact(text)

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


def prefilter_of(tombstones: Iterable[tuple[list[str] | None, list[str] | None]]) -> frozenset[str] | None:
    """The prefilter terms of these tombstones, given as (identifier pseudonyms, prefilter pseudonyms) each;
    None when one that left identifiers keeps no terms (written before them): its spellings could be anywhere."""
    terms: set[str] = set()
    for identifiers, prefilter in tombstones:
        if identifiers and prefilter is None:
            return None
        terms.update(prefilter or ())
    return frozenset(terms)
