"""`lethe policy init`: draft a policy file from a live database, every guess marked for review.

Every table (partitioned parents, not their partitions) of the platform's schema and of the
other schemas asked for is listed with every column. A column is classified from its name,
its type and a sample of its values (email, phone, IP address, free text); links to the chosen
subject table come from foreign keys (those declared only on partitions included), and tables
the subject's rows point to (an address) get an erasure action too. Each guess carries a
`# REVIEW:` comment; `lethe policy check` reports every one left, so a draft passes the check
only after a person went through it. Sampled values are read to classify, never written out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import psycopg2.extensions
from psycopg2 import sql

from lethe import relations
from lethe.db import PLATFORM_SCHEMA, lethe_schema

MARKER = "# REVIEW"
SAMPLE = 50

_EMAIL = re.compile(r"^[\w.%+-]+@[\w-]+(\.[\w-]+)+$")
_PHONE = re.compile(r"^\+?[\d\s().-]{7,20}$")
_IP = re.compile(r"^(\d{1,3}\.){3}\d{1,3}(/\d+)?$|^[0-9a-f:]+:[0-9a-f:]*(/\d+)?$", re.IGNORECASE)
_TIME_TYPES = ("timestamp with time zone", "timestamp without time zone", "date")
_TEXT_TYPES = ("text", "character varying", "character", "citext")

# Column-name hints: (pattern on the name, class). First match wins.
_NAME_HINTS: list[tuple[str, str]] = [
    (r"e_?mail", "email"),
    (r"phone|mobile|^tel$|telephone", "phone"),
    (r"(^|_)ip(_address)?$|ip_addr", "ip_address"),
    (r"password|passwd|pw_hash", "password"),
    (r"(^|_)(full_|first_|last_|display_|billed_|billing_)?name$", "name"),
    (r"user_?name|handle|login", "username"),
    (r"street|line1|line2|postcode|postal|zip|(^|_)address$|billed_address|billing_address", "address"),
    (r"(^|_)city$|town", "city"),
    (r"cookie|token|session_id|visitor_id", "cookie"),
    (r"user_agent|device|browser", "device"),
    (r"vat|tax_?id|gstin", "tax_id"),
    (r"amount|total|paid|card|iban", "payment"),
    (r"(^|_)(body|comment|message|note|notes|text|feedback|review)$", "comment"),
    (r"birth|(^|_)age$", "age"),
]


@dataclass
class DraftColumn:
    name: str
    type: str
    cls: str
    why: str
    free_text: bool = False


@dataclass
class DraftTable:
    name: str
    columns: list[DraftColumn]
    subject: str | None = None
    pointed_from: str | None = None  # a table of the subject pointing to this one (an address)
    clock: str | None = None
    notes: list[str] = field(default_factory=list)


def _by_name(column: str) -> str | None:
    for pattern, cls in _NAME_HINTS:
        if re.search(pattern, column, re.IGNORECASE):
            return cls
    return None


def _by_values(values: list[str]) -> str | None:
    values = [v.strip() for v in values if v and v.strip()]
    if not values:
        return None

    def share(pattern: re.Pattern[str]) -> float:
        return sum(1 for v in values if pattern.match(v)) / len(values)

    if share(_EMAIL) >= 0.8:
        return "email"
    if share(_IP) >= 0.8:
        return "ip_address"
    if share(_PHONE) >= 0.8 and all(sum(c.isdigit() for c in v) >= 7 for v in values):
        return "phone"
    if sum(len(v) for v in values) / len(values) >= 25 and sum(" " in v for v in values) / len(values) >= 0.6:
        return "comment"
    return None


def classify(
    column: str, type_: str, keys: set[str], values: list[str], links: frozenset[str] = frozenset()
) -> tuple[str, str, bool]:
    """(class, reason, free text?) of one column, from its name, type, keys and sampled values.

    `keys`: primary-key columns (a token or an email can be one); `links`: foreign-key columns."""
    if column in links:
        return "identifier", "a foreign key", False
    if column in keys and type_ in _TIME_TYPES:
        return "timestamp", f"part of the primary key, type {type_}", False
    if column in keys and _by_name(column) not in ("cookie", "email", "phone", "username"):
        return "identifier", "the primary key", False
    if type_ in ("inet", "cidr"):
        return "ip_address", f"type {type_}", False
    named = _by_name(column)
    sampled = _by_values(values) if type_ in _TEXT_TYPES else None
    if sampled and sampled != named and sampled != "comment":
        return sampled, f"sampled values look like {sampled}", False
    if named:
        return named, f"column name suggests {named}", named == "comment" or sampled == "comment"
    if sampled == "comment":
        return "comment", "sampled values are free text", True
    if type_ in _TIME_TYPES:
        return "timestamp", f"type {type_}", False
    return "attribute", "no personal pattern in name, type or sample", False


def _tables(cur: psycopg2.extensions.cursor, schemas: list[str]) -> dict[str, list[tuple[str, str]]]:
    """Each table and its columns; retention's marked `<name>__expired` left out in this very statement (no table
    of the platform: the purge drops it in a transaction of its own, maybe before it is sampled)."""
    cur.execute(
        """
        SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, NULL)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND n.nspname = ANY(%s)
          AND NOT EXISTS (SELECT 1 FROM pg_description d WHERE d.objoid = c.oid AND d.classoid = 'pg_class'::regclass
                          AND d.objsubid = 0 AND starts_with(d.description, %s))
        ORDER BY n.nspname <> %s, n.nspname, c.relname, a.attnum
        """,
        (schemas, relations.EXPIRED_PARTITION_MARK, PLATFORM_SCHEMA),
    )
    out: dict[str, list[tuple[str, str]]] = {}
    for schema, table, column, type_ in cur.fetchall():
        name = table if schema == PLATFORM_SCHEMA else f"{schema}.{table}"
        out.setdefault(name, []).append((column, type_))
    return out


def _user_schemas(cur: psycopg2.extensions.cursor) -> list[str]:
    cur.execute(
        "SELECT nspname FROM pg_namespace WHERE nspname NOT IN ('information_schema') AND nspname NOT LIKE 'pg\\_%'"
    )
    return [str(r[0]) for r in cur.fetchall()]


def _sample(cur: psycopg2.extensions.cursor, table: str, column: str) -> list[str]:
    cur.execute(
        sql.SQL("SELECT {c}::text FROM {t} WHERE {c} IS NOT NULL LIMIT %s").format(
            c=sql.Identifier(column), t=relations.relation(table)
        ),
        (SAMPLE,),
    )
    return [str(r[0]) for r in cur.fetchall()]


def draft_tables(
    cur: psycopg2.extensions.cursor, subject_table: str, schemas: Iterable[str] = ()
) -> tuple[list[DraftTable], str]:
    """The tables of the draft, and the subject table's key column."""
    names = sorted({PLATFORM_SCHEMA, *(schemas or _user_schemas(cur))} - {lethe_schema()})
    live = _tables(cur, names)
    if subject_table not in live:
        raise ValueError(f"subject table {subject_table!r} is not in schema(s) {', '.join(names)} of the database")
    fks = relations.foreign_keys(cur, live)
    pks = relations.primary_keys(cur, live)
    if len(pks.get(subject_table, ())) != 1:
        raise ValueError(f"subject table {subject_table!r} needs a one-column primary key (the subject key)")
    key = pks[subject_table][0]
    drafts: dict[str, DraftTable] = {}
    for table, columns in live.items():
        keys = set(pks.get(table, ()))
        links = frozenset(c for fk in fks if fk.child == table for c in fk.child_columns)
        cols = []
        for column, type_ in columns:
            values = _sample(cur, table, column) if type_ in _TEXT_TYPES and column not in links else []
            cls, why, free = classify(column, type_, keys, values, links)
            cols.append(DraftColumn(column, type_, cls, why, free))
        drafts[table] = DraftTable(table, cols)
    drafts[subject_table].subject = key
    for fk in fks:
        if (
            fk.parent == subject_table
            and fk.child in drafts
            and len(fk.child_columns) == 1
            and fk.child != subject_table
        ):
            drafts[fk.child].subject = drafts[fk.child].subject or fk.child_columns[0]
    linked = {t for t, d in drafts.items() if d.subject}
    for fk in fks:  # tables the subject's rows point to, holding personal data: an erasure action to decide
        parent = drafts.get(fk.parent)
        if fk.child in linked and parent and not parent.subject and _personal(parent):
            parent.pointed_from = parent.pointed_from or fk.child
    return list(drafts.values()), key


