"""Lint the policy against the live schema: every column classified, nothing unknown.

Problems are located: policy-side ones at the file line of the rule, schema-side
ones (a column nobody classified) at the table's `columns:` line.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import psycopg2.extensions
import yaml

from lethe import masking
from lethe.db import LETHE_TABLES, PLATFORM_SCHEMA, lethe_schema
from lethe.erasure.indexes import IDENTIFIER_CLASSES, identifier_columns
from lethe.policy.draft import unreviewed
from lethe.policy.model import PERSONAL_CATEGORIES, Policy, _line_index
from lethe.relations import BASE_TYPE_JOIN, TEXT_TYPES, ForeignKey, foreign_keys, policy_oids, split
from lethe.retention.catalog import being_dropped

# Types a retention clock can count from.
CLOCK_TYPES = ("timestamp with time zone", "timestamp without time zone", "date")
# Erasure and anonymisation strategies that leave the column NULL.
NULLING = ("null", "pseudonym_link")


class LiveColumn(NamedTuple):
    type: str
    not_null: bool
    has_default: bool = False
    generated: bool = False  # GENERATED ALWAYS (a computed or identity column): PostgreSQL refuses a written value
    max_length: int | None = None  # varchar(n) / char(n), through its domains: a longer value is refused


def live_schema(
    cur: psycopg2.extensions.cursor, lethe_tables: list[str] | None = None, policy_tables: list[str] | None = None
) -> dict[str, dict[str, LiveColumn]]:
    """Ordinary and partitioned tables (not partitions) -> columns in order: those of the platform's schema
    and of every other schema the policy names a table in (`schema.table`), plus those of `lethe_tables`
    that live in Lethe's own schema (its state the policy governs). Tables the policy names come under
    the policy's name; others as `table` in the platform's schema and `schema.table` elsewhere. A column of
    a domain type has its base type: the erasure and the purge read it as one."""
    named = policy_tables or []
    schemas = sorted({PLATFORM_SCHEMA} | {s for s, _ in map(split, named) if s})
    known = policy_oids(cur, named)
    cur.execute(
        f"""
        SELECT c.oid::oid, n.nspname, c.relname, a.attname,
               format_type(base.oid, NULL), a.attnotnull OR base.not_null,
               a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '', a.attgenerated <> '' OR a.attidentity = 'a',
               CASE WHEN base.oid IN ('varchar'::regtype, 'bpchar'::regtype) AND base.typmod >= 4
                    THEN base.typmod - 4 END
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        {BASE_TYPE_JOIN}
        WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
          AND (n.nspname = ANY(%(schemas)s) OR (n.nspname = %(lethe)s AND c.relname = ANY(%(named)s)))
        ORDER BY n.nspname = %(platform)s DESC, c.relname, a.attnum
        """,  # noqa: S608 (a constant join; values are params)
        {"platform": PLATFORM_SCHEMA, "schemas": schemas, "lethe": lethe_schema(), "named": lethe_tables or []},
    )
    schema: dict[str, dict[str, LiveColumn]] = {}
    home: dict[str, str] = {}
    for oid, namespace, relname, column, type_, not_null, has_default, generated, max_length in cur.fetchall():
        table = known.get(int(oid)) or (
            relname if namespace in (PLATFORM_SCHEMA, lethe_schema()) else f"{namespace}.{relname}"
        )
        if home.setdefault(table, namespace) == namespace:  # a platform table shadows Lethe's of the same name
            schema.setdefault(table, {})[column] = LiveColumn(type_, not_null, has_default, generated, max_length)
    return schema


def subject_foreign_keys(fks: list[ForeignKey], subject_table: str) -> dict[tuple[str, str], set[str]]:
    """(table, column) -> the columns of the subject table it references, for each single-column foreign key
    to the subject table (declared on the table, or only on its partitions)."""
    out: dict[tuple[str, str], set[str]] = {}
    for fk in fks:
        if fk.parent == subject_table and len(fk.child_columns) == 1:
            out.setdefault((fk.child, fk.child_columns[0]), set()).add(fk.parent_columns[0])
    return out


def pointed_to(policy: Policy, fks: list[ForeignKey]) -> dict[str, str]:
    """Tables without a subject link that rows of the subject point to (an address): table -> the table
    pointing at it. Reached from the subject's tables, then from those reached, as erasure reaches them."""
    linked = {policy.subject.table} | {t for t, r in policy.tables.items() if r.subject}
    found: dict[str, str] = {}
    frontier = sorted(linked)
    while frontier:
        child = frontier.pop(0)
        for fk in fks:
            parent = fk.parent
            if fk.child != child or parent in linked or parent in found or parent not in policy.tables:
                continue
            rule = policy.tables[parent]
            if rule.erasure is not None or any(c in PERSONAL_CATEGORIES for c in rule.columns.values()):
                found[parent] = child
                frontier.append(parent)
    return found


