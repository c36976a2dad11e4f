"""The residue scanner: where a person still appears, in any text-like column of any table.

Independent of the eraser on purpose (it imports nothing from lethe.erasure): it
does not follow foreign keys or read the policy's free-text lists. It reads
every text, varchar, citext, json/jsonb, inet and array column of every table
in the policy's schemas, once per table for a whole batch of people, and looks
for each person's footprint:

- emails, case-folded and NFKC-normalised (also inside URL-encoded text);
- phones, parsed with `phonenumbers` and compared as E.164, so `98765 43210`,
  `098765 43210`, `9876543210`, `+91 98765-43210` and `0091 9876543210` are
  the same number;
- usernames in any case, also written as @handle;
- the names in the person's own name-classified columns, as whole words;
- the cookies, visitor ids and IP addresses of the person's own rows (an inet or cidr column is
  matched only as an address: it can hold nothing else).

Findings are counts per table and column, never values. The same candidate
extraction serves a keyed mode (`KeyedIndex`): after an erasure only keyed
pseudonyms of the footprint remain (the tombstone), and a spelling in a text is
matched by its pseudonym, so audits and backups match what the primary matched.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import json
import re
import unicodedata
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import unquote

import numpy as np
import phonenumbers
import psycopg2.extensions
import pyarrow as pa
import pyarrow.compute as pc
from psycopg2 import sql
from pyarrow import csv as pa_csv

from lethe import masking
from lethe.policy import Policy
from lethe.pseudonym import normalise as pseudonym_normalise
from lethe.pseudonym import subject_pseudonym
from lethe.relations import (
    EXPIRED_PARTITION_MARK,
    owners_join,
    policy_oids,
    regclass_literal,
    relation,
    subject_key_type,
)

DEFAULT_REGION = "IN"  # until a policy says otherwise (subject.phone_region): re:Skill's members are in India
_phone_region = DEFAULT_REGION
REPLACEMENT = "[erased]"
MIN_LENGTH = 3  # shorter values ("v", "a") would match everywhere
KINDS = ("email", "phone", "username", "name", "cookie", "ip")

# Column classes of the policy whose values, in the person's own rows, are part of the footprint.
FOOTPRINT_CLASSES = {
    "email": "email",
    "phone": "phone",
    "username": "username",
    "name": "name",
    "cookie": "cookie",
    "ip_address": "ip",
}

_TEXT_TYPES = ("text", "varchar", "bpchar", "citext", "json", "jsonb", "inet", "cidr")

_EMAIL = re.compile(r"[\w.%+-]+@[\w-]+(?:\.[\w-]+)+")
_URL_EMAIL = re.compile(r"[\w.%+-]+%40[\w-]+(?:\.[\w-]+)+")
_PHONE_RUN = re.compile(r"[(+]{0,2}\d[\d \t().-]*\d")
_DIGITS = re.compile(r"\d+")
_IPV4 = re.compile(r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?![\w.]*\w)")
_IPV6 = re.compile(r"(?<![\w:])[0-9a-f]{0,4}(?::[0-9a-f]{0,4}){2,7}(?![\w:])")
_TOKEN = re.compile(r"@?\w(?:[\w.-]*\w)?")
_WORD = re.compile(r"\w+")


def fold(value: str) -> str:
    """NFKC, then case-folded: full-width and ASCII letters, any case, are one spelling."""
    return unicodedata.normalize("NFKC", value).casefold()


def set_phone_region(region: str | None) -> None:
    """The country national numbers are read in from now on (the policy's `subject.phone_region`)."""
    global _phone_region
    _phone_region = region or DEFAULT_REGION


def phone_e164(value: str, region: str | None = None) -> str | None:
    """The number as E.164 (+919876543210), or None when it does not parse as one; a national number is read
    as one of `region` (default: the policy's `subject.phone_region`)."""
    return _phone_e164(value, region or _phone_region)


@functools.lru_cache(maxsize=1 << 16)
def _phone_e164(value: str, region: str) -> str | None:
    """The number as E.164 (+919876543210), or None when it does not parse as one.

    Cached: parsing is the costliest step of matching, and the same digit runs come back (the same
    objects in every snapshot, a value indexed and then redacted).

    Not limited to numbers `phonenumbers` deems possible: a stored number of an unusual length is
    still the person's, and a candidate only counts when it equals a footprint's number exactly.
    """
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        return None
    if sum(ch.isdigit() for ch in value) < 7:
        return None
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def name_key(value: str) -> str:
    """A name as its folded words: `O'Brien,  Asha` -> `o brien asha`."""
    return " ".join(_WORD.findall(fold(value)))


def ip_key(value: str) -> str | None:
    """One host's address; None for a masked network (10.0.0.0/24 after truncate_ip names nobody)."""
    try:
        interface = ipaddress.ip_interface(value.strip())
    except ValueError:
        return None
    network = interface.network
    if network.prefixlen < interface.max_prefixlen and interface.ip == network.network_address:
        return None  # host bits all zero: a network, not a host (203.0.113.7/24 still names its host)
    return str(interface.ip)


def normalise(kind: str, value: str) -> str | None:
    """The one spelling a footprint value is compared in; None when it cannot be one."""
    if kind == "phone":
        return phone_e164(value)
    if kind == "name":
        out = name_key(value)
    elif kind == "ip":
        return ip_key(value)
    elif kind == "username":
        out = fold(value.strip()).lstrip("@")
    else:
        out = fold(value.strip())
    return out if len(out) >= MIN_LENGTH else None


def keyed(key: bytes, kind: str, normalised: str) -> str:
    """HMAC-SHA256 of `kind:value`, the same message lethe.pseudonym signs for its identifier kinds."""
    return hmac.digest(key, f"{kind}:{normalised}".encode(), "sha256").hex()  # one C call per spelling


# --- candidates in a text --------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    kind: str
    value: str  # normalised
    start: int
    end: int


def _phone_candidates(text: str, tails: Container[str] | None = None) -> Iterator[Candidate]:
    """Every run of digit groups that parses as a phone number, in any grouping of its groups.

    `call 98765 43210 2 times` holds the run `98765 43210 2`; its sub-runs of whole groups
    include `98765 43210`, so a number next to another number is still found. With `tails` (the last
    PHONE_TAIL digits of every number looked for), a run whose digits end otherwise is not parsed:
    parsing keeps a number's last digits, so it could equal none of them (parsing was most of a scan's time).
    """
    for run in _PHONE_RUN.finditer(text):
        groups = [(m.start() + run.start(), m.end() + run.start(), m.group(0)) for m in _DIGITS.finditer(run.group(0))]
        plus = "+" in run.group(0)[:2]
        for i in range(len(groups)):
            digits = ""
            for j in range(i, len(groups)):
                digits += groups[j][2]
                if len(digits) > 15:
                    break
                if len(digits) < 7 or (tails is not None and _ascii_digits(digits[-PHONE_TAIL:]) not in tails):
                    continue
                spellings = ["+" + digits] if plus and i == 0 else [digits, "+" + digits]
                start = run.start() if plus and i == 0 else groups[i][0]  # with its "(+"
                for value in {phone_e164(s) for s in spellings} | {"+" + digits}:
                    # E.164, and the digits as written: tombstones older than the scanner keyed that spelling
                    if value:
                        yield Candidate("phone", value, start, groups[j][1])


def _ascii_digits(digits: str) -> str:
    """Any script's decimal digits as ASCII ones (phonenumbers reads `९८७६५` as 98765)."""
    return digits if digits.isascii() else "".join(str(unicodedata.digit(ch)) for ch in digits)


def candidates(text: str, max_name_words: int = 4, phone_tails: Container[str] | None = None) -> Iterator[Candidate]:
    """Every spelling in `text` that could be one of a person's identifiers, normalised (phones only those
    ending in one of `phone_tails`, when given)."""
    folded = fold(text)  # spans refer to the folded text (the same length but for rare letters like ß)
    emails = []
    for m in _EMAIL.finditer(folded):
        value = m.group(0).rstrip(".")
        emails.append((m.start(), m.start() + len(value)))
        yield Candidate("email", value, m.start(), m.start() + len(value))
    yield from _phone_candidates(folded, phone_tails)
    for m in _IPV4.finditer(folded):
        ip = ip_key(m.group(0))
        if ip:
            yield Candidate("ip", ip, m.start(), m.end())
    for m in _IPV6.finditer(folded):
        if m.group(0).count(":") >= 2:
            ip = ip_key(m.group(0))
            if ip:
                yield Candidate("ip", ip, m.start(), m.end())
    for m in _TOKEN.finditer(folded):
        if any(s <= m.start() < e for s, e in emails):
            continue  # part of an email: the email is the candidate, not its pieces
        token = m.group(0).lstrip("@")
        if len(token) >= MIN_LENGTH:
            start = m.start() + (1 if m.group(0).startswith("@") else 0)
            yield Candidate("username", token, start, m.end())
            yield Candidate("cookie", token, start, m.end())
    # a name's words are separated by spaces only: `asha.rao@x` is an email, not the name "asha rao"
    words = [
        (m.start(), m.end(), m.group(0))
        for m in _WORD.finditer(folded)
        if not any(s <= m.start() < e for s, e in emails)
    ]
    for i in range(len(words)):
        for n in range(1, max_name_words + 1):
            if i + n > len(words) or (n > 1 and folded[words[i + n - 2][1] : words[i + n - 1][0]].strip()):
                break
            value = " ".join(w for _, _, w in words[i : i + n])
            if len(value) >= MIN_LENGTH:
                yield Candidate("name", value, words[i][0], words[i + n - 1][1])
    for m in _URL_EMAIL.finditer(folded):  # an email inside a URL's query string: asha%40example.com
        yield Candidate("email", unquote(m.group(0)).rstrip("."), m.start(), m.end())


# --- who is who -------------------------------------------------------------------------------


class Index(Protocol):
    """Which people (by id) a normalised candidate belongs to."""

    max_name_words: int

    @property
    def phone_tails(self) -> Container[str] | None:
        """The last PHONE_TAIL digits of every phone known; None: not known."""

    def owners(self, kind: str, value: str) -> frozenset[str]: ...


@dataclass
class Footprint:
    """One person's identifiers, normalised, by kind."""

    user_id: Any  # the subject key's value (as text from the eraser; any type the caller gives)
    values: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    pseudonym: str | None = None  # the keyed subject pseudonym, when the footprint was read with the key

    def add(self, kind: str, raw: Any) -> None:
        if raw is None:
            return
        items = raw if isinstance(raw, list | tuple) else [raw]
        for item in items:
            value = normalise(kind, str(item))
            if value:
                self.values[kind].add(value)

    def pseudonyms(self, key: bytes) -> list[str]:
        """Keyed pseudonyms of every value: what a tombstone keeps so backups and audits can match."""
        return sorted({keyed(key, kind, v) for kind, values in self.values.items() for v in values})


def tombstone_prefilter(key: bytes, footprint: Footprint | None, identifiers: dict[str, str]) -> list[str] | None:
    """The keyed prefilter terms of all a tombstone's identifier pseudonyms can match: its footprint, and the
    request's identifiers both as the scanner and as lethe.pseudonym normalise them. None when a value leaves
    the prefilter nothing safe to look for: readers then match every text in full."""
    person = Footprint(None)
    for kind, values in footprint.values.items() if footprint else ():
        person.values[kind] |= values
    for kind, value in identifiers.items():
        if kind in KINDS and value:
            person.add(kind, value)
            person.values[kind].add(pseudonym_normalise(kind, value))
    prefilter = Prefilter.of([person])
    return prefilter.keyed_terms(key) if isinstance(prefilter, Prefilter) else None


@dataclass
class PlainIndex:
    """Footprints with their raw (normalised) values, while the people still exist."""

    people: list[Footprint]
    max_name_words: int = 1
    phone_tails: frozenset[str] | None = field(default=None, init=False)
    _by: dict[tuple[str, str], frozenset[str]] = field(default_factory=dict, init=False)
    _prefilter: Prefilter | bool | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        by: dict[tuple[str, str], set[str]] = defaultdict(set)
        for person in self.people:
            for kind, values in person.values.items():
                for value in values:
                    by[(kind, value)].add(person.user_id)
                    if kind == "name":
                        self.max_name_words = max(self.max_name_words, value.count(" ") + 1)
        self._by = {k: frozenset(v) for k, v in by.items()}
        self.phone_tails = frozenset(value[-PHONE_TAIL:] for kind, value in self._by if kind == "phone")

    def owners(self, kind: str, value: str) -> frozenset[str]:
        return self._by.get((kind, value), frozenset())

    @property
    def prefilter(self) -> Prefilter | None:
        if self._prefilter is None:
            self._prefilter = Prefilter.of(self.people)
        return self._prefilter if isinstance(self._prefilter, Prefilter) else None


_ASCII_WORD = re.compile(r"\w+", re.ASCII)
_NOT_DIGIT = {c: None for c in range(128) if not chr(c).isdigit()}
# Not 7: an Argentine mobile written `2202 15 123456` is +54 9 2202 123456; only the subscriber digits stay last.
PHONE_TAIL = 6


@dataclass(frozen=True)
class Prefilter:
    """A cheap test that an ASCII text cannot hold anyone of a batch, so most values skip `candidates`.

    Never says no to a text that `matches` would find someone in: every spelling `candidates` turns
    into a footprint value keeps something in the text that this test looks for:
    - an email, username or cookie keeps the last word (\\w+) of its local part or of itself as a word
      of the text (the characters around it end a word: `.`, `-`, `@`, `%`);
    - a name keeps its longest word as a word of the text;
    - a phone keeps the last PHONE_TAIL digits of its E.164 number, in a row once the other characters of its
      phone-like run (`_PHONE_RUN`, where `candidates` looks) are dropped, ending where a group of digits ends;
    - an IPv4 address is written as itself (the same pattern as `candidates`).
    A text it cannot reason about (not ASCII, so NFKC and Unicode digits apply; with `%`, so URL
    decoding applies; with `:` when the batch has an IPv6 address) goes to `candidates`.
    """

    words: Container[str]
    tails: Container[str]
    ipv4: Container[str]
    ipv6: bool

    @classmethod
    def keyed(cls, key: bytes, pseudonyms: frozenset[str]) -> Prefilter:
        """The prefilter of erased people, from the keyed terms their tombstones keep (`keyed_terms`)."""
        return cls(
            KeyedTerms(key, "word", pseudonyms),
            KeyedTerms(key, "tail", pseudonyms),
            KeyedTerms(key, "ipv4", pseudonyms),
            _keyed_term(key, "ipv6", "") in pseudonyms,
        )

    def keyed_terms(self, key: bytes) -> list[str]:
        """Every term of this prefilter as a keyed pseudonym: what a tombstone keeps so that backups and
        audits can turn away texts without the person (`Prefilter.keyed`) knowing no raw value.

        A phone's last PHONE_TAIL digits become guessable to whoever holds the key (a million tries),
        as a whole number already is with more tries; without the key they are as opaque as the rest.
        """
        words, tails, ipv4 = self.plain()
        terms = [("word", w) for w in words] + [("tail", t) for t in tails]
        terms += [("ipv4", ip) for ip in ipv4] + ([("ipv6", "")] if self.ipv6 else [])
        return sorted({_keyed_term(key, kind, value) for kind, value in terms})

    def plain(self) -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
        """Words, tails and IPv4 addresses as raw values (a prefilter built by `of`, not `keyed`)."""
        if not (isinstance(self.words, frozenset) and isinstance(self.tails, frozenset)):
            raise TypeError("a keyed prefilter does not know its raw terms")
        assert isinstance(self.ipv4, frozenset)
        return self.words, self.tails, self.ipv4

    @classmethod
    def of(cls, people: list[Footprint]) -> Prefilter | bool:
        """The prefilter of these footprints; False when one value leaves it nothing safe to look for."""
        words: set[str] = set()
        tails: set[str] = set()
        ipv4: set[str] = set()
        ipv6 = False
        for person in people:
            for kind, values in person.values.items():
                for value in values:
                    if kind == "phone":
                        digits = value.lstrip("+")
                        if len(digits) < PHONE_TAIL or not digits.isascii() or not digits.isdigit():
                            return False
                        tails.add(digits[-PHONE_TAIL:])
                    elif kind == "ip":
                        if ":" in value:
                            ipv6 = True
                        else:
                            ipv4.add(value)
                    else:
                        part = value.rsplit("@", 1)[0] if kind == "email" else value
                        found = _WORD.findall(part)
                        if not found:
                            return False
                        words.add(max(found, key=len) if kind == "name" else found[-1])
        return cls(frozenset(words), frozenset(tails), frozenset(ipv4), ipv6)

    def may_hold(self, text: str) -> bool:
        if not text.isascii() or "%" in text or (self.ipv6 and ":" in text):
            return True
        folded = text.lower()
        if any(w in self.words for w in set(_ASCII_WORD.findall(folded))):
            return True
        if self.tails:
            # A phone lies in one phone-like run (what `candidates` parses) and ends where a group of digits ends:
            # only the windows ending there are looked up.
            for run in _PHONE_RUN.findall(folded):
                digits = run.translate(_NOT_DIGIT)
                end = 0
                for group in _DIGITS.findall(run):
                    end += len(group)
                    if end >= PHONE_TAIL and digits[end - PHONE_TAIL : end] in self.tails:
                        return True
        return bool(self.ipv4) and folded.count(".") >= 3 and any(m in self.ipv4 for m in _IPV4.findall(folded))


@functools.lru_cache(maxsize=1 << 16)
def _keyed_term(key: bytes, kind: str, value: str) -> str:
    """A prefilter term's pseudonym (its own message prefix: never equal to an identifier's). Cached:
    words and digit windows repeat across a table's texts."""
    return keyed(key, f"prefilter.{kind}", value)


@dataclass(frozen=True)
class KeyedTerms:
    """The terms of one kind among keyed pseudonyms: `value in terms` pseudonymises `value` and looks."""

    key: bytes
    kind: str
    pseudonyms: frozenset[str]

    def __contains__(self, value: object) -> bool:
        return isinstance(value, str) and _keyed_term(self.key, self.kind, value) in self.pseudonyms

    def __bool__(self) -> bool:
        return bool(self.pseudonyms)


ERASED = "\x00erased"  # the owner a keyed match reports: the tombstone says someone erased, not who


@dataclass
class KeyedIndex:
    """Only keyed pseudonyms are known (tombstones): a candidate matches when its pseudonym is one."""

    key: bytes
    pseudonyms: frozenset[str]
    max_name_words: int = 4
    # A pseudonym does not tell its digits; the tombstones' keyed tails do (Prefilter.keyed), when all keep them.
    phone_tails: Container[str] | None = None
    _seen: dict[tuple[str, str], bool] = field(default_factory=dict, init=False)  # one HMAC per spelling

    def owners(self, kind: str, value: str) -> frozenset[str]:
        hit = self._seen.get((kind, value))
        if hit is None:
            if len(self._seen) >= SEEN_SIZE:  # a propagation meets every spelling of every snapshot: bounded
                self._seen.clear()
            hit = self._seen[(kind, value)] = keyed(self.key, kind, value) in self.pseudonyms
        return frozenset((ERASED,)) if hit else frozenset()


SEEN_SIZE = 1 << 16


def matches(index: Index, text: str) -> list[tuple[int, int, frozenset[str]]]:
    """Spans of `text` (start, end, owners) that belong to someone in the index, longest first, no overlaps."""
    found = []
    for c in candidates(text, index.max_name_words, index.phone_tails):
        owners = index.owners(c.kind, c.value)
        if owners:
            found.append((c.start, c.end, owners))
    found.sort(key=lambda s: (s[0] - s[1], s[0]))
    kept: list[tuple[int, int, frozenset[str]]] = []
    for start, end, owners in found:
        if not any(s < end and start < e for s, e, _ in kept):
            kept.append((start, end, owners))
    return sorted(kept)


def who(index: Index, text: str) -> set[str]:
    return {o for _, _, owners in matches(index, text) for o in owners}


def redact(index: Index, text: str, only: set[str] | None = None) -> tuple[str, int]:
    """`text` with every span of the people in `only` (all when None) replaced; (new text, spans replaced)."""
    spans = [(s, e) for s, e, owners in matches(index, text) if only is None or owners & only]
    if not spans:
        return text, 0
    out = text if len(fold(text)) == len(text) else fold(text)
    for start, end in sorted(spans, reverse=True):
        out = out[:start] + REPLACEMENT + out[end:]
    return out, len(spans)


def redact_text(index: Index, text: str, only: set[str] | None = None) -> tuple[str, int]:
    """Redact a stored value the same way wherever it lives (primary, backup, restore).

    A value that is only an IP address of the person becomes its /24 (IPv6: /48) network, as
    PostgreSQL's truncation writes it, so an inet column stays an inet; a JSON document stays
    valid JSON (a phone written as a number becomes the string "[erased]").
    """
    new, n = redact(index, text, only)
    if not n:
        return text, 0
    whole = ip_key(text.strip())  # an inet's text form, 203.0.113.7/32
    if whole and new.split("/", 1)[0] == REPLACEMENT:
        return str(masking.truncate_ip(whole)), n
    if text.lstrip()[:1] in ("{", "[") and not _is_json(new) and _is_json(text):
        return json.dumps(_redact_json(index, json.loads(text), only), ensure_ascii=False), n
    return new, n


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _redact_json(index: Index, value: Any, only: set[str] | None) -> Any:
    if isinstance(value, dict):
        return {_redact_json(index, k, only): _redact_json(index, v, only) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_json(index, v, only) for v in value]
    if isinstance(value, str):
        return redact(index, value, only)[0]
    if isinstance(value, int | float) and not isinstance(value, bool):
        text, n = redact(index, str(value), only)
        return text if n else value
    return value


# --- footprints from the database -------------------------------------------------------------


def footprints(
    cur: psycopg2.extensions.cursor, policy: Policy, user_ids: Sequence[Any], key: bytes | None = None
) -> list[Footprint]:
    """Each person's footprint, from their own rows: identifiers, names, cookies and IPs.

    `user_ids`: subject key values (each footprint keeps the value as given); compared as text cast to the
    key's own type, so the link columns' indexes serve. With the pseudonym `key`, rows whose subject link
    a retention rule replaced by the keyed subject pseudonym count as the person's own rows too.
    """
    people = {str(uid): Footprint(uid) for uid in user_ids}
    if not people:
        return []
    by_pseudonym: dict[str, str] = {}
    if key:
        for uid, person in people.items():
            person.pseudonym = subject_pseudonym(key, uid)
            by_pseudonym[person.pseudonym] = uid
    key_type = subject_key_type(cur, policy)  # format_type() from the catalogue
    for table, rule in policy.tables.items():
        link = rule.subject or (policy.subject.key if table == policy.subject.table else None)
        if link is None:
            continue
        columns = [(c, FOOTPRINT_CLASSES[cls]) for c, cls in rule.columns.items() if cls in FOOTPRINT_CLASSES]
        if not columns:
            continue
        cols = sql.SQL(", ").join(_as_text(sql.Identifier("t", c)) for c, _ in columns)
        cur.execute(  # each row under the value given, as the database compares it (a citext key in any case)
            sql.SQL("SELECT o.owner, {cols} FROM {t} t {o} WHERE t.{link} = ANY(%s::text[]::{kt}[])").format(
                cols=cols,
                t=relation(table),
                o=owners_join(sql.Identifier("t", link), key_type, sql.Placeholder()),
                link=sql.Identifier(link),
                kt=sql.SQL(key_type),
            ),
            (list(people), list(people)),
        )
        rows = cur.fetchall()
        cut = _cut_link_column(rule)
        if cut and by_pseudonym:
            cur.execute(
                sql.SQL("SELECT t.{c}, {cols} FROM {t} t WHERE t.{c} = ANY(%s::text[])").format(
                    c=sql.Identifier(cut), cols=cols, t=relation(table)
                ),
                (list(by_pseudonym),),
            )
            rows += [(by_pseudonym[r[0]], *r[1:]) for r in cur.fetchall()]
        for row in rows:
            for (_, kind), value in zip(columns, row[1:], strict=True):
                people[str(row[0])].add(kind, value)
    return list(people.values())


def _cut_link_column(rule: Any) -> str | None:
    """The pseudonym column of a table some retention rule cuts the subject link of (pseudonym_link)."""
    if not any("pseudonym_link" in r.columns.values() for r in rule.retention):
        return None
    return next((c for c, cls in rule.columns.items() if cls == "pseudonym"), None)


def pseudonymised_rows(
    cur: psycopg2.extensions.cursor, policy: Policy, people: Sequence[Footprint], skip: Iterable[str] = ()
) -> Findings:
    """Rows per person and `table.column` that name the person only by their keyed subject pseudonym
    (the link cut by retention): no text of them holds an identifier, yet they are the person's. Tables in
    `skip` (the policy's names) are not read."""
    owners = {p.pseudonym: p.user_id for p in people if p.pseudonym}  # keyed as the scan keys its findings
    out: dict[str, dict[str, int]] = defaultdict(dict)
    if not owners:
        return {}
    skipped = set(skip)
    for table, rule in policy.tables.items():
        cut = _cut_link_column(rule)
        if not cut or table in skipped:
            continue
        cur.execute(
            sql.SQL("SELECT {c}, count(*) FROM {t} WHERE {c} = ANY(%s::text[]) GROUP BY {c}").format(
                c=sql.Identifier(cut), t=relation(table)
            ),
            (list(owners),),
        )
        for p, n in cur.fetchall():
            out[owners[p]][f"{table}.{cut}"] = int(n)
    return dict(out)


def _as_text(column: sql.Composable) -> sql.Composable:
    return sql.SQL("{}::text").format(column)  # an inet reads as 10.1.2.3/32: ip_key drops the mask


# --- the scan ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # format_type(), to write a value back in its own type
    is_json: bool
    is_array: bool
    not_null: bool


@dataclass(frozen=True)
class Table:
    schema: str
    relname: str
    columns: tuple[Column, ...]
    name: str = ""  # the policy's name of the table (`table` or `schema.table`); schema.relname otherwise

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", f"{self.schema}.{self.relname}")

    @property
    def ident(self) -> sql.Composable:
        return sql.Identifier(self.schema, self.relname)


def policy_schemas(cur: psycopg2.extensions.cursor, policy: Policy) -> list[str]:
    """The schemas holding the policy's tables (wherever the search path finds them)."""
    cur.execute(
        "SELECT DISTINCT n.nspname FROM unnest(%s::text[]) t(name)"
        " JOIN pg_class c ON c.oid = to_regclass(t.name)"
        " JOIN pg_namespace n ON n.oid = c.relnamespace",
        ([regclass_literal(t) for t in policy.tables],),
    )
    return sorted(r[0] for r in cur.fetchall())


def text_tables(cur: psycopg2.extensions.cursor, schemas: list[str], names: Iterable[str] = ()) -> list[Table]:
    """Every table (partitioned parents, not their partitions) and its text-like columns.

    Retention's detached expired partitions (`<name>__expired`, marked) are left out in the same statement: they
    are no table of the platform, and the purge drops them in a transaction of its own, maybe before they are read.

    Tables of `names` (the policy's) carry the policy's name; others `relname` on the search path, else
    `schema.relname`.
    """
    from lethe.db import PLATFORM_SCHEMA, lethe_schema

    known = policy_oids(cur, names)
    cur.execute(
        """
        SELECT c.oid::oid, n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
               coalesce(et.typname, t.typname) IN ('json', 'jsonb'), et.oid IS NOT NULL, a.attnotnull
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        JOIN pg_type t ON t.oid = a.atttypid
        LEFT JOIN pg_type et ON et.oid = t.typelem AND t.typcategory = 'A'
        WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p') AND NOT c.relispartition
          AND coalesce(et.typname, t.typname) = ANY(%s)
          AND NOT EXISTS (SELECT 1 FROM pg_description d WHERE d.objoid = c.oid AND d.classoid = 'pg_class'::regclass
                          AND d.objsubid = 0 AND starts_with(d.description, %s))
        ORDER BY n.nspname, c.relname, a.attnum
        """,
        (schemas, list(_TEXT_TYPES), EXPIRED_PARTITION_MARK),
    )
    tables: dict[tuple[int, str, str], list[Column]] = defaultdict(list)
    for oid, schema, table, column, typ, is_json, is_array, not_null in cur.fetchall():
        tables[(int(oid), schema, table)].append(Column(column, typ, bool(is_json), bool(is_array), bool(not_null)))
    on_path = (PLATFORM_SCHEMA, lethe_schema())
    return [
        Table(s, t, tuple(cols), known.get(oid) or (t if s in on_path else f"{s}.{t}"))
        for (oid, s, t), cols in tables.items()
    ]


@dataclass
class Hit:
    """One row where someone of the index appears: its physical address and the owners per column."""

    table: Table
    tableoid: int
    ctid: str
    values: dict[str, str]  # column -> text value (only the columns with a hit)
    owners: dict[str, frozenset[str]]  # column -> people found in it
    extra: tuple[Any, ...] = ()  # the values of `with_columns`, in order


def scan_rows(
    cur: psycopg2.extensions.cursor,
    tables: Iterable[Table],
    index: Index,
    with_columns: dict[str, list[str]] | None = None,
    only: dict[str, set[str]] | None = None,
    locate: bool = True,
    since: int | None = None,
) -> Iterator[Hit]:
    """Read each table once; yield every row in which someone of the index appears.

    `with_columns` names, per table, other columns to return with each hit (a subject link).
    `only`, when given, limits the read to these columns per table (tables not named are skipped).
    `locate=False` does not read where each row is (its hits carry tableoid 0 and ctid ""): for counting,
    the columns alone are read, a third less for a table of short values.
    `since`, a transaction id (32 bits), limits the read to the rows that one or a later transaction wrote
    (the current one's own writes, lethe.erasure.side_effects): still a sequential read of each table, but
    PostgreSQL filters it and sends only those rows.

    Each table is one `COPY (SELECT ...) TO STDOUT (FORMAT csv)`, parsed into Arrow a block at a
    time; the prefilter's test runs on whole columns (`BulkFilter`), so Python sees only the values
    that may hold someone, and matches each distinct one once (`who`).
    """
    bulk = BulkFilter.of(index)
    seen: dict[str, frozenset[str]] = {}  # values repeat (a name, a plan): each is matched once

    def found_in(value: str) -> frozenset[str]:
        owners = seen.get(value)
        if owners is None:
            if len(seen) >= MEMO_SIZE:
                seen.clear()
            owners = seen[value] = frozenset(who(index, value))
        return owners

    with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="residue-scan") as worker:
        blocks = _Blocks(worker)
        try:
            for table in tables:
                columns = table.columns
                if only is not None:
                    columns = tuple(c for c in table.columns if c.name in only.get(table.name, ()))
                if not columns:
                    continue
                extra = (with_columns or {}).get(table.name, [])
                copy = "COPY (SELECT {where}{extra}, {cols} FROM {t} WHERE ({any}){mine}) TO STDOUT (FORMAT csv)"
                query = sql.SQL(copy).format(
                    where=sql.SQL("tableoid::int, ctid::text" if locate else "NULL, NULL"),
                    extra=sql.SQL("").join(sql.SQL(", {}::text").format(sql.Identifier(c)) for c in extra),
                    cols=sql.SQL(", ").join(_as_text(sql.Identifier(c.name)) for c in columns),
                    t=table.ident,
                    any=sql.SQL(" OR ").join(sql.SQL("{} IS NOT NULL").format(sql.Identifier(c.name)) for c in columns),
                    mine=sql.SQL("") if since is None else sql.SQL(" AND {}").format(written_since(since)),
                )
                blocks.consume = functools.partial(
                    _block_hits,
                    table=table,
                    columns=columns,
                    n_extra=len(extra),
                    bulk=bulk,
                    found_in=found_in,
                    index=index,
                )
                cur.copy_expert(query.as_string(cur), blocks)
                blocks.hand_over()
                yield from blocks.ready()  # the next table's COPY starts while this one's last blocks are matched
            yield from blocks.drain()
        finally:
            blocks.cancel()


