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
- the cookies, visitor ids and IP addresses of the person's own rows.

Findings are counts per table and column, never values. The same candidate
extraction serves a keyed mode (`KeyedIndex`): after an erasure only keyed
pseudonyms of the footprint remain (the tombstone), and a spelling in a text is
matched by its pseudonym, so audits and backups match what the primary matched.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import unquote

import phonenumbers
import psycopg2.extensions
from psycopg2 import sql

from lethe.policy import Policy
from lethe.pseudonym import subject_pseudonym
from lethe.relations import policy_oids, regclass_literal, relation, subject_key_type

DEFAULT_REGION = "IN"  # re:Skill's members: a number without country code is Indian
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


def phone_e164(value: str, region: str = DEFAULT_REGION) -> str | None:
    """The number as E.164 (+919876543210), or None when it does not parse as one.

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
    return hmac.new(key, f"{kind}:{normalised}".encode(), hashlib.sha256).hexdigest()


# --- candidates in a text --------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    kind: str
    value: str  # normalised
    start: int
    end: int


def _phone_candidates(text: str) -> Iterator[Candidate]:
    """Every run of digit groups that parses as a phone number, in any grouping of its groups.

    `call 98765 43210 2 times` holds the run `98765 43210 2`; its sub-runs of whole groups
    include `98765 43210`, so a number next to another number is still found.
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
                if len(digits) < 7:
                    continue
                spellings = ["+" + digits] if plus and i == 0 else [digits, "+" + digits]
                start = run.start() if plus and i == 0 else groups[i][0]  # with its "(+"
                for value in {phone_e164(s) for s in spellings} | {"+" + digits}:
                    # E.164, and the digits as written: tombstones older than the scanner keyed that spelling
                    if value:
                        yield Candidate("phone", value, start, groups[j][1])


def candidates(text: str, max_name_words: int = 4) -> Iterator[Candidate]:
    """Every spelling in `text` that could be one of a person's identifiers, normalised."""
    folded = fold(text)  # spans refer to the folded text (the same length but for rare letters like ß)
    emails = []
    for m in _EMAIL.finditer(folded):
        value = m.group(0).rstrip(".")
        emails.append((m.start(), m.start() + len(value)))
        yield Candidate("email", value, m.start(), m.start() + len(value))
    yield from _phone_candidates(folded)
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


@dataclass
class PlainIndex:
    """Footprints with their raw (normalised) values, while the people still exist."""

    people: list[Footprint]
    max_name_words: int = 1
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

    def owners(self, kind: str, value: str) -> frozenset[str]:
        return self._by.get((kind, value), frozenset())

    @property
    def prefilter(self) -> Prefilter | None:
        if self._prefilter is None:
            self._prefilter = Prefilter.of(self.people)
        return self._prefilter if isinstance(self._prefilter, Prefilter) else None


_ASCII_WORD = re.compile(r"\w+", re.ASCII)
_NOT_DIGIT = {c: None for c in range(128) if not chr(c).isdigit()}
PHONE_TAIL = 7


@dataclass(frozen=True)
class Prefilter:
    """A cheap test that an ASCII text cannot hold anyone of a batch, so most values skip `candidates`.

    Never says no to a text that `matches` would find someone in: every spelling `candidates` turns
    into a footprint value keeps something in the text that this test looks for:
    - an email, username or cookie keeps the last word (\\w+) of its local part or of itself as a word
      of the text (the characters around it end a word: `.`, `-`, `@`, `%`);
    - a name keeps its longest word as a word of the text;
    - a phone keeps the last 7 digits of its E.164 number, in a row once the text's other characters
      are dropped (the separators a phone may be written with are never digits);
    - an IPv4 address is written as itself (the same pattern as `candidates`).
    A text it cannot reason about (not ASCII, so NFKC and Unicode digits apply; with `%`, so URL
    decoding applies; with `:` when the batch has an IPv6 address) goes to `candidates`.
    """

    words: frozenset[str]
    tails: frozenset[str]
    ipv4: frozenset[str]
    ipv6: bool

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
        if not self.words.isdisjoint(_ASCII_WORD.findall(folded)):
            return True
        if self.tails:
            digits = folded.translate(_NOT_DIGIT)
            for i in range(len(digits) - PHONE_TAIL + 1):
                if digits[i : i + PHONE_TAIL] in self.tails:
                    return True
        return bool(self.ipv4) and folded.count(".") >= 3 and any(m in self.ipv4 for m in _IPV4.findall(folded))


ERASED = "\x00erased"  # the owner a keyed match reports: the tombstone says someone erased, not who


@dataclass
class KeyedIndex:
    """Only keyed pseudonyms are known (tombstones): a candidate matches when its pseudonym is one."""

    key: bytes
    pseudonyms: frozenset[str]
    max_name_words: int = 4
    _seen: dict[tuple[str, str], bool] = field(default_factory=dict, init=False)  # one HMAC per spelling

    def owners(self, kind: str, value: str) -> frozenset[str]:
        hit = self._seen.get((kind, value))
        if hit is None:
            hit = self._seen[(kind, value)] = keyed(self.key, kind, value) in self.pseudonyms
        return frozenset((ERASED,)) if hit else frozenset()


