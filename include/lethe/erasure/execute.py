"""Apply a plan: delete, pseudonymise, cut links of retained rows, redact mentions; then the tombstone.

Runs in the caller's transaction, children first. Every statement returns the
owner of each row it touched, so the counts checked against the plan are what
the database did, not what the plan hoped.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Any

import psycopg2.extensions
import psycopg2.extras
from lethe import holds, ledger, masking, relations, residue
from lethe.db import table as lethe_table
from lethe.erasure import discovery, side_effects, sweep
from lethe.erasure.discovery import ErasureGraphError, Graph
from lethe.erasure.plan import Work
from lethe.policy import Policy
from lethe.policy.model import LINK_STRATEGIES
from lethe.pseudonym import folded_subject_pseudonym, pseudonym
from lethe.relations import ForeignKey, relation
from psycopg2 import sql

REDACTED = masking.ERASED
TARGETS = sql.Identifier("lethe_erase_targets")
KEPT_PSEUDONYMS = "kept_pseudonyms"  # Lethe's table of kept rows' pseudonyms (migration 095)


def _pk_match(pk: tuple[str, ...], left: str, right: str) -> sql.Composable:
    return sql.SQL(" AND ").join(
        sql.SQL("{}.{} = {}.{}").format(
            sql.Identifier(left), sql.Identifier(c), sql.Identifier(right), sql.Identifier(c)
        )
        for c in pk
    )


def _pseudonym_column(policy: Policy, table: str) -> str | None:
    return next((c for c, cls in policy.tables[table].columns.items() if cls == "pseudonym"), None)


def _strategy(column: str, strategy: str, placeholder: str | None = None) -> sql.Composable:
    """`column = <masked value>` by lethe.masking (the same strategies backups and restores apply)."""
    col = sql.Identifier(column)
    if strategy == "placeholder":  # a NOT NULL link: re-pointed to the placeholder subject row
        strategy = masking.PLACEHOLDER_PREFIX + str(placeholder)
    if strategy == "unique_redact":
        raise ErasureGraphError(f"unknown erasure strategy {strategy!r} for column {column}")
    try:
        return sql.SQL("{} = {}").format(col, masking.sql_value(strategy, col, replacement=REDACTED))
    except masking.UnknownStrategy:
        raise ErasureGraphError(f"unknown erasure strategy {strategy!r} for column {column}") from None


def _counted(cur: psycopg2.extensions.cursor, query: sql.Composable) -> Counter[str]:
    cur.execute(query)
    return Counter(str(row[0]) for row in cur.fetchall())


def ensure_placeholder(cur: psycopg2.extensions.cursor, policy: Policy) -> None:
    """The one placeholder subject row, with nothing but its key, that re-pointed NOT NULL links point to.

    OVERRIDING SYSTEM VALUE: a key GENERATED ALWAYS AS IDENTITY takes the given value too (a no-op otherwise)."""
    cur.execute(
        sql.SQL("INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE VALUES (%s) ON CONFLICT DO NOTHING").format(
            relation(policy.subject.table), sql.Identifier(policy.subject.key)
        ),
        (policy.subject.placeholder,),
    )


def _keep_pseudonyms(cur: psycopg2.extensions.cursor, table: str, pk: tuple[str, ...]) -> None:
    """Record the pseudonym of each kept row of `table` (no pseudonym column of its own) in Lethe's schema."""
    cur.execute(
        sql.SQL(
            "INSERT INTO {k} (table_name, row_key, subject_pseudonym)"
            " SELECT %s, jsonb_build_object({key}), g.pseudonym FROM {e} e JOIN {g} g ON g.owner = e.owner"
            " ON CONFLICT (table_name, row_key) DO UPDATE SET subject_pseudonym = EXCLUDED.subject_pseudonym"
        ).format(
            k=lethe_table(KEPT_PSEUDONYMS),
            key=sql.SQL(", ").join(sql.SQL("{}, e.{}").format(sql.Literal(c), sql.Identifier(c)) for c in pk),
            e=discovery.temp_name(table),
            g=TARGETS,
        ),
        (table,),
    )


