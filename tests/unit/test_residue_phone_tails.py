"""An outsider's attack: a phone spelling phonenumbers reads as the person's number, its digits ending otherwise."""

from __future__ import annotations

from lethe import residue
from lethe.residue import Footprint, KeyedIndex, PlainIndex

KEY = b"residue-key"

# An Argentine mobile in a 4-digit area code (6-digit subscriber number), written nationally with the
# mobile token "15" after the area code: phonenumbers moves it to "9" before the area code, so the
# E.164 number ends 2123456 while the written digits end 5123456.
E164 = "+54 9 2202 123456"
WRITTEN = "call +54 2202 15 123456 tonight"


def lucia() -> Footprint:
    person = Footprint(7)
    person.add("phone", E164)
    return person


def test_the_spelling_is_the_persons_number() -> None:
    assert residue.phone_e164("+54 2202 15 123456") == residue.phone_e164(E164) == "+5492202123456"


def test_keyed_index_finds_the_spelling() -> None:
    index = KeyedIndex(KEY, frozenset(lucia().pseudonyms(KEY)))
    assert residue.redact(index, WRITTEN)[0] == "call [erased] tonight"


def test_plain_index_finds_the_spelling() -> None:
    # Failed at 4f9f765: the digit run's last 7 digits (5123456) were no footprint phone's tail; 6 are.
    index = PlainIndex([lucia()])
    assert residue.who(index, WRITTEN) == {7}
    assert residue.redact(index, WRITTEN)[0] == "call [erased] tonight"


def test_the_scan_finds_the_spelling_in_a_text_the_prefilter_passes() -> None:
    """A non-ASCII text goes past the prefilter to `candidates`, which must find the spelling."""
    index = PlainIndex([lucia()])
    text = "llamá al +54 2202 15 123456"
    assert index.prefilter is not None and index.prefilter.may_hold(text)
    assert residue.who(index, text) == {7}


def test_the_prefilter_and_the_bulk_filter_pass_the_ascii_spelling() -> None:
    """They keep a text when it holds a footprint phone's last PHONE_TAIL digits in a row: with 7 they dropped
    this ASCII spelling before matching."""
    import pyarrow as pa

    index = PlainIndex([lucia()])
    assert index.prefilter is not None and index.prefilter.may_hold(WRITTEN)
    bulk = residue.BulkFilter.of(index)
    assert bulk is not None and bulk.may_hold(pa.array([WRITTEN, "call +54 2202 15 654321"])).to_pylist() == [
        True,
        False,
    ]
    assert residue.who(index, WRITTEN) == {7}


def test_the_bulk_filter_passes_every_text_the_matcher_finds_a_phone_in() -> None:
    """The bulk filter looks for a tail only inside one phone-like run (digits and ` \\t().-`): never where the
    matcher finds the number, however it is written, and not where letters or other signs cut the digits apart."""
    import random

    import pyarrow as pa

    asha = Footprint(1)
    asha.add("phone", "+91 98765 43210")
    index = PlainIndex([lucia(), asha])
    bulk = residue.BulkFilter.of(index)
    assert bulk is not None
    rng = random.Random(14)
    digits = ["98765 43210", "9876543210", "2202 15 123456", "54 9 2202 123456", "5492202123456", "1543210"]
    texts = []
    for _ in range(3000):
        number = rng.choice(digits)
        joined = "".join(
            ch if ch != " " else rng.choice([" ", "-", ".", "(", ")", "\t", "", "  ", "/", "x", "+"]) for ch in number
        )
        texts.append(
            rng.choice(["", "call ", "+", "(+", "tel:", "id a"]) + joined + rng.choice(["", " ok", "/32", "z"])
        )
    passed = bulk.may_hold(pa.array(texts)).to_pylist()
    found = [bool(residue.who(index, t)) for t in texts]
    assert all(p for p, f in zip(passed, found, strict=True) if f)
    assert sum(found) > 500  # the generator writes the numbers in ways the matcher finds
    # The same digits cut apart by letters or slashes hold no phone; the filter lets them go.
    cut = ["x98765a43210", "98765/43210", "h9a8765432b10", "2202_15_1234_56"]
    assert not any(residue.who(index, t) for t in cut)
    assert bulk.may_hold(pa.array(cut)).to_pylist() == [False, False, False, False]


def test_the_bulk_filter_reads_a_tail_only_where_a_group_of_digits_ends_in_one_text() -> None:
    """A column's texts lie end to end in one buffer: digits at the end of one text and the start of the next
    are no run. A tail inside a longer group is no candidate's last digits (`5432107` holds no 543210 number)."""
    import pyarrow as pa

    asha = Footprint(1)
    asha.add("phone", "+91 98765 43210")
    index = PlainIndex([asha])
    bulk = residue.BulkFilter.of(index)
    assert bulk is not None
    texts = ["x 5432", "10 y", "5432107", "id 98765 43210", "98765-43210", "tel 9876543210."]
    assert bulk.may_hold(pa.array(texts)).to_pylist() == [False, False, False, True, True, True]
    assert [bool(residue.who(index, t)) for t in texts] == [False, False, False, True, True, True]