def matches(index: Index, text: str) -> list[tuple[int, int, frozenset[str]]]:
    """Spans of `text` (start, end, owners) that belong to someone in the index, longest first, no overlaps."""
    found = []
    for c in candidates(text, index.max_name_words):
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
        net = ipaddress.ip_network(f"{whole}/{24 if ipaddress.ip_address(whole).version == 4 else 48}", strict=False)
        return str(net), n
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
    key_type = sql.SQL(subject_key_type(cur, policy))  # format_type() from the catalogue
    for table, rule in policy.tables.items():
        link = rule.subject or (policy.subject.key if table == policy.subject.table else None)
        if link is None:
            continue
        columns = [(c, FOOTPRINT_CLASSES[cls]) for c, cls in rule.columns.items() if cls in FOOTPRINT_CLASSES]
        if not columns:
            continue
        cols = sql.SQL(", ").join(_as_text(sql.Identifier(c)) for c, _ in columns)
        cur.execute(
            sql.SQL("SELECT {link}::text, {cols} FROM {t} WHERE {link} = ANY(%s::text[]::{kt}[])").format(
                link=sql.Identifier(link), cols=cols, t=relation(table), kt=key_type
            ),
            (list(people),),
        )
        rows = cur.fetchall()
        cut = _cut_link_column(rule)
        if cut and by_pseudonym:
            cur.execute(
                sql.SQL("SELECT {c}, {cols} FROM {t} WHERE {c} = ANY(%s::text[])").format(
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


def pseudonymised_rows(cur: psycopg2.extensions.cursor, policy: Policy, people: Sequence[Footprint]) -> Findings:
    """Rows per person and `table.column` that name the person only by their keyed subject pseudonym
    (the link cut by retention): no text of them holds an identifier, yet they are the person's."""
    owners = {p.pseudonym: p.user_id for p in people if p.pseudonym}  # keyed as the scan keys its findings
    out: dict[str, dict[str, int]] = defaultdict(dict)
    if not owners:
        return {}
    for table, rule in policy.tables.items():
        cut = _cut_link_column(rule)
        if not cut:
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
        ORDER BY n.nspname, c.relname, a.attnum
        """,
        (schemas, list(_TEXT_TYPES)),
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
) -> Iterator[Hit]:
    """Read each table once; yield every row in which someone of the index appears.

    `with_columns` names, per table, other columns to return with each hit (a subject link).
    """
    prefilter: Prefilter | None = getattr(index, "prefilter", None)
    seen: dict[str, frozenset[str]] = {}  # values repeat (a feature, a browser): each is matched once

    def found_in(value: str) -> frozenset[str]:
        owners = seen.get(value)
        if owners is None:
            owners = frozenset(who(index, value)) if prefilter is None or prefilter.may_hold(value) else frozenset()
            if len(seen) >= MEMO_SIZE:
                seen.clear()
            seen[value] = owners
        return owners

    for table in tables:
        extra = (with_columns or {}).get(table.name, [])
        cols = [_as_text(sql.Identifier(c.name)) for c in table.columns]
        query = sql.SQL("SELECT tableoid::int, ctid::text, {extra}{cols} FROM {t} WHERE {any}").format(
            extra=sql.SQL("").join(sql.SQL("{}, ").format(sql.Identifier(c)) for c in extra),
            cols=sql.SQL(", ").join(cols),
            t=table.ident,
            any=sql.SQL(" OR ").join(sql.SQL("{} IS NOT NULL").format(sql.Identifier(c.name)) for c in table.columns),
        )
        for rows in _batches(cur, query):
            for row in rows:
                owners: dict[str, frozenset[str]] = {}
                texts: dict[str, str] = {}
                for column, value in zip(table.columns, row[2 + len(extra) :], strict=True):
                    if value is None or len(value) < MIN_LENGTH:
                        continue
                    found = found_in(value)
                    if found:
                        owners[column.name] = found
                        texts[column.name] = value
                if owners:
                    yield Hit(table, int(row[0]), str(row[1]), texts, owners, tuple(row[2 : 2 + len(extra)]))


MEMO_SIZE = 100_000
FETCH_ROWS = 20_000


def _batches(cur: psycopg2.extensions.cursor, query: sql.Composable) -> Iterator[list[tuple[Any, ...]]]:
    """The query's rows, FETCH_ROWS at a time through a server-side cursor (a table of 20M rows never sits
    in memory whole); in autocommit mode, where a server-side cursor cannot live, all at once."""
    if cur.connection.autocommit:
        cur.execute(query)
        yield cur.fetchall()
        return
    reader = cur.connection.cursor(name=f"lethe_residue_{id(query):x}")
    try:
        reader.execute(query)
        while rows := reader.fetchmany(FETCH_ROWS):
            yield rows
    finally:
        reader.close()


Findings = dict[str, dict[str, int]]  # person -> "table.column" -> rows


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
    for hit in scan_rows(cur, tables, index):
        for column, owners in hit.owners.items():
            for owner in owners:
                out[owner][f"{hit.table.name}.{column}"] += 1
    if isinstance(index, PlainIndex):  # rows naming a person only by pseudonym hold no text of theirs
        for owner, found in pseudonymised_rows(cur, policy, index.people).items():
            out[owner].update({k: n for k, n in found.items() if k.split(".")[0] not in skipped})
    return {owner: dict(sorted(c.items())) for owner, c in out.items()}