def lint(policy: Policy, cur: psycopg2.extensions.cursor) -> list[str]:
    path = policy.path
    text = path.read_text() if path else ""
    node = yaml.compose(text) if path else None
    lines: dict[tuple[Any, ...], int] = _line_index(node) if node else {}

    def at(*loc: Any) -> str:
        for end in range(len(loc), -1, -1):
            if loc[:end] in lines:
                return f"{path}:{lines[loc[:end]]}"
        return str(path)

    schema = live_schema(cur, [t for t in policy.tables if t in LETHE_TABLES], list(policy.tables))
    all_fks = foreign_keys(cur, policy.tables)
    fks = subject_foreign_keys(all_fks, policy.subject.table)
    reached = pointed_to(policy, all_fks)
    problems: list[str] = unreviewed(text, str(path))
    problems += _clock_problems(policy, schema, at)
    problems += _placeholder_problems(policy, schema, at)
    covered = set(policy.tables) | set(policy.system_tables) | being_dropped(policy, cur, set(schema))
    for table in sorted(set(schema) - covered):
        problems.append(f"{at('tables')}: table {table!r} exists in the database but no rule of the policy covers it")
    for table, rule in policy.tables.items():
        if table not in schema:
            problems.append(f"{at('tables', table)}: tables.{table}: unknown table: not in the database")
            continue
        live = schema[table]
        for column in rule.columns:
            if column not in live:
                problems.append(
                    f"{at('tables', table, 'columns', column)}: tables.{table}.columns.{column}: unknown column"
                )
        for column in live:
            if column not in rule.columns:
                problems.append(
                    f"{at('tables', table, 'columns')}: tables.{table}.columns: column {column!r} exists in the "
                    "database but is not classified"
                )
        problems += _impossible(policy, table, live, at)
        personal = sorted(c for c, cls in rule.columns.items() if cls in PERSONAL_CATEGORIES)
        if personal and rule.subject is None and table in reached and rule.erasure is None:
            problems.append(
                f"{at('tables', table)}: tables.{table}: rows of the data subject in {reached[table]} point to this "
                f"table's rows, which hold personal data ({', '.join(personal)}): give it an `erasure` action "
                "(delete: when nothing else references the row; pseudonymise; or retain, with the reason)"
            )
        elif personal and rule.subject is None and table != policy.subject.table and table not in reached:
            problems.append(
                f"{at('tables', table, 'subject')}: tables.{table}.subject: holds personal data "
                f"({', '.join(personal)}) but is not linked to the data subject"
            )
        erasure = rule.erasure
        if erasure and erasure.action != "delete":
            loose = [c for c in personal if c not in erasure.columns and c not in erasure.keep]
            if loose:
                problems.append(
                    f"{at('tables', table, 'erasure')}: tables.{table}.erasure: kept rows would keep personal "
                    f"column(s) {', '.join(loose)} unnamed: mask each under `columns` or list it under `keep` "
                    "with its legal reason"
                )
    problems += _link_to_key_problems(policy, fks, set(schema), at)
    problems += _identifier_problems(policy, schema, at)
    problems += _free_text_problems(policy, schema, at)
    return problems


def _free_text_problems(policy: Policy, schema: dict[str, dict[str, LiveColumn]], at: Any) -> list[str]:
    """The erasure searches a `free_text` column as text (ILIKE) and redacts mentions in place: it must be
    text, and not GENERATED (PostgreSQL refuses a written value)."""
    problems: list[str] = []
    for table, rule in policy.tables.items():
        live = schema.get(table, {})
        for column in rule.free_text:
            if column not in live:
                continue  # reported as an unknown column
            where = f"{at('tables', table, 'free_text')}: tables.{table}.free_text: {table}.{column}"
            if live[column].generated:
                problems.append(f"{where}: the erasure redacts mentions in it, {_GENERATED}")
            elif not _text(live[column]):
                problems.append(
                    f"{where}: the erasure searches it as text and redacts mentions in place, but the column is"
                    f" {live[column].type}: list only text columns under free_text"
                )
    return problems