def written_since(xid: int) -> sql.Composable:
    """Rows whose version transaction `xid` or a later one wrote: xids compare modulo 2**32, as PostgreSQL
    compares them (every unfrozen xid of a table is within 2**31 of the current one); 0-2 are special
    (frozen, bootstrap), always older."""
    return sql.SQL(
        "xmin::text::bigint > 2 AND (xmin::text::bigint - {} + 4294967296) % 4294967296 < 2147483648"
    ).format(sql.Literal(xid))


MEMO_SIZE = 100_000
BLOCK_BYTES = 16 << 20  # COPY data parsed into Arrow this much at a time: a 20M-row table never sits in memory
WORKERS = 2  # threads matching blocks while the COPY is received (their Arrow and numpy work runs without the GIL)


class _Blocks:
    """The file COPY writes to: libpq hands over one whole row per write, so a block always ends on a row.

    Each full block, and each table's last one, is parsed and matched on `worker` while the COPY goes on
    receiving (this table's next block or the next table's first): the server's work and the filter's
    overlap, since Arrow and numpy let go of the GIL. At most WORKERS + 1 blocks wait, so memory stays
    bounded whatever the table's size. Hits come out in the order the rows came.
    """

    def __init__(self, worker: ThreadPoolExecutor) -> None:
        self.worker = worker
        self.consume: Callable[[pa.Buffer], list[Hit]] = lambda block: []  # set for each table
        self.buffer = bytearray()
        self.pending: deque[Future[list[Hit]]] = deque()
        self.done: list[Hit] = []  # few: the rows where someone of the batch appears

    def write(self, data: bytes) -> int:
        self.buffer += data
        if len(self.buffer) >= BLOCK_BYTES:
            self.hand_over()
        return len(data)

    def hand_over(self) -> None:
        """Hand what was received over to the worker (called at each full block and at each table's end)."""
        if not self.buffer:
            return
        if len(self.pending) > WORKERS:
            self.done.extend(self.pending.popleft().result())
        block, self.buffer = pa.py_buffer(self.buffer), bytearray()  # the block keeps its bytes alive
        self.pending.append(self.worker.submit(self.consume, block))

    def ready(self) -> list[Hit]:
        """The hits of the blocks matched so far, without waiting for the others."""
        while self.pending and self.pending[0].done():
            self.done.extend(self.pending.popleft().result())
        out, self.done = self.done, []
        return out

    def drain(self) -> list[Hit]:
        while self.pending:
            self.done.extend(self.pending.popleft().result())  # raises what matching a block raised
        return self.ready()

    def cancel(self) -> None:
        for future in self.pending:
            future.cancel()
        self.buffer = bytearray()