def _personal(table: DraftTable) -> bool:
    return any(c.cls not in ("identifier", "timestamp", "attribute") for c in table.columns)


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(tables: list[DraftTable], subject_table: str, key: str, source: str) -> str:
    """The draft policy file as YAML text, with a `# REVIEW:` comment on each guess."""
    by_name = {t.name: t for t in tables}
    subject_cols = by_name[subject_table].columns
    identifiers = {"user_id": key} | {
        kind: c.name for kind in ("email", "phone", "username") for c in subject_cols if c.cls == kind
    }
    clock = next((c.name for c in subject_cols if c.cls == "timestamp" and re.search("clos|delet|end", c.name)), None)
    out = [
        "# Lethe policy drafted by `lethe policy init` from the live database.",
        "# Every guess ends in a REVIEW comment: decide it, then delete the comment. `lethe policy check`",
        "# lists each one left; docs/policy.md says what each field means.",
        "",
        'version: "0.1"',
        f"source: {_q(source)}  {MARKER}: the privacy notice this file enforces",
        "",
        "subject:",
        f"  table: {subject_table}",
        f"  key: {key}",
        "  identifiers: {" + ", ".join(f"{k}: {v}" for k, v in identifiers.items()) + f"}}  {MARKER}: columns found",
    ]
    if any(c.cls == "phone" for t in tables for c in t.columns):
        out.append(f"  phone_region: IN  {MARKER}: the country whose national numbers your phones are written in")
    out += [
        "",
        f"purposes:  {MARKER}: name what the data is used for; every table names one",
        "  service: Providing the service the person signed up for",
        "",
        "consent_purposes: []",
        "",
    ]
    if clock:
        out += [
            "clocks:",
            f"  account_closed: {{table: {subject_table}, subject: {key}, column: {clock}}}  "
            f"{MARKER}: the column saying an account closed",
            "",
        ]
    out.append("tables:")
    for t in tables:
        personal = _personal(t)
        out.append(f"  {t.name}:")
        out.append(f"    description: {_q(t.name)}  {MARKER}: what this table holds")
        out.append(f"    purpose: service  {MARKER}")
        out.append(f"    legal_basis: contract  {MARKER}")
        if t.subject:
            why = "the subject key" if t.name == subject_table else f"foreign key to {subject_table}.{key}"
            out.append(f"    subject: {t.subject}  {MARKER}: {why}")
        else:
            note = f": rows of {t.pointed_from} point here" if t.pointed_from else ""
            out.append(f"    subject: null  {MARKER}{note}")
        out.append(f"    backup: true  {MARKER}")
        out.append("    columns:")
        for c in t.columns:
            out.append(f"      {c.name}: {c.cls}  {MARKER}: {c.why} ({c.type})")
        free = [c.name for c in t.columns if c.free_text]
        if free:
            out.append(f"    free_text: [{', '.join(free)}]  {MARKER}: text that may name other people")
        out.append(f"    retain_indefinitely: {_q(MARKER + ': give retention rules, or say why it is kept')}")
        if t.subject or (t.pointed_from and personal):
            what = (
                "delete: when nothing else references the row; pseudonymise; or retain"
                if t.pointed_from
                else ("delete, or pseudonymise/retain with the reason the law gives")
            )
            out.append(f"    erasure: {{action: delete}}  {MARKER}: {what}")
    return "\n".join(out) + "\n"


def draft(cur: psycopg2.extensions.cursor, subject_table: str, schemas: Iterable[str] = (), source: str = "") -> str:
    tables, key = draft_tables(cur, subject_table, schemas)
    return render(tables, subject_table, key, source or "the company's privacy notice")


def unreviewed(text: str, path: str) -> list[str]:
    """`file:line: ...` for every REVIEW marker left in a policy file."""
    return [
        f"{path}:{n}: a guess of `lethe policy init` not reviewed yet: decide it, then delete {MARKER!r}"
        for n, line in enumerate(text.splitlines(), 1)
        if MARKER in line
    ]