def _link_to_key_problems(
    policy: Policy, fks: dict[tuple[str, str], set[str]], live_tables: set[str], at: Any
) -> list[str]:
    """Each table's subject link must be a foreign key to the subject key: the erasure and the event clocks
    compare the link with the person's key, so a link to another column (an email) compares unlike values."""
    subject, key = policy.subject.table, policy.subject.key
    problems: list[str] = []
    elsewhere: dict[str, str] = {}  # table -> the subject table's column(s) its link references instead
    to_key = False
    for table, rule in policy.tables.items():
        if not rule.subject or table == subject or table not in live_tables:  # unknown tables: reported as such
            continue
        referenced = fks.get((table, rule.subject), set())
        if key in referenced:
            to_key = True
        elif referenced:
            elsewhere[table] = ", ".join(sorted(referenced))
        else:
            problems.append(
                f"{at('tables', table, 'subject')}: tables.{table}.subject: column {rule.subject!r} has no foreign "
                f"key to {subject}.{key}, so the subject cannot be reached through it"
            )
    if len(elsewhere) > 1 and len(set(elsewhere.values())) == 1 and not to_key:  # the key is what is wrong: once
        other = next(iter(elsewhere.values()))
        links = ", ".join(f"{t}.{policy.tables[t].subject}" for t in elsewhere)
        problems.append(
            f"{at('subject', 'key')}: subject.key: the subject key is {subject}.{key}, but every link to {subject} "
            f"references {subject}.{other} ({links}); Lethe links by the subject key only: make {other} the "
            "subject key"
        )
        return problems
    return problems + [
        f"{at('tables', t, 'subject')}: tables.{t}.subject: linked to {subject} by {policy.tables[t].subject}, "
        f"which references {subject}.{other}, not the subject key {subject}.{key}; Lethe links by the subject key "
        f"only: link {t} by a column with a foreign key to {subject}.{key}"
        for t, other in elsewhere.items()
    ]


def _identifier_problems(policy: Policy, schema: dict[str, dict[str, LiveColumn]], at: Any) -> list[str]:
    """The erasure finds people by the subject's identifier columns and checks every identifier-classed column
    (lethe.erasure.indexes) as one text value: each must exist, and be text, not an array or a document."""
    subject = policy.subject.table
    live = schema.get(subject, {})  # a subject table not in the database is reported as an unknown table
    problems: list[str] = []
    for kind, column in policy.subject.identifiers.items() if live else ():
        where = f"{at('subject', 'identifiers', kind)}: subject.identifiers.{kind}"
        if column not in live:
            problems.append(
                f"{where}: the erasure finds a person by {kind} in {subject}.{column}, which is not a column in "
                f"the database: name the column of {subject} that holds the {kind}"
            )
        elif kind != "user_id" and not _text(live[column]):
            problems.append(
                f"{where}: the erasure compares {subject}.{column} with the {kind} asked for as one text value, but "
                f"the column is {live[column].type}: name a text column of {subject} holding one {kind}"
            )
    for table, column, cls in identifier_columns(policy):
        if column in schema.get(table, {}) and not _text(schema[table][column]):
            problems.append(
                f"{at('tables', table, 'columns', column)}: tables.{table}.columns.{column}: class {cls} is checked "
                f"after every erasure as one text value (lower-cased or its digits), but the column is "
                f"{schema[table][column].type}: keep one {cls} per text column (several: one row each in a child "
                f"table), or give it a class other than {'/'.join(IDENTIFIER_CLASSES)} (the residue scan still "
                "reads arrays)"
            )
    return problems


def _text(column: LiveColumn) -> bool:
    return column.type.rsplit(".", 1)[-1] in TEXT_TYPES  # citext may come schema-qualified