# An inet or cidr column holds an address and nothing else: only the address test and the address match apply
# (its digit groups are neither a phone nor words).
ADDRESS_TYPES = ("inet", "cidr")


def _address_owners(index: Index, value: str) -> frozenset[str]:
    host = ip_key(value)  # 203.0.113.7/32 -> 203.0.113.7; a network (10.1.2.0/24) names nobody
    return index.owners("ip", host) if host else frozenset()


def _block_hits(
    block: pa.Buffer,
    table: Table,
    columns: Sequence[Column],
    n_extra: int,
    bulk: BulkFilter | None,
    found_in: Callable[[str], frozenset[str]],
    index: Index,
) -> list[Hit]:
    """The rows of one block of a table's COPY in which someone of the index appears."""
    names = ["tableoid", "ctid", *(f"extra{i}" for i in range(n_extra)), *(f"c{i}" for i in range(len(columns)))]
    batch = pa_csv.read_csv(
        block,
        read_options=pa_csv.ReadOptions(column_names=names),
        parse_options=pa_csv.ParseOptions(newlines_in_values=True),
        convert_options=pa_csv.ConvertOptions(
            column_types=dict.fromkeys(names, pa.string()),
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,  # "" is an empty text, an unquoted empty field is NULL
        ),
    )
    rows: dict[int, dict[str, frozenset[str]]] = defaultdict(dict)
    texts: dict[int, dict[str, str]] = defaultdict(dict)
    for i, column in enumerate(columns):
        values = batch.column(f"c{i}").combine_chunks()
        address = column.type in ADDRESS_TYPES
        maybe = pc.and_kleene(pc.is_valid(values), pc.greater_equal(pc.utf8_length(values), MIN_LENGTH))
        if bulk is not None:
            maybe = pc.and_kleene(maybe, bulk.may_hold_address(values) if address else bulk.may_hold(values))
        maybe = pc.fill_null(maybe, False)
        where = pc.indices_nonzero(maybe).to_pylist()
        if not where:
            continue
        for row, value in zip(where, values.filter(maybe).to_pylist(), strict=True):
            owners = _address_owners(index, value) if address else found_in(value)
            if owners:
                rows[row][column.name] = owners
                texts[row][column.name] = value
    if not rows:
        return []
    where = sorted(rows)
    oids, ctids, *extras = (batch.column(name).take(where).to_pylist() for name in names[: 2 + n_extra])
    return [
        Hit(table, int(oid or 0), ctid or "", texts[row], rows[row], tuple(e[k] for e in extras))
        for k, (row, oid, ctid) in enumerate(zip(where, oids, ctids, strict=True))
    ]


