"""The residue scanner's matching: every spelling of a person's footprint, nobody else's."""

from __future__ import annotations

import pytest
from lethe import residue
from lethe.backup.mentions import MentionFinder, prefilter_of
from lethe.residue import Footprint, KeyedIndex, PlainIndex

KEY = b"residue-key"


def asha() -> Footprint:
    person = Footprint(1)
    person.add("email", "Asha.K@Example.test")
    person.add("phone", "+91 98765 43210")
    person.add("username", "Asha_K")
    person.add("name", "Asha  Kulkarni")
    person.add("cookie", "ck-7f3a9b")
    person.add("ip", "203.0.113.7")
    return person


def bhavin() -> Footprint:
    person = Footprint(2)
    person.add("email", "bhavin@example.org")
    person.add("phone", "9000000002")
    return person


SPELLINGS = [
    ("mail asha.k@example.test.", "mail [erased]."),
    ("cc ASHA.K@EXAMPLE.TEST, thanks", "cc [erased], thanks"),
    ("\uff41\uff53\uff48\uff41.\uff4b@example.test", "[erased]"),  # full-width letters: NFKC
    ("call 98765 43210", "call [erased]"),
    ("call 098765 43210", "call [erased]"),
    ("call 9876543210 now", "call [erased] now"),
    ("call +91 98765-43210", "call [erased]"),
    ("call +919876543210 or 0091 98765 43210", "call [erased] or [erased]"),
    ("call 91 98765 43210", "call [erased]"),
    ("(+91) 98765.43210", "[erased]"),
    ("call 98765 43210 2 times", "call [erased] 2 times"),
    ("call \u096f\u096e\u096d\u096c\u096b \u096a\u0969\u0968\u0967\u0966", "call [erased]"),  # Devanagari digits
    ("call \uff19\uff18\uff17\uff16\uff15 \uff14\uff13\uff12\uff11\uff10", "call [erased]"),  # full-width digits
    ("@asha_k said so (ASHA_K)", "@[erased] said so ([erased])"),
    ("thanks Asha Kulkarni!", "thanks [erased]!"),
    ("ASHA KULKARNI wrote", "[erased] wrote"),
    ('{"contact": "asha.k@example.test", "tel": 9876543210}', '{"contact": "[erased]", "tel": [erased]}'),
    ("cookie ck-7f3a9b seen from 203.0.113.7", "cookie [erased] seen from [erased]"),
]


@pytest.mark.parametrize(("text", "want"), SPELLINGS)
def test_every_spelling_is_found_and_redacted(text: str, want: str) -> None:
    index = PlainIndex([asha(), bhavin()])
    assert residue.who(index, text) == {1}
    assert residue.redact(index, text)[0] == want


@pytest.mark.parametrize(("text", "want"), SPELLINGS)
def test_keyed_index_matches_the_same_spellings(text: str, want: str) -> None:
    index = KeyedIndex(KEY, frozenset(asha().pseudonyms(KEY)))
    assert residue.redact(index, text)[0] == want


def test_url_encoded_email_in_a_url() -> None:
    index = PlainIndex([asha()])
    text = "/signup?email=asha.k%40example.test&next=%2F"
    assert residue.who(index, text) == {1}
    assert residue.redact(index, text)[0] == "/signup?email=[erased]&next=%2F"


@pytest.mark.parametrize(
    "text",
    [
        "asha_kumar and xasha_k are other people",
        "asha.k@example.org is someone else; so is basha.k@example.test",
        "Asha alone is not the name; Kulkarni neither",
        "call 98765 43211, 198765432100 or 2039876543210",
        "203.0.113.70 and 10.203.0.113",
        "ck-7f3a9bc",
        "",
    ],
)
def test_near_misses_are_not_the_person(text: str) -> None:
    index = PlainIndex([asha(), bhavin()])
    assert residue.who(index, text) == set()
    assert residue.redact(index, text) == (text, 0)


def test_a_batch_tells_people_apart() -> None:
    index = PlainIndex([asha(), bhavin()])
    text = "asha_k and bhavin@example.org and 090000 00002"
    assert residue.who(index, text) == {1, 2}
    assert residue.redact(index, text, only={2}) == ("asha_k and [erased] and [erased]", 2)


def test_footprint_ignores_values_too_short_or_unparseable() -> None:
    person = Footprint(3)
    person.add("cookie", "v")
    person.add("phone", "n/a")
    person.add("ip", "not an ip")
    assert dict(person.values) == {}


def test_a_truncated_network_is_no_ones_address() -> None:
    """Retention leaves 203.0.113.0/24 in many people's rows: it must not make them all this person's residue."""
    person = Footprint(4)
    person.add("ip", "203.0.113.0/24")
    person.add("ip", "2001:db8::/48")
    assert dict(person.values) == {}
    person.add("ip", "203.0.113.7/24")  # a host written with its netmask is still that host
    person.add("ip", "198.51.100.9/32")
    assert {v for values in person.values.values() for v in values} == {"203.0.113.7", "198.51.100.9"}
    assert residue.ip_key("203.0.113.0") == "203.0.113.0"  # a bare address is a host, even ending in .0


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("203.0.113.7/32", "203.0.113.0/24"),  # an inet stays an inet: truncated as PostgreSQL does
        ('{"tel": 9876543210, "note": "asha_k"}', '{"tel": "[erased]", "note": "[erased]"}'),
        ('{"ref": "ASHA.K@example.test"}', '{"ref": "[erased]"}'),
        ("plain asha_k text", "plain [erased] text"),
    ],
)
def test_stored_values_keep_their_type_when_redacted(text: str, want: str) -> None:
    for index in (PlainIndex([asha()]), KeyedIndex(KEY, frozenset(asha().pseudonyms(KEY)))):
        assert residue.redact_text(index, text)[0] == want