def _clock_problems(policy: Policy, schema: dict[str, dict[str, LiveColumn]], at: Any) -> list[str]:
    """The event clocks the rules use must read columns that exist, and times where a time is meant."""
    events = {r.event for _, r in policy.rules() if r.event}
    problems: list[str] = []
    needs: list[tuple[str, str, str, bool]] = []  # (field, table, column, must be a time)
    if "account_closed" in events:
        c = policy.clock_account_closed()
        needs += [("account_closed", c.table, c.subject, False), ("account_closed", c.table, c.column, True)]
    if "consent_ended" in events:
        e = policy.clock_consent_ended()
        needs += [("consent_ended", e.table, e.subject, False), ("consent_ended", e.table, e.purpose, False)]
        needs += [("consent_ended", e.table, column, True) for column in e.ended]
    for clock, table, column, timed in needs:
        where = f"{at('clocks', clock)}: clocks.{clock}"
        if table not in schema:
            problems.append(f"{where}: the clock reads table {table!r}, which is not in the database")
        elif column not in schema[table]:
            problems.append(f"{where}: the clock reads {table}.{column}, which is not a column in the database")
        elif timed and schema[table][column].type not in CLOCK_TYPES:
            problems.append(
                f"{where}: the clock reads {table}.{column}, which is {schema[table][column].type}, not a timestamp"
            )
    return problems


def _placeholder_problems(policy: Policy, schema: dict[str, dict[str, LiveColumn]], at: Any) -> list[str]:
    """A placeholder subject row holds nothing but its key: the subject table must allow that."""
    if policy.subject.placeholder is None or policy.subject.table not in schema:
        return []
    blocked = sorted(
        c
        for c, live in schema[policy.subject.table].items()
        if live.not_null and not live.has_default and c != policy.subject.key
    )
    if not blocked:
        return []
    return [
        f"{at('subject', 'placeholder')}: subject.placeholder: the placeholder row has only its key, but "
        f"{policy.subject.table} has NOT NULL column(s) without a default: {', '.join(blocked)}"
    ]


def _impossible(policy: Policy, table: str, live: dict[str, LiveColumn], at: Any) -> list[str]:
    """Rules the database cannot carry out: a NULL into a NOT NULL column, a write into a generated column,
    a clock that is not a time."""
    rule = policy.tables[table]
    problems: list[str] = []
    for i, r in enumerate(rule.retention):
        clocks = [("after", r.after)] if r.event is None else []
        clocks += [(f"also_after.{k}", c) for k, c in enumerate(r.also_after)]
        for field, column in clocks:
            where = f"{at('tables', table, 'retention', i, field.split('.')[0])}: tables.{table}.retention.{i}.{field}"
            if column not in live:
                problems.append(
                    f"{where}: rule {r.name} counts from {column!r}, which is not a column of {table} in the database"
                )
            elif live[column].type not in CLOCK_TYPES:
                problems.append(
                    f"{where}: rule {r.name} counts from {column!r}, which is {live[column].type},"
                    " not a timestamp or date"
                )
        if r.cuts_link:
            problems += _link_problems(table, i, r.name, rule.link_pseudonym, live, at)
        for column, strategy in r.columns.items():
            if column in live and live[column].generated:
                problems.append(
                    f"{at('tables', table, 'retention', i, 'columns', column)}: "
                    f"tables.{table}.retention.{i}.columns.{column}: rule {r.name} writes {table}.{column}, "
                    f"{_GENERATED}"
                )
            elif strategy in NULLING and column in live and live[column].not_null:
                problems.append(
                    f"{at('tables', table, 'retention', i, 'columns', column)}: "
                    f"tables.{table}.retention.{i}.columns.{column}: rule {r.name} sets {column!r} to null, "
                    "but the column is NOT NULL"
                )
            elif strategy == "redact" and _too_short(live.get(column), masking.REDACTED):
                problems.append(
                    f"{at('tables', table, 'retention', i, 'columns', column)}: "
                    f"tables.{table}.retention.{i}.columns.{column}: rule {r.name} "
                    f"{_too_long(table, column, masking.REDACTED, live[column])}"
                )
    erasure_columns = rule.erasure.columns if rule.erasure else {}
    for column, strategy in erasure_columns.items():
        if column in live and live[column].generated:
            problems.append(
                f"{at('tables', table, 'erasure', 'columns', column)}: tables.{table}.erasure.columns.{column}: "
                f"erasure writes {table}.{column}, {_GENERATED}"
            )
        elif strategy in NULLING and column in live and live[column].not_null:
            problems.append(
                f"{at('tables', table, 'erasure', 'columns', column)}: tables.{table}.erasure.columns.{column}: "
                f"erasure sets {column!r} to null ({strategy}), but the column is NOT NULL"
                + (
                    ": use strategy placeholder (re-point it to the placeholder subject row, subject.placeholder)"
                    if strategy == "pseudonym_link"
                    else ""
                )
            )
        elif (written := _erasure_writes(policy, strategy)) is not None and _too_short(live.get(column), written):
            problems.append(
                f"{at('tables', table, 'erasure', 'columns', column)}: tables.{table}.erasure.columns.{column}: "
                f"erasure {_too_long(table, column, written, live[column])}"
            )
    pseudonym = next((c for c, cls in rule.columns.items() if cls == "pseudonym"), None)
    if rule.erasure and rule.erasure.action == "pseudonymise" and _too_short(live.get(pseudonym or ""), "x" * 64):
        assert pseudonym is not None
        problems.append(
            f"{at('tables', table, 'columns', pseudonym)}: tables.{table}.columns.{pseudonym}: erasure writes the "
            f"keyed pseudonym (64 hex characters) into {table}.{pseudonym}, which holds at most "
            f"{live[pseudonym].max_length}: widen it (text, or varchar(64) or more)"
        )
    return problems