@dataclass(frozen=True)
class BulkFilter:
    """`Prefilter.may_hold` over a whole Arrow column at once: True wherever the prefilter would be.

    - not ASCII, with `%`, or with `:` when the batch has an IPv6 address: True (as the prefilter);
    - one of the batch's words as a whole ASCII word (`\\w+` runs of the lower-cased text);
    - one of the phone tails among the digits of one phone-like run (digits and ` \t().-`), in a row;
    - one of the IPv4 addresses as a run of digits and dots (the prefilter's pattern needs it written so).
    A few needles are tested with one RE2 pattern; many (a large batch), by hashing the text's tokens
    (RE2 with thousands of alternatives is slower than reading the column). A column whose values
    repeat (a feature name, a browser) is tested once per distinct value.
    """

    words: frozenset[str]
    tails: frozenset[str]
    ipv4: frozenset[str]
    ipv6: bool
    # For many needles, tokens: a name of two words or more needs its first two words one after the
    # other (a name is matched as whole words with only spaces between them), any other kind its word.
    tokens: frozenset[str] = frozenset()
    pairs: frozenset[str] = frozenset()

    @classmethod
    def of(cls, index: Index) -> BulkFilter | None:
        prefilter: Prefilter | None = getattr(index, "prefilter", None)
        if prefilter is None:
            return None
        tokens: set[str] = set()
        pairs: set[str] = set()
        for person in getattr(index, "people", []):
            for kind, values in person.values.items():
                if kind in ("phone", "ip"):
                    continue
                for value in values:
                    part = value.rsplit("@", 1)[0] if kind == "email" else value
                    found = _WORD.findall(part)
                    if kind == "name" and len(found) >= 2:
                        pairs.add(f"{found[0]} {found[1]}")
                    else:
                        tokens.add(found[-1])  # Prefilter.of refused a value without a word
        return cls(*prefilter.plain(), prefilter.ipv6, frozenset(tokens), frozenset(pairs))

    # The needles as Arrow value sets and a table of wanted tails: built once, used on every block
    @functools.cached_property
    def _token_set(self) -> pa.Array:
        return _value_set(self.tokens)

    @functools.cached_property
    def _pair_sets(self) -> tuple[pa.Array, pa.Array]:
        return _value_set({p.split(" ", 1)[0] for p in self.pairs}), _value_set(self.pairs)

    @functools.cached_property
    def _ipv4_set(self) -> pa.Array:
        return _value_set(self.ipv4)

    @functools.cached_property
    def _wanted_tails(self) -> np.ndarray:
        wanted = np.zeros(10**PHONE_TAIL, dtype=bool)
        wanted[[int(t) for t in self.tails if len(t) == PHONE_TAIL and t.isascii() and t.isdigit()]] = True
        return wanted

    def may_hold(self, values: pa.Array) -> pa.Array:
        if len(values) > 4 * SAMPLE and len(pc.unique(values.slice(0, SAMPLE))) < SAMPLE // 4:
            distinct = pc.unique(values)
            return pc.is_in(values, value_set=distinct.filter(self._may_hold(distinct)))
        return self._may_hold(values)

    def may_hold_address(self, values: pa.Array) -> pa.Array:
        """For an inet or cidr column's text (`203.0.113.7/32`): its address is one of the batch's IPv4 addresses,
        or it is an IPv6 address and the batch has one (PostgreSQL and Python may spell IPv6 differently)."""
        host = pc.replace_substring_regex(values, r"/\d+$", "")
        out = pc.is_in(host, value_set=self._ipv4_set)
        return pc.or_(out, pc.match_substring(values, ":")) if self.ipv6 else out

    def _may_hold(self, values: pa.Array) -> pa.Array:
        # not ASCII, with `%`, with `:` when the batch has an IPv6 address: counted per text over its bytes
        out = pa.array(_per_text(values, _UNSURE_IPV6 if self.ipv6 else _UNSURE) > 0)
        lower = pc.ascii_lower(values)
        if self.words and len(self.words) <= FEW:
            alternatives = "|".join(re.escape(w) for w in sorted(self.words))
            out = pc.or_(out, pc.match_substring_regex(lower, rf"(?:^|[^a-z0-9_])(?:{alternatives})(?:[^a-z0-9_]|$)"))
        elif self.words:
            out = pc.or_(
                out, _any_token(lower, _WORD_BYTES, self._token_set, pairs=self._pair_sets if self.pairs else None)
            )
        if self.tails:
            out = pc.or_(out, pa.array(_any_window(values, self._wanted_tails)))
        if self.ipv4:
            dotted = pa.array(_per_text(values, _DOT) >= 3)
            where = pc.indices_nonzero(dotted)
            if len(where):
                found = _any_token(lower.filter(dotted), _IPV4_BYTES, self._ipv4_set, strip=".")
                out = pc.or_(out, _mask(len(values), where.filter(pc.fill_null(found, False))))
        return out