def test_a_name_is_words_separated_by_spaces_only() -> None:
    index = PlainIndex([asha()])
    for text in ("asha.kulkarni@example.org", "asha-kulkarni", "asha_kulkarni", "asha.kulkarni"):
        assert residue.who(index, text) == set(), text
    assert residue.who(index, "Asha\n Kulkarni") == {1}


PASSING = [text for text, _ in SPELLINGS] + [
    "/signup?email=asha.k%40example.test&next=%2F",
    "asha_k and bhavin@example.org and 090000 00002",
    '{"tel": 9876543210, "note": "asha_k"}',
    "203.0.113.7/32",
]


@pytest.mark.parametrize("text", PASSING)
def test_prefilter_never_turns_away_a_text_that_holds_someone(text: str) -> None:
    index = PlainIndex([asha(), bhavin()])
    assert residue.who(index, text)
    assert index.prefilter is not None
    assert index.prefilter.may_hold(text)


@pytest.mark.parametrize(
    "text",
    [
        "Course player",
        "Mozilla/5.0 Chrome/130.0.6723.91",
        "203.0.113.70 and 10.203.0.113",
        "call 98765 43211",
        "v7f3a9b0",
    ],
)
def test_prefilter_turns_away_texts_without_anyone(text: str) -> None:
    index = PlainIndex([asha(), bhavin()])
    assert index.prefilter is not None
    assert not index.prefilter.may_hold(text)
    assert residue.who(index, text) == set()


# --- the tombstones' keyed prefilter: backups and audits skip texts without anyone erased ---------------------

NOBODY = [
    "Course player",
    "Mozilla/5.0 Chrome/130.0.6723.91",
    "203.0.113.70 and 10.203.0.113",
    "call 98765 43211",
    "ticket 4410 closed by support on 2026-11-30",
]


def tombstone_terms() -> frozenset[str]:
    """The keyed prefilter terms the tombstones of asha and bhavin keep."""
    terms = [residue.tombstone_prefilter(KEY, person, {}) for person in (asha(), bhavin())]
    assert all(t is not None for t in terms)
    return frozenset(t for ts in terms for t in ts or [])


def keyed_finder(*, prefilter: bool) -> MentionFinder:
    """What propagation and the audit build from those tombstones."""
    identifiers = frozenset(p for person in (asha(), bhavin()) for p in person.pseudonyms(KEY))
    return MentionFinder(KEY, identifiers, tombstone_terms() if prefilter else None)


@pytest.mark.parametrize("text", PASSING)
def test_keyed_prefilter_redacts_exactly_what_full_matching_does(text: str) -> None:
    with_prefilter, without = keyed_finder(prefilter=True), keyed_finder(prefilter=False)
    assert without.redact(text)[1], text  # someone erased is in it
    assert with_prefilter.redact(text) == without.redact(text)


@pytest.mark.parametrize("text", NOBODY)
def test_keyed_prefilter_turns_away_texts_without_anyone(text: str) -> None:
    assert not residue.Prefilter.keyed(KEY, tombstone_terms()).may_hold(text)
    assert keyed_finder(prefilter=True).redact(text) == (text, 0)


def test_keyed_terms_hold_no_raw_value_and_match_no_identifier() -> None:
    terms = residue.tombstone_prefilter(KEY, asha(), {})
    assert terms and all(len(t) == 64 and int(t, 16) >= 0 for t in terms)  # hex HMACs only
    assert not set(terms) & set(asha().pseudonyms(KEY))  # their own message prefix: never an identifier's
    assert "543210" not in " ".join(terms) and "asha" not in " ".join(terms)


def test_a_request_identifier_outside_the_footprint_is_in_the_terms() -> None:
    """The request's own email, as lethe.pseudonym keys it, passes the prefilter even when the footprint missed it."""
    terms = residue.tombstone_prefilter(KEY, None, {"email": "Chitra.N@example.test", "phone": "+91 91234 56789"})
    assert terms is not None
    prefilter = residue.Prefilter.keyed(KEY, frozenset(terms))
    assert prefilter.may_hold("from chitra.n@example.test")
    assert prefilter.may_hold("call 91234-56789")
    assert not prefilter.may_hold("from chitra.m@example.test, call 91234-56780")


def test_no_terms_when_the_prefilter_cannot_be_safe() -> None:
    """A phone too short to have a tail: no terms, and readers match every text of such a batch in full."""
    person = Footprint(3)
    person.values["phone"].add("+123")
    assert residue.tombstone_prefilter(KEY, person, {}) is None
    assert prefilter_of([(["p1"], ["t1"]), (["p2"], None)]) is None  # one tombstone without terms
    assert prefilter_of([(["p1"], ["t1"]), ([], None)]) == frozenset({"t1"})  # no identifiers: nothing to look for
