"""Which erased people an object's free text may mention, told by its manifest entry without reading it.

Propagation and the backup audit find erased people in other people's free text by the keyed
pseudonyms of every spelling a text holds (lethe.backup.mentions, lethe.residue's candidates).
At export, each object of a table with free text gets a Bloom filter of exactly those keyed
terms: every candidate `residue.candidates` finds in its searched columns, as `residue.keyed`
pseudonymises it. An object whose filter holds none of a batch's identifier pseudonyms cannot
mention any of them and is not read. The filter holds HMACs only: without the pseudonym key it
tells nothing about anyone, and the manifest keeps holding no personal data.

Sizing: a batch asks one question per identifier pseudonym (about 3 to 10 per person, so
thousands for a batch of 1,000 people), and an object is read when any answer is a false
positive: about (terms asked) x (per-term rate). At the usual 1% per term every object would
be read once a batch asks 100 terms, so the filter is sized for 1 in a million per term
(29 bits a term): 5,000 terms read about 0.5% of objects for nothing.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lethe import residue

FALSE_POSITIVE_RATE = 1e-6  # per term asked; see the module's docstring
# A filter of a few terms sized by the formula alone is a few dozen bits: whether its rate is near 1e-6 or 100 times
# that depends on where its terms' bits happen to fall (a 1-term filter read 12 of 200,000 random terms); 256 bits
# (32 bytes) put such a filter far below the rate.
MIN_BITS = 256
MAX_NAME_WORDS = residue.KeyedIndex.max_name_words  # the mention finder's own: names of up to 4 words
# Values repeat within a table (features, user agents): candidates once per value. Bounded by the terms held,
# not the values: a comment holds hundreds, and a memo of 100,000 comments grew a propagation by 900 MiB.
MEMO_TERMS = 1 << 18
MAX_HASHES = 32  # k is 20 at 1e-6; positions beyond the k a filter uses are never read
KIND = "bloom/shake128"  # an index of another kind is not understood: its object is read


def _hashes(terms: Iterable[str]) -> np.ndarray:
    """MAX_HASHES independent 64-bit hashes per term (SHAKE-128), one bit position each.

    Independent, not two combined as h1 + i*h2: in a small filter (an object with a few terms) those
    combinations repeat often enough to put the false-positive rate far above the target.
    """
    digests = b"".join(hashlib.shake_128(t.encode()).digest(8 * MAX_HASHES) for t in terms)
    return np.frombuffer(digests, dtype="<u8").reshape(-1, MAX_HASHES)


@dataclass(frozen=True)
class BloomFilter:
    bits: int  # m
    hashes: int  # k
    terms: int  # n, what it was sized for and holds
    rate: float  # the false-positive rate per term it was sized for
    data: bytes  # m bits, little-endian within each byte

    @classmethod
    def of(cls, terms: set[str], rate: float = FALSE_POSITIVE_RATE) -> BloomFilter:
        n = len(terms)
        bits = max(MIN_BITS, math.ceil(-n * math.log(rate) / math.log(2) ** 2))  # m = -n ln p / (ln 2)^2
        hashes = min(MAX_HASHES, max(1, round(bits / max(n, 1) * math.log(2))))  # k = m/n ln 2
        array = np.zeros(bits, dtype=bool)
        if n:
            array[(_hashes(sorted(terms))[:, :hashes] % np.uint64(bits)).ravel()] = True
        return cls(bits, hashes, n, rate, np.packbits(array, bitorder="little").tobytes())

    def contains(self, query: Query) -> np.ndarray:
        """Per term asked: False when the term is certainly not in the filter."""
        if not self.terms or not len(query.hashes):
            return np.zeros(len(query.hashes), dtype=bool)
        array = np.unpackbits(np.frombuffer(self.data, dtype=np.uint8), bitorder="little")
        return np.asarray(array[query.hashes[:, : self.hashes] % np.uint64(self.bits)].all(axis=1))

    def may_contain_any(self, query: Query) -> bool:
        return bool(self.contains(query).any())

    def to_manifest(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "bits": self.bits,
            "hashes": self.hashes,
            "terms": self.terms,
            "rate": self.rate,
            "filter": base64.b64encode(self.data).decode(),
        }

    @classmethod
    def from_manifest(cls, entry: dict[str, Any]) -> BloomFilter:
        return cls(entry["bits"], entry["hashes"], entry["terms"], entry["rate"], base64.b64decode(entry["filter"]))


@dataclass(frozen=True)
class Query:
    """A batch's identifier pseudonyms, hashed once for every object's filter."""

    hashes: np.ndarray  # terms x MAX_HASHES

    @classmethod
    def of(cls, pseudonyms: Iterable[str]) -> Query:
        terms = sorted(pseudonyms)
        return cls(_hashes(terms) if terms else np.zeros((0, MAX_HASHES), dtype=np.uint64))


def may_mention(index: dict[str, Any] | None, query: Query) -> bool:
    """Whether an object with this manifest index must be read for mentions; one without an index
    (a snapshot from before indexes) or with one of another kind always is."""
    return index is None or index.get("kind") != KIND or BloomFilter.from_manifest(index).may_contain_any(query)


class TermIndexer:
    """Keyed terms in a table's searched columns, with one memo per table (its parts share repeated values)."""

    def __init__(self, key: bytes, columns: list[str], memo: TermMemo | None = None) -> None:
        self.key, self.columns = key, columns
        self._memo = memo if memo is not None else TermMemo()

    def terms(self, frame: pa.Table) -> set[str]:
        """Every keyed candidate the mention finder could match in the searched columns of the frame."""
        found: set[str] = set()
        for name in self.columns:
            if name not in frame.column_names:
                continue
            for value in pc.unique(frame.column(name)).to_pylist():
                if value:  # the finder skips empty values too
                    found |= self._value_terms(value)
        return found

    def index(self, frame: pa.Table) -> dict[str, Any]:
        """The frame's term index as its manifest entry keeps it."""
        return self.index_parts([frame])

    def index_parts(self, parts: Iterable[pa.Table]) -> dict[str, Any]:
        """The term index of an object read a part at a time."""
        found: set[str] = set()
        for part in parts:
            found |= self.terms(part)
        return BloomFilter.of(found).to_manifest()

    def _value_terms(self, value: str) -> frozenset[str]:
        terms = self._memo.values.get(value)
        if terms is None:
            spellings = {(c.kind, c.value) for c in residue.candidates(value, MAX_NAME_WORDS)}
            terms = frozenset(residue.keyed(self.key, k, v) for k, v in spellings)
            self._memo.keep(value, terms)
        return terms


@dataclass
class TermMemo:
    """Keyed terms per value, for one or several indexers (a propagation's tables share one): at most
    MEMO_TERMS terms held."""

    values: dict[str, frozenset[str]] = field(default_factory=dict)
    terms: int = 0

    def keep(self, value: str, terms: frozenset[str]) -> None:
        if self.terms + len(terms) > MEMO_TERMS:
            self.values.clear()
            self.terms = 0
        self.values[value] = terms
        self.terms += len(terms)
