"""The term index of a backup object: a Bloom filter of the keyed terms its free text holds."""

from __future__ import annotations

import json
import secrets

import pyarrow as pa
import pytest
from lethe.backup.mentions import MentionFinder
from lethe.backup.term_index import MIN_BITS, BloomFilter, Query, TermIndexer, may_mention
from lethe.residue import Footprint

KEY = b"term-index-key"


def random_terms(n: int) -> list[str]:
    return [secrets.token_hex(32) for _ in range(n)]


def test_no_false_negatives_on_many_terms() -> None:
    terms = random_terms(50_000)
    bloom = BloomFilter.of(set(terms))
    assert bloom.contains(Query.of(terms)).all()
    one = terms[123]
    assert bloom.may_contain_any(Query.of([one, *random_terms(3)]))


@pytest.mark.parametrize(("rate", "asked"), [(0.01, 200_000), (0.001, 200_000)])
def test_false_positive_rate_is_near_the_target(rate: float, asked: int) -> None:
    bloom = BloomFilter.of(set(random_terms(20_000)), rate)
    observed = bloom.contains(Query.of(random_terms(asked))).mean()
    assert rate / 2 <= observed <= rate * 1.5, observed
    assert bloom.bits / bloom.terms == pytest.approx(9.59 if rate == 0.01 else 14.38, abs=0.01)  # -ln p / ln2^2


@pytest.mark.parametrize("terms", [1, 3, 30, 10_000])
def test_the_default_rate_keeps_a_big_batch_from_reading_every_object(terms: int) -> None:
    """Thousands of pseudonyms asked (a batch of 1,000 people) of an object, big or small: rarely a false hit."""
    bloom = BloomFilter.of(set(random_terms(terms)))
    false_hits = int(bloom.contains(Query.of(random_terms(200_000))).sum())
    assert false_hits <= 5  # expected 0.2 at 1e-6 per term
    assert bloom.bits <= max(MIN_BITS, 30 * terms)  # about 29 bits (3.6 bytes) a term, 32 bytes at least


def test_manifest_round_trip_and_empty_filters() -> None:
    bloom = BloomFilter.of(set(random_terms(100)))
    entry = bloom.to_manifest()
    assert BloomFilter.from_manifest(json.loads(json.dumps(entry))) == bloom
    empty = BloomFilter.of(set())
    assert not empty.may_contain_any(Query.of(random_terms(10)))
    assert not bloom.may_contain_any(Query.of([]))
    assert may_mention(None, Query.of(random_terms(1)))  # no index (an older snapshot): read it
    assert may_mention({**BloomFilter.of(set()).to_manifest(), "kind": "other"}, Query.of(random_terms(1)))


def erased_pseudonyms() -> frozenset[str]:
    """What an erasure's tombstone keeps of Asha's footprint."""
    asha = Footprint(4)
    for kind, value in {"email": "Asha.K@example.test", "username": "asha_k", "phone": "+91 98765 43210"}.items():
        asha.add(kind, value)
    asha.add("name", "Asha Kumar")
    return frozenset(asha.pseudonyms(KEY))


@pytest.mark.parametrize(
    "text",
    [
        "write to ASHA.K@example.test.",
        "@asha_k said so",
        "call 098765 43210 tomorrow",
        "mail asha.k%40example.test via the link",
        '{"to": "Asha Kumar", "n": 9876543210}',
        "asha_kumar and xasha_k are other people",
        "asha.k@example.org is someone else",
        "nothing here at all",
    ],
)
def test_an_object_is_indexed_with_exactly_what_the_mention_finder_matches(text: str) -> None:
    """The terms hold an erased pseudonym exactly when the finder redacts something in the same text."""
    erased = erased_pseudonyms()
    finder = MentionFinder(KEY, erased)
    frame = pa.table({"id": [1, 2], "body": [text, None], "other": ["asha_k", "x"]})
    _, hits = finder.redact_columns(frame, ["body"])
    terms = TermIndexer(KEY, ["body"]).terms(frame)
    assert bool(terms & erased) == bool(hits)
    index = TermIndexer(KEY, ["body"]).index(frame)
    assert may_mention(index, Query.of(erased)) or not hits  # a filter never misses
    assert text not in json.dumps(index) and "asha" not in json.dumps(index).lower()


def test_a_shared_memo_holds_at_most_memo_terms_and_the_index_is_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two tables' indexers share one memo; it never holds more than MEMO_TERMS terms, and an index built after
    the memo was emptied equals one built afresh."""
    from lethe.backup import term_index

    monkeypatch.setattr(term_index, "MEMO_TERMS", 100)
    memo = term_index.TermMemo()
    comments = TermIndexer(KEY, ["body"], memo)
    feedback = TermIndexer(KEY, ["text"], memo)
    bodies = [f"call Asha Rao{i} at asha{i}@example.com or +91 98765 4{i:04d}" for i in range(40)]
    held = []
    for i, body in enumerate(bodies):
        comments.terms(pa.table({"body": [body]}))
        feedback.terms(pa.table({"text": [bodies[-1 - i]]}))
        held.append(memo.terms)
        assert memo.terms == sum(len(t) for t in memo.values.values()) <= 100
    assert min(held) < max(held)  # it was emptied on the way
    frame = pa.table({"body": bodies})
    assert comments.index(frame) == TermIndexer(KEY, ["body"]).index(frame)
