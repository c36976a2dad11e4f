"""The SQL that says which rows a retention rule acts on. Plan, executor and checks share it.

For a rule on table T, a row is acted on when it is
- expired: the rule's clock (a column of the row, or an event of its subject)
  started before the rule's cutoff;
- unheld: its subject has no legal hold with released_at IS NULL;
- for deleting rules, unreferenced: no row of another table that survives this
  run still points at it through a foreign key (such rows wait for a later night);
- not already taken by an earlier deleting rule on T, nor (for anonymise) by an
  earlier anonymise rule masking the same columns the same way (so rules never
  overlap and per-rule counts add up), and for anonymise, not deleted by this run
  anyway and not anonymised already (so a rerun counts nothing twice).

Cutoffs and consent purposes are query parameters (`params()`); identifiers
from the policy are quoted with sql.Identifier.

A row whose subject link a rule already cut (pseudonym_link) is still its
subject's: event clocks and holds recognise it through its keyed pseudonym
(lethe.retention.links, the pseudonyms as parameters).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from lethe import holds
from lethe.policy import Policy, RetentionRule
from lethe.relations import ForeignKey, relation
from lethe.retention.links import Links
from psycopg2 import sql

DELETING = ("delete", "drop_partitions")
REDACTED = "[redacted]"  # lethe.masking.REDACTED
MAX_DEPTH = 8

_TRUE = sql.SQL("true")


def _and(parts: Iterable[sql.Composable]) -> sql.Composable:
    parts = list(parts)
    return sql.SQL(" AND ").join(parts) if parts else _TRUE


class Predicates:
    def __init__(
        self,
        policy: Policy,
        cutoffs: dict[str, datetime],
        foreign_keys: list[ForeignKey],
        active: Iterable[str],
        held_ids_param: bool = False,
        key_type: str = "bigint",
        links: Links | None = None,
    ) -> None:
        """`held_ids_param`: held people come as the %(held_ids)s parameter (the executor reads them
        under a lock per batch), a constant array being cheaper per row than a subquery.
        `key_type`: the subject key's SQL type; held keys (text in Lethe's holds) are cast to it."""
        self.policy = policy
        self.key_type = key_type
        self.cutoffs = cutoffs
        self.fks = foreign_keys
        self.active = set(active)
        self.held_ids_param = held_ids_param
        self.links = links or Links()

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {f"c_{name}": cutoff for name, cutoff in self.cutoffs.items()}
        params.update(self.links.params())
        for _, rule in self.policy.rules():
            if rule.consent_purpose:
                params[f"p_{rule.name}"] = rule.consent_purpose
            if rule.unless_consent:
                params[f"u_{rule.name}"] = rule.unless_consent
        return params

    def rules_on(self, table: str) -> list[RetentionRule]:
        return [r for r in self.policy.tables[table].retention if r.name in self.active]

    def _subject(self, table: str, alias: str) -> sql.Composable | None:
        column = self.policy.tables[table].subject
        return sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(column)) if column else None

    def _whose(self, table: str, alias: str) -> sql.Composable | None:
        """The row's subject key: its link, or, once a rule cut it, the key whose pseudonym the row keeps
        (among the people the run must recognise: lethe.retention.links)."""
        subject = self._subject(table, alias)
        column = self.policy.tables[table].link_pseudonym
        if subject is None or column is None:
            return subject
        return sql.SQL(
            "coalesce({s}, (SELECT m.k::{kt} FROM unnest(%(link_subjects)s::text[], %(link_pseudonyms)s::text[])"
            " AS m(k, p) WHERE m.p = {a}.{c} LIMIT 1))"
        ).format(s=subject, kt=sql.SQL(self.key_type), a=sql.Identifier(alias), c=sql.Identifier(column))

    def _held_pseudonym(self, table: str, alias: str) -> sql.Composable:
        column = self.policy.tables[table].link_pseudonym
        if column is None:
            return sql.SQL("false")
        return sql.SQL("coalesce({}.{} = ANY(%(held_pseudonyms)s::text[]), false)").format(
            sql.Identifier(alias), sql.Identifier(column)
        )

    def expired(self, table: str, rule: RetentionRule, alias: str) -> sql.Composable:
        """The rule's clock started before its cutoff (never NULL, so it can be negated safely)."""
        cutoff = sql.Placeholder(f"c_{rule.name}")
        subject = self._whose(table, alias) or sql.SQL("NULL")  # the model requires a subject for events
        if rule.event == "account_closed":
            clock = self.policy.clock_account_closed()
            inner = sql.SQL("EXISTS (SELECT 1 FROM {} s WHERE s.{} = {} AND s.{} < {})").format(
                relation(clock.table), sql.Identifier(clock.subject), subject, sql.Identifier(clock.column), cutoff
            )
        elif rule.event == "consent_ended":
            consent = self.policy.clock_consent_ended()
            ended = sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c)) for c in consent.ended)
            inner = sql.SQL("EXISTS (SELECT 1 FROM {} s WHERE s.{} = {} AND s.{} = {} AND least({}) < {})").format(
                relation(consent.table),
                sql.Identifier(consent.subject),
                subject,
                sql.Identifier(consent.purpose),
                sql.Placeholder(f"p_{rule.name}"),
                ended,
                cutoff,
            )
        else:
            inner = sql.SQL("{} < {}").format(self.clock(rule, alias), cutoff)
            if rule.unless_consent:
                inner = sql.SQL("{} AND {}").format(inner, self.unconsented(rule, subject, alias))
        return sql.SQL("coalesce(({}), false)").format(inner)

    def clock(self, rule: RetentionRule, alias: str) -> sql.Composable:
        """When a row clock starts: the `after` column, or the latest of it and `also_after` (nulls
        ignored), moved to the end of its financial year for `starts: end_of_financial_year`."""
        columns = [
            sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(c)) for c in (rule.after, *rule.also_after)
        ]
        at = columns[0] if len(columns) == 1 else sql.SQL("greatest({})").format(sql.SQL(", ").join(columns))
        if rule.starts == "end_of_financial_year":
            fy = self.policy.financial_year
            # The local moment shifted back to a January-started year, truncated to it, plus a year and the
            # shift again: the first moment of the next financial year, in the policy's time zone.
            shift = sql.Literal(f"{fy.first_month - 1} months")
            at = sql.SQL(
                "((date_trunc('year', ({at} AT TIME ZONE {tz}) - {shift}::interval) + interval '1 year'"
                " + {shift}::interval) AT TIME ZONE {tz})"
            ).format(at=at, tz=sql.Literal(fy.time_zone), shift=shift)
        return at

    def unconsented(self, rule: RetentionRule, subject: sql.Composable, alias: str) -> sql.Composable:
        """A row of a known person whose consent to the rule's purpose did not cover the row's time:
        never granted, granted after it, or withdrawn or objected to at or before it. Rows of no one
        known (an anonymous visitor) have no consent record to test and are left to the row's clock."""
        at = sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(rule.after))
        consent = self.policy.clock_consent_ended()
        ended = sql.SQL(", ").join(sql.SQL("k.{}").format(sql.Identifier(c)) for c in consent.ended)
        return sql.SQL(
            "{subject} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {consents} k WHERE k.{ks} = {subject}"
            " AND k.{kp} = {purpose} AND k.granted_at <= {at}"
            " AND coalesce(least({ended}) > {at}, true))"
        ).format(
            subject=subject,
            consents=relation(consent.table),
            ks=sql.Identifier(consent.subject),
            kp=sql.Identifier(consent.purpose),
            purpose=sql.Placeholder(f"u_{rule.name}"),
            at=at,
            ended=ended,
        )

    def held(self, table: str, alias: str) -> sql.Composable:
        subject = self._subject(table, alias)
        if subject is None:
            return sql.SQL("false")
        if self.held_ids_param:
            return sql.SQL("(coalesce({} = ANY(%(held_ids)s::text[]::{}[]), false) OR {})").format(
                subject, sql.SQL(self.key_type), self._held_pseudonym(table, alias)
            )
        # IN over a subquery becomes one hashed lookup per statement (holds are few), not a probe per row.
        return sql.SQL("(coalesce({} IN ({}), false) OR {})").format(
            subject, holds.active_keys_sql(self.key_type), self._held_pseudonym(table, alias)
        )

    def held_where(self, table: str, alias: str) -> sql.Composable:
        """`held` for a WHERE clause only: a bare semi-join the planner can drive through the subject index."""
        subject = self._subject(table, alias)
        if subject is None:
            return sql.SQL("false")
        return sql.SQL("({} IN ({}) OR {})").format(
            subject, holds.active_keys_sql(self.key_type), self._held_pseudonym(table, alias)
        )

    def unheld(self, table: str, alias: str) -> sql.Composable:
        return sql.SQL("NOT {}").format(self.held(table, alias))

    def deleted(self, table: str, alias: str, depth: int = 0) -> sql.Composable:
        """Rows of `table` that this run deletes (union of its active deleting rules)."""
        rules = [r for r in self.rules_on(table) if r.action in DELETING]
        if not rules:
            return sql.SQL("false")
        expired = sql.SQL(" OR ").join(self.expired(table, r, alias) for r in rules)
        return _and(
            [sql.SQL("({})").format(expired), self.unheld(table, alias), self.unreferenced(table, alias, depth)]
        )

    def unreferenced(self, table: str, alias: str, depth: int = 0) -> sql.Composable:
        """No row that survives this run references the row through a foreign key."""
        if depth > MAX_DEPTH:
            raise ValueError(f"foreign keys around {table!r} nest deeper than {MAX_DEPTH} levels (a cycle?)")
        parts = []
        for fk in self.fks:
            if fk.parent != table:
                continue
            child = f"r{depth + 1}"
            join = _and(
                sql.SQL("{}.{} = {}.{}").format(
                    sql.Identifier(child), sql.Identifier(cc), sql.Identifier(alias), sql.Identifier(pc)
                )
                for cc, pc in zip(fk.child_columns, fk.parent_columns, strict=True)
            )
            # A row of the same table (a manager_id) counts as surviving: whether it goes this run depends on
            # rows of the same table again, without end; its referent goes the night after it.
            survives = (
                sql.SQL("NOT ({})").format(self.deleted(fk.child, child, depth + 1))
                if fk.child in self.policy.tables and fk.child != table
                else _TRUE
            )
            parts.append(
                sql.SQL("NOT EXISTS (SELECT 1 FROM {} {} WHERE {} AND {})").format(
                    relation(fk.child), sql.Identifier(child), join, survives
                )
            )
        return _and(parts)

    def _not_earlier(self, table: str, rule: RetentionRule, alias: str) -> list[sql.Composable]:
        parts: list[sql.Composable] = []
        for other in self.rules_on(table):
            if other.name == rule.name:
                break
            if other.action in DELETING:
                parts.append(sql.SQL("NOT {}").format(self.expired(table, other, alias)))
            elif rule.action == "anonymise" and other.columns.items() >= rule.columns.items():
                # An earlier rule masking the same columns the same way takes the rows both have expired,
                # so each row is counted once and the later rule's plan matches what it does.
                parts.append(sql.SQL("NOT {}").format(self.expired(table, other, alias)))
        return parts

    def anonymised(self, table: str, rule: RetentionRule, alias: str) -> sql.Composable:
        """Every column of an anonymise rule already has its anonymised form."""
        parts = []
        for column, strategy in rule.columns.items():
            col = sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(column))
            if strategy in ("null", "pseudonym_link"):
                parts.append(sql.SQL("{} IS NULL").format(col))
            else:
                value = anonymised_value(column, strategy, alias, self.policy.tables[table].subject)
                parts.append(sql.SQL("({} IS NULL OR {} = {})").format(col, col, value))
        return _and(parts)

    def matched(self, table: str, rule: RetentionRule, alias: str = "t") -> sql.Composable:
        """The rows this rule acts on in this run."""
        parts = [self.expired(table, rule, alias), self.unheld(table, alias), *self._not_earlier(table, rule, alias)]
        if rule.action in DELETING:
            parts.append(self.unreferenced(table, alias))
        else:
            parts.append(sql.SQL("NOT ({})").format(self.deleted(table, alias)))
            parts.append(sql.SQL("NOT ({})").format(self.anonymised(table, rule, alias)))
        return _and(parts)

    def held_expired(self, table: str, rule: RetentionRule, alias: str = "t") -> sql.Composable:
        """Expired rows the rule leaves alone because of a legal hold."""
        return _and([self.expired(table, rule, alias), self.held(table, alias), *self._not_earlier(table, rule, alias)])

    def referenced_expired(self, table: str, rule: RetentionRule, alias: str = "t") -> sql.Composable:
        """Expired, unheld rows a deleting rule must leave until the rows referencing them are gone."""
        if rule.action not in DELETING:
            return sql.SQL("false")
        return _and(
            [
                self.expired(table, rule, alias),
                self.unheld(table, alias),
                *self._not_earlier(table, rule, alias),
                sql.SQL("NOT ({})").format(self.unreferenced(table, alias)),
            ]
        )


def anonymised_value(
    column: str, strategy: str, alias: str | None = None, subject: str | None = None
) -> sql.Composable:
    """The SQL expression a column is rewritten to (`subject`: the table's subject column, for unique_redact);
    the strategies are lethe.masking's, with retention's replacement text."""
    from lethe import masking

    # pseudonym_link: NULL here; the executor writes the keyed pseudonym beside it.
    if strategy not in ("null", "redact", "unique_redact", "truncate_ip", "pseudonym_link"):
        raise ValueError(
            f"strategy {strategy!r} is not a retention anonymisation"
            " (use null, redact, unique_redact, truncate_ip or pseudonym_link)"
        )
    col = sql.Identifier(alias, column) if alias else sql.Identifier(column)
    key = None
    if subject is not None:
        key = sql.Identifier(alias, subject) if alias else sql.Identifier(subject)
    try:
        return masking.sql_value(strategy, col, replacement=REDACTED, subject=key)
    except masking.UnknownStrategy as exc:
        raise ValueError(str(exc)) from None