def apply(
    cur: psycopg2.extensions.cursor,
    policy: Policy,
    graph: Graph,
    works: list[Work],
    mentions: dict[tuple[str, str], list[tuple[tuple[Any, ...], str, set[str]]]],
) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]]]:
    """Erase the people of `works` whose outcome is 'erased'; return (rows per owner and table, redactions)."""
    targets = [(w.subject.user_id, w.pseudonym) for w in works if w.outcome == "erased" and w.subject]
    done: dict[str, dict[str, int]] = defaultdict(dict)
    redacted: dict[str, dict[str, int]] = defaultdict(dict)
    if not targets:
        return done, redacted
    cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(TARGETS))
    cur.execute(sql.SQL("CREATE TEMP TABLE {} (owner text PRIMARY KEY, pseudonym text) ON COMMIT DROP").format(TARGETS))
    psycopg2.extras.execute_values(cur, sql.SQL("INSERT INTO {} VALUES %s").format(TARGETS).as_string(cur), targets)
    cur.execute(sql.SQL("ANALYZE {}").format(TARGETS))  # statistics for the joins below (discovery._analyse)

    deleted = {t for t in graph.tables if policy.tables[t].erasure.action == "delete"}  # type: ignore[union-attr]
    # Read now, with the graph's tables locked (plan.build read them): no partition of theirs is detached, and no
    # table referencing them dropped, before this transaction ends.
    expired = relations.expired_partition_keys(cur, policy.tables)
    order = [*graph.deletion_order, *graph.referenced]  # the rows the person's rows pointed to come last
    if any("placeholder" in policy.tables[t].erasure.columns.values() for t in order):  # type: ignore[union-attr]
        ensure_placeholder(cur, policy)
    for table in order:
        erasure = policy.tables[table].erasure
        assert erasure is not None
        _cut_links_to_people(cur, policy, graph, table)
        pk = graph.primary_keys[table]
        linked = sql.SQL("FROM {e} e JOIN {g} g ON g.owner = e.owner WHERE {m}").format(
            e=discovery.temp_name(table), g=TARGETS, m=_pk_match(pk, "t", "e")
        )
        if erasure.action == "delete":
            _cut_links_to_self(cur, graph, table)
            _delete_expired_rows(cur, graph, table, expired)
            counts = _counted(
                cur,
                sql.SQL(
                    "DELETE FROM {t} t USING {e} e JOIN {g} g ON g.owner = e.owner WHERE {m} RETURNING e.owner"
                ).format(t=relation(table), e=discovery.temp_name(table), g=TARGETS, m=_pk_match(pk, "t", "e")),
            )
        else:
            _cut_links(cur, graph, table, deleted, set(erasure.columns))
            sets = [_strategy(c, s, policy.subject.placeholder) for c, s in erasure.columns.items()]
            pcol = _pseudonym_column(policy, table)
            if pcol:
                sets.append(sql.SQL("{} = g.pseudonym").format(sql.Identifier(pcol)))
            elif any(s in LINK_STRATEGIES for s in erasure.columns.values()):
                _keep_pseudonyms(cur, table, pk)  # nowhere in the row for it: Lethe's schema keeps it
            if not sets:  # retained as is: nothing to write, the rows are the plan's count
                cur.execute(
                    sql.SQL("SELECT e.owner FROM {e} e JOIN {g} g ON g.owner = e.owner").format(
                        e=discovery.temp_name(table), g=TARGETS
                    )
                )
                counts = Counter(str(r[0]) for r in cur.fetchall())
            else:
                counts = _counted(
                    cur,
                    sql.SQL("UPDATE {t} t SET {s} {l} RETURNING e.owner").format(
                        t=relation(table), s=sql.SQL(", ").join(sets), l=linked
                    ),
                )
        for owner, n in counts.items():
            done[owner][table] = n
    holds.forget_subjects(cur, [(str(owner), p) for owner, p in targets if p is not None], policy)

    target_ids = {owner for owner, _ in targets}
    terms = {w.subject.user_id: w.subject.search_terms() for w in works if w.outcome == "erased" and w.subject}
    for (table, column), hits in mentions.items():
        pk = graph.primary_keys[table]
        where = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in pk)
        for key, text, owners in hits:
            mine = owners & target_ids
            if not mine:
                continue
            words = sorted({t for o in mine for t in terms[o]})
            cur.execute(
                sql.SQL("UPDATE {} SET {} = %s WHERE {}").format(relation(table), sql.Identifier(column), where),
                (discovery.redact(text, words, REDACTED), *key),
            )
            for owner in mine:
                redacted[owner][f"{table}.{column}"] = redacted[owner].get(f"{table}.{column}", 0) + 1
    _sweep(cur, policy, works)
    _side_effects(cur, policy, graph, works)
    return done, redacted