def _erasure_writes(policy: Policy, strategy: str) -> str | None:
    """The text an erasure strategy writes whatever the row, when it is fixed."""
    if strategy == "redact":
        return masking.ERASED
    if strategy == "placeholder" and policy.subject.placeholder is not None:
        return str(policy.subject.placeholder)
    return None


def _too_short(column: LiveColumn | None, value: str) -> bool:
    return column is not None and column.max_length is not None and len(value) > column.max_length


def _too_long(table: str, column: str, value: str, live: LiveColumn) -> str:
    return (
        f"writes {value!r} ({len(value)} characters) into {table}.{column}, which holds at most {live.max_length} "
        "(PostgreSQL would refuse the purge or erasure): widen the column or use strategy null"
    )


_GENERATED = (
    "which is GENERATED ALWAYS: PostgreSQL refuses any value written into it; mask the column(s) it is computed "
    "from instead (PostgreSQL recomputes it)"
)


def _link_problems(
    table: str, i: int, rule: str, column: str | None, live: dict[str, LiveColumn], at: Any
) -> list[str]:
    """A rule that cuts the subject link writes the keyed pseudonym into a column of the company's table:
    Lethe never adds columns to the company's tables, so the column must be there already, as text."""
    where = f"{at('tables', table, 'retention', i)}: tables.{table}.retention.{i}"
    if column is None or column not in live:
        return [
            f"{where}: rule {rule} replaces the subject link by the keyed pseudonym, written into "
            f"{table}.{column}, which is not a column in the database: add it (text) to {table} in the "
            "company's schema (Lethe does not change the company's tables)"
        ]
    if live[column].generated:
        return [f"{where}: rule {rule} writes the keyed pseudonym into {table}.{column}, {_GENERATED}"]
    if live[column].type not in ("text", "character varying"):
        return [
            f"{where}: rule {rule} writes the keyed pseudonym (64 hex characters) into {table}.{column}, "
            f"which is {live[column].type}, not text"
        ]
    if _too_short(live[column], "x" * 64):
        return [
            f"{where}: rule {rule} writes the keyed pseudonym (64 hex characters) into {table}.{column}, "
            f"which holds at most {live[column].max_length}: widen it (text, or varchar(64) or more)"
        ]
    return []


# A trigger function's statements that write a table: what a warning can read from its source.
_WRITES = re.compile(
    r"\b(?:insert\s+into|update|merge\s+into)\s+((?:\"[^\"]+\"|\w+)(?:\s*\.\s*(?:\"[^\"]+\"|\w+))?)", re.I
)
_NOT_TABLES = {"set", "to", "of", "skip", "nowait", "only"}  # `DO UPDATE SET`, `FOR UPDATE SKIP LOCKED`...


def written_tables(source: str) -> list[str]:
    """The tables a trigger function's (or rule's) source inserts into, updates or merges into, as written."""
    found = (re.sub(r"\s+", "", target) for target in _WRITES.findall(source))
    return [t for t in found if t.lower() not in _NOT_TABLES]