SAMPLE = 1024
FEW = 64  # needles of one kind up to which one RE2 pattern tests them


def _utf8(values: pa.Array) -> tuple[np.ndarray, np.ndarray, pa.Buffer, int]:
    """A string array's bytes, its offsets into them (from its own first byte), its data buffer, and where
    in that buffer its first byte is."""
    if values.type != pa.string():
        values = values.cast(pa.string())
    _, offsets_buf, data_buf = values.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int32)[values.offset : values.offset + len(values) + 1]
    first = int(offsets[0])
    if data_buf is None:
        return np.zeros(0, np.uint8), np.zeros(len(values) + 1, np.int64), pa.py_buffer(b""), 0
    data = np.frombuffer(data_buf, dtype=np.uint8)[first : int(offsets[-1])]
    return data, offsets.astype(np.int64) - first, data_buf, first


def _byte_class(chars: str) -> np.ndarray:
    table = np.zeros(256, dtype=bool)
    table[list(chars.encode())] = True
    return table


_WORD_BYTES = _byte_class("abcdefghijklmnopqrstuvwxyz0123456789_")  # [^a-z0-9_]+ separates words of lowered text
_IPV4_BYTES = _byte_class("0123456789.")
_DIGIT_BYTES = _byte_class("0123456789")
_PHONE_RUN_BYTES = _byte_class("0123456789 \t().-")  # what `_PHONE_RUN` joins digit groups with
_DOT = _byte_class(".")
_UNSURE = _byte_class("%") | (np.arange(256) >= 128)  # URL-encoded, or not ASCII (NFKC and Unicode digits apply)
_UNSURE_IPV6 = _UNSURE | _byte_class(":")