def _sweep(cur: psycopg2.extensions.cursor, policy: Policy, works: list[Work]) -> None:
    """What the residue scanner still finds of the people, by value anywhere, is handled too (lethe.erasure.sweep)."""
    erasing = [w for w in works if w.outcome == "erased" and w.subject and w.subject.footprint]
    if not erasing:
        return
    index = residue.PlainIndex([w.subject.footprint for w in erasing if w.subject])
    people = {w.subject.user_id for w in erasing if w.subject}
    handled = sweep.sweep(cur, policy, index, people, sweep.scanned_columns([w.subject for w in erasing if w.subject]))
    for w in erasing:
        assert w.subject is not None
        w.residue = handled.get(w.subject.user_id, {})


def _side_effects(cur: psycopg2.extensions.cursor, policy: Policy, graph: Graph, works: list[Work]) -> None:
    """What the statements above made triggers copy of the people elsewhere is erased too, or the erasure
    fails before its commit (lethe.erasure.side_effects)."""
    erasing = [w for w in works if w.outcome == "erased" and w.subject and w.subject.footprint]
    handled = side_effects.handle(cur, policy, graph, [w.subject for w in erasing if w.subject])
    for w in erasing:
        assert w.subject is not None
        for key, n in handled.get(w.subject.user_id, {}).items():
            w.residue[key] = w.residue.get(key, 0) + n


def _null_link(
    cur: psycopg2.extensions.cursor, graph: Graph, table: str, fk: ForeignKey, rows: sql.Composable, problem: str
) -> None:
    """Null `fk`'s columns in the rows of `table` (alias t) that point at a row of `fk.parent` being erased and
    satisfy `rows`; a NOT NULL column among them raises `problem` (its `{columns}` filled in)."""
    blocked = [c for c in fk.child_columns if c in graph.not_null.get(table, set())]
    if blocked:
        raise ErasureGraphError(problem.format(columns=", ".join(blocked)))
    cur.execute(
        sql.SQL(
            "UPDATE {t} t SET {s} FROM {p} p JOIN {pe} pe ON {ppk} JOIN {g} g ON g.owner = pe.owner"
            " WHERE {ref} AND {rows}"
        ).format(
            t=relation(table),
            s=sql.SQL(", ").join(sql.SQL("{} = NULL").format(sql.Identifier(c)) for c in fk.child_columns),
            p=relation(fk.parent),
            pe=discovery.temp_name(fk.parent),
            ppk=_pk_match(graph.primary_keys[fk.parent], "p", "pe"),
            g=TARGETS,
            ref=sql.SQL(" AND ").join(
                sql.SQL("t.{} = p.{}").format(sql.Identifier(c), sql.Identifier(pc))
                for c, pc in zip(fk.child_columns, fk.parent_columns, strict=True)
            ),
            rows=rows,
        )
    )


def _delete_expired_rows(cur: psycopg2.extensions.cursor, graph: Graph, table: str, expired: list[ForeignKey]) -> None:
    """Rows of an expired partition retention detached and is dropping (`<name>__expired`) that point at a row of
    `table` being deleted: deleted first (past retention, they go with the partition anyway, and are not counted).
    The detached partition keeps its foreign keys: the erasure failed on them until the purge's DROP."""
    for fk in expired:
        if fk.parent != table:
            continue
        cur.execute(
            sql.SQL(
                "DELETE FROM {c} c USING {p} p JOIN {e} e ON {ppk} JOIN {g} g ON g.owner = e.owner WHERE {ref}"
            ).format(
                c=relation(fk.child),
                p=relation(table),
                e=discovery.temp_name(table),
                ppk=_pk_match(graph.primary_keys[table], "p", "e"),
                g=TARGETS,
                ref=sql.SQL(" AND ").join(
                    sql.SQL("c.{} = p.{}").format(sql.Identifier(cc), sql.Identifier(pc))
                    for cc, pc in zip(fk.child_columns, fk.parent_columns, strict=True)
                ),
            )
        )


def _cut_links(cur: psycopg2.extensions.cursor, graph: Graph, table: str, deleted: set[str], handled: set[str]) -> None:
    """A kept row must not point at a row being deleted: null that link (it must be nullable)."""
    for fk in graph.parents_of(table):
        if fk.parent not in deleted or set(fk.child_columns) <= handled:
            continue
        kept = sql.SQL("EXISTS (SELECT 1 FROM {e} e WHERE {tpk})").format(
            e=discovery.temp_name(table), tpk=_pk_match(graph.primary_keys[table], "t", "e")
        )
        problem = (
            f"{table} keeps rows that reference {fk.parent} via {{columns}} (NOT NULL): "
            f"make the column nullable or give {table} a delete action"
        )
        _null_link(cur, graph, table, fk, kept, problem)