def unnamed_schema_warnings(policy: Policy, cur: psycopg2.extensions.cursor) -> list[str]:
    """Schemas holding tables of which the policy names none: nothing Lethe does reads them (the check, the
    erasure's residue pass, retention), so a person in them outlives a certified erasure."""
    named = {PLATFORM_SCHEMA, lethe_schema()} | {s for s, _ in map(split, [*policy.tables, *policy.system_tables]) if s}
    cur.execute(
        "SELECT n.nspname, array_agg(c.relname ORDER BY c.relname) FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND NOT n.nspname = ANY(%s)"
        " AND n.nspname NOT IN ('information_schema') AND n.nspname NOT LIKE 'pg\\_%%'"
        " GROUP BY n.nspname ORDER BY n.nspname",
        (sorted(named),),
    )
    return [
        f"schema {schema} holds {len(tables)} table(s) the policy does not name"
        f" ({', '.join(f'{schema}.{t}' for t in tables[:5])}"
        f"{', ...' if len(tables) > 5 else ''}): no erasure, purge or check reads them, so a person there stays"
        f" after a certified erasure; name each as {schema}.<table> under `tables` or `system_tables`"
        for schema, tables in cur.fetchall()
    ]


def trigger_warnings(policy: Policy, cur: psycopg2.extensions.cursor) -> list[str]:
    """Warnings (not problems: nothing is wrong until a trigger copies a person) about the row triggers and
    rules that an erasure's UPDATE or DELETE on a policy table fires and that write a table no erasure rule
    covers, or whose writes cannot be read from their source (dynamic SQL, another language). An erasure
    that makes one copy a person there fails before its commit (lethe.erasure.side_effects)."""
    known = policy_oids(cur, policy.tables)
    erased = {oid for oid, name in known.items() if policy.tables[name].erasure is not None}
    if not erased:
        return []
    # tgtype bits: 1 row, 8 delete, 16 update; ev_type '2' update, '4' delete
    cur.execute(
        "SELECT t.tgrelid::oid, t.tgname, p.oid::regprocedure::text, l.lanname, p.prosrc,"
        " p.pronamespace::regnamespace::text"
        " FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid JOIN pg_language l ON l.oid = p.prolang"
        " WHERE NOT t.tgisinternal AND t.tgenabled <> 'D' AND t.tgtype & 1 = 1 AND t.tgtype & 24 <> 0"
        " AND t.tgrelid = ANY(%(oids)s::oid[])"
        " UNION ALL SELECT r.ev_class::oid, r.rulename, NULL, 'sql', pg_get_ruledef(r.oid), NULL FROM pg_rewrite r"
        " WHERE r.rulename <> '_RETURN' AND r.ev_enabled <> 'D' AND r.ev_type IN ('2', '4')"
        " AND r.ev_class = ANY(%(oids)s::oid[]) ORDER BY 1, 2",
        {"oids": sorted(erased)},
    )
    warnings: list[str] = []
    for oid, name, function, language, source, schema in cur.fetchall():
        what = f"trigger {name} ({function})" if function else f"rule {name}"
        where = f"tables.{known[int(oid)]}: {what} runs when an erasure updates or deletes its rows"
        source = (source or "") if function else (source or "").partition(" DO ")[2]  # a rule: what it does
        if language not in ("plpgsql", "sql") or (function and re.search(r"\bexecute\b", source, re.I)):
            warnings.append(
                f"{where}; what it writes cannot be read from its source: if it copies the row to another table,"
                " give that table an erasure rule (an erasure that copies a person there fails before its commit)"
            )
            continue
        uncovered = set()
        for lit in written_tables(source):
            cur.execute(
                "SELECT coalesce(to_regclass(%s), to_regclass(%s))::oid",
                (lit, f"{schema}.{lit}" if schema and "." not in lit else lit),
            )
            found = cur.fetchone()[0]  # type: ignore[index]
            if found is None or (int(found) not in known or policy.tables[known[int(found)]].erasure is None):
                uncovered.add(lit if found is None else _regclass(cur, int(found)))
        if uncovered:
            warnings.append(
                f"{where} and writes {', '.join(sorted(uncovered))}, which no erasure rule covers: an erasure that"
                " makes it copy a person there fails before its commit; give the table an erasure rule, or make the"
                " trigger skip Lethe's erasures"
            )
    return warnings


def _regclass(cur: psycopg2.extensions.cursor, oid: int) -> str:
    cur.execute("SELECT %s::oid::regclass::text", (oid,))
    return str(cur.fetchone()[0])  # type: ignore[index]