def _per_text(values: pa.Array, classes: np.ndarray) -> np.ndarray:
    """How many bytes of the class each text holds."""
    data, offsets, _, _ = _utf8(values)
    where = np.flatnonzero(classes[data])  # few, for most classes: no running sum over every byte
    return np.bincount(_rows(offsets, where), minlength=len(values))


def _runs(values: pa.Array, classes: np.ndarray) -> tuple[pa.Array, np.ndarray, np.ndarray, np.ndarray]:
    """Each text cut into maximal runs of bytes in and out of the class: the pieces as strings, where each
    starts, whether it is a run of the class, and the texts' offsets (`_rows` turns starts into rows, for
    the few pieces that need one).

    The runs of the class are the tokens of splitting on the complement's pattern, without a regex: the
    pieces are contiguous slices of one buffer (offsets only, no copy), and within a text they alternate
    in and out of the class. Bytes of a multi-byte UTF-8 character are never of an ASCII class, so a cut
    never splits one.
    """
    data, offsets, buffer, first = _utf8(values)
    inside = classes[data]
    cut = np.zeros(len(data) + 1, dtype=bool)
    cut[offsets] = True
    cut[1:-1] |= inside[1:] != inside[:-1]
    bounds = np.flatnonzero(cut)
    pieces = pa.StringArray.from_buffers(len(bounds) - 1, pa.py_buffer((bounds + first).astype(np.int32)), buffer)
    return pieces, bounds[:-1], inside[bounds[:-1]] if len(data) else np.zeros(0, dtype=bool), offsets