def _cut_links_to_people(cur: psycopg2.extensions.cursor, policy: Policy, graph: Graph, table: str) -> None:
    """An erased person named in another person's row (Graph.second_links: a ticket's assignee_id): null that
    link before the person's row goes, rather than delete someone else's row or fail on the foreign key."""
    link = policy.tables[table].subject
    for fk in graph.second_links(table, link):
        problem = (
            f"{table}.{{columns}} names a {graph.subject_table} row (NOT NULL) beside the rows' own link {link}:"
            " an erased person there can be neither kept nor cut; make it nullable"
        )
        _null_link(cur, graph, table, fk, sql.SQL("true"), problem)


def _cut_links_to_self(cur: psycopg2.extensions.cursor, graph: Graph, table: str) -> None:
    """Rows of `table` that point at one of its rows being deleted (a report's manager_id) and are not deleted
    themselves are someone else's: null that link (it must be nullable) rather than fail or cascade."""
    others = sql.SQL("NOT EXISTS (SELECT 1 FROM {e} x JOIN {g} h ON h.owner = x.owner WHERE {tpk})").format(
        e=discovery.temp_name(table), g=TARGETS, tpk=_pk_match(graph.primary_keys[table], "t", "x")
    )
    for fk in graph.foreign_keys:
        if fk.child == table and fk.parent == table:
            problem = (
                f"{table} links to itself via {{columns}} (NOT NULL): other people's rows pointing at an erased "
                "person's row could be neither kept nor deleted; make the column nullable"
            )
            _null_link(cur, graph, table, fk, others, problem)


def write_tombstones(cur: psycopg2.extensions.cursor, key: bytes, works: list[Work], fold_case: bool = False) -> int:
    """One tombstone per erased person: keyed pseudonyms of the key and of every identifier. `fold_case`: the key
    is citext (relations.key_folds_case): the pseudonym of its case-folded spelling is kept too, so her rows coming
    back spelt in a case none of hers stored are still found hers (the audit, a restore's check)."""
    erased = [w for w in works if w.outcome == "erased" and w.subject]
    folded = relations.folded_keys(cur, [w.subject.user_id for w in erased if w.subject]) if fold_case else {}
    rows = []
    for w in erased:
        if not w.subject:
            continue
        ids = {pseudonym(key, k, v) for k, v in w.subject.identifiers.items() if v and k != "user_id"}
        if w.subject.user_id in folded:
            ids.add(folded_subject_pseudonym(key, folded[w.subject.user_id]))
        if w.subject.footprint:  # every spelling the scanner matched: backups and audits match the same way
            ids |= set(w.subject.footprint.pseudonyms(key))
        terms = residue.tombstone_prefilter(key, w.subject.footprint, w.subject.identifiers)
        rows.append((w.pseudonym, sorted(ids), terms, w.request_id, json.dumps(w.rows)))
    if rows:
        psycopg2.extras.execute_values(
            cur,
            "INSERT INTO erasure_tombstones"
            " (subject_pseudonym, identifier_pseudonyms, prefilter_pseudonyms, request_id, counts)"
            " VALUES %s ON CONFLICT (subject_pseudonym) DO NOTHING",
            rows,
            template="(%s, %s::text[], %s::text[], %s::uuid, %s::jsonb)",
        )
    return len(rows)


def record(
    cur: psycopg2.extensions.cursor, works: list[Work], checks: dict[str, Any], written: list[str] | None = None
) -> None:
    """Ledger entry and request detail for each processed request: tables and counts only (and `vacuum`:
    the relations the transaction wrote, lethe.erasure.vacuum.written)."""
    for w in works:
        detail = {**w.as_detail(), "stage": "erased", "checks": checks}
        if written is not None:
            detail["vacuum"] = written
        if w.outcome in ("erased", "same_subject", "already_erased"):
            ledger.append(
                cur,
                "erasure",
                {"request_id": w.request_id, "outcome": w.outcome, "tables": w.rows, "redactions": w.redactions},
            )
        cur.execute(  # the state is moved by lethe.erasure.lifecycle, in the same transaction
            # The new detail replaces the plan's, but who approved (or refused) it and which run held it stay.
            "UPDATE erasure_requests SET subject_pseudonym = %s, detail = jsonb_strip_nulls(jsonb_build_object("
            "'approval', detail->'approval', 'approval_by', detail->'approval_by', 'run_id', detail->'run_id'))"
            " || %s::jsonb WHERE request_id = %s",
            (w.pseudonym, json.dumps(detail), w.request_id),
        )