def _rows(offsets: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The text each byte position is in (an empty text holds none)."""
    return np.searchsorted(offsets, starts, side="right") - 1


def _value_set(values: Iterable[str]) -> pa.Array:
    return pa.array(sorted(values), pa.string())


def _any_window(values: pa.Array, wanted: np.ndarray) -> np.ndarray:
    """True where PHONE_TAIL ASCII digits in a row of one phone-like run are a wanted tail (`wanted[tail]`).

    A run is what `_PHONE_RUN` can match: digits and the separators a phone is written with (` \t().-`);
    any other character ends it. A phone candidate's digits are whole digit groups of one run, so its last
    PHONE_TAIL digits are such a window; a hex id or a hash, whose digits letters keep apart, mostly has none.
    """
    data, offsets, _, _ = _utf8(values)
    out = np.zeros(len(values), dtype=bool)
    where = np.flatnonzero(_DIGIT_BYTES[data])
    if len(where) < PHONE_TAIL:
        return out
    breaks = ~_PHONE_RUN_BYTES[data]
    breaks[offsets[:-1][offsets[:-1] < len(data)]] = True  # a text's start ends the previous run
    run = np.cumsum(breaks, dtype=np.int32)[where]  # one id per run of each digit
    n = len(where) - PHONE_TAIL + 1
    d = data[where].astype(np.int32) - ord("0")
    number = np.zeros(n, dtype=np.int32)  # each window's digits as one number: tails are PHONE_TAIL long
    for k in range(PHONE_TAIL):
        number = number * 10 + d[k : k + n]
    # Only windows ending where a group of digits ends, as a candidate's digits do: the next digit is not
    # the next byte of the same run.
    end = np.ones(len(where), dtype=bool)
    end[:-1] = (where[1:] != where[:-1] + 1) | (run[1:] != run[:-1])
    last = np.flatnonzero(end[PHONE_TAIL - 1 :])  # the windows, by their first digit
    hit = last[wanted[number[last]] & (run[last] == run[last + PHONE_TAIL - 1])]  # a window inside one run
    out[_rows(offsets, where[hit])] = True
    return out


def _mask(n: int, rows: pa.Array | np.ndarray) -> pa.Array:
    mask = np.zeros(n, dtype=bool)
    mask[rows.to_numpy(zero_copy_only=False) if isinstance(rows, pa.Array) else rows] = True
    return pa.array(mask)


def _any_token(
    values: pa.Array,
    classes: np.ndarray,
    needles: pa.Array,
    strip: str = "",
    pairs: tuple[pa.Array, pa.Array] | None = None,
) -> pa.Array:
    """True where a token of the text (a run of the byte class, `strip` trimmed) is a needle,
    or two tokens one after the other, joined by a space, are one of the pairs (`pairs`: their first
    words, and the pairs)."""
    pieces, starts, token, offsets = _runs(values, classes)
    if strip:
        pieces = pc.utf8_trim(pieces, strip)
    hit = token & pc.is_in(pieces, value_set=needles).to_numpy(zero_copy_only=False)
    rows = _rows(offsets, starts[hit])
    if pairs is not None and len(pieces) > 2:
        # Only where a pair's first word is: the token after it is two pieces on (a separator between).
        firsts, joined_pairs = pairs
        first = np.flatnonzero(token & pc.is_in(pieces, value_set=firsts).to_numpy(zero_copy_only=False))
        first = first[first + 2 < len(pieces)]
        at, after = _rows(offsets, starts[first]), _rows(offsets, starts[first + 2])
        first, at = first[at == after], at[at == after]  # both words in one text
        if len(first):
            joined = pc.binary_join_element_wise(pieces.take(first), pieces.take(first + 2), " ")
            pair_hit = pc.is_in(joined, value_set=joined_pairs).to_numpy(zero_copy_only=False)
            rows = np.concatenate([rows, at[pair_hit]])
    return _mask(len(values), rows)


Findings = dict[str, dict[str, int]]  # person -> "table.column" -> rows


def found_columns(cur: psycopg2.extensions.cursor, policy: Policy, findings: Findings) -> dict[str, set[str]]:
    """Per table, the columns where anyone of `findings` was found (for `scan_rows(only=...)`)."""
    keys = {key for found in findings.values() for key in found}
    tables = text_tables(cur, policy_schemas(cur, policy), policy.tables)
    out = {t.name: {c.name for c in t.columns if f"{t.name}.{c.name}" in keys} for t in tables}
    return {t: cols for t, cols in out.items() if cols}


def scan(
    cur: psycopg2.extensions.cursor,
    policy: Policy,
    index: Index,
    skip: Iterable[str] = (),
) -> Findings:
    """Rows per person and `table.column` where the person appears; tables in `skip` are not read."""
    skipped = set(skip)
    tables = [t for t in text_tables(cur, policy_schemas(cur, policy), policy.tables) if t.name not in skipped]
    out: dict[str, Counter[str]] = defaultdict(Counter)
    for hit in scan_rows(cur, tables, index, locate=False):  # counts: where each row is is not needed
        for column, owners in hit.owners.items():
            for owner in owners:
                out[owner][f"{hit.table.name}.{column}"] += 1
    if isinstance(index, PlainIndex):  # rows naming a person only by pseudonym hold no text of theirs
        # skipped by the policy's name: `k` is `<table>.<column>`, and a table's name may hold dots itself
        for owner, found in pseudonymised_rows(cur, policy, index.people, skipped).items():
            out[owner].update(found)
    return {owner: dict(sorted(c.items())) for owner, c in out.items()}
