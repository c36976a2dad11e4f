"""The retention plan: for each rule, its cutoff, what it will act on and what it must leave.

The plan is plain data (dataclasses <-> JSON, so it travels as an XCom), made
from the policy and `now` (the run's logical date). The executor acts on it;
printed, it is the dry run.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg2.errors
import psycopg2.extensions
from lethe import holds
from lethe.db import ConfigurationError
from lethe.policy import Policy, RetentionRule, load_policy
from lethe.relations import TEXT_TYPES, ForeignKey, relation
from lethe.retention import catalog, links
from lethe.retention.predicates import DELETING, Predicates, anonymised_value
from psycopg2 import sql

# Tables referencing other tables are purged first: children in stage 0, their parents after.
MAX_STAGES = 4  # a chain such as consents -> customers -> addresses, plus one spare


class PlanError(ConfigurationError):
    """The policy cannot be turned into a retention plan on this database; the message says where."""


@dataclass
class PartitionPlan:
    name: str
    bound: str  # PostgreSQL's FOR VALUES clause, to re-attach the partition with its held rows
    upper: str
    rows: int  # unheld rows dropped with it (counted when planning)
    held: int  # rows of held people kept: moved into a fresh partition for the same range
    # An earlier run detached this expired partition and died before dropping it: only the DROP is left
    # (its held rows were already copied back into the table in the transaction that detached it).
    detached: bool = False
    schema: str = ""  # the partition's schema; empty in a plan made before plans carried it

    def relation(self, suffix: str = "") -> sql.Identifier:
        """The partition, or `<name><suffix>` beside it, qualified: its schema need not be on the search path."""
        name = self.name + suffix
        return sql.Identifier(self.schema, name) if self.schema else sql.Identifier(name)


@dataclass
class RulePlan:
    rule: str
    table: str
    action: str
    after: str
    keep: str
    stage: int
    rule_cutoff: str
    cutoff: str  # the rule cutoff, clamped by the aggregation watermark where one applies
    watermark: str | None
    columns: dict[str, str]
    key: str  # batching column: the first primary-key column
    integer_key: bool
    key_min: int | None
    key_max: int | None
    rows: int  # rows the rule will delete or anonymise (partition rows included)
    held: int  # expired rows kept because their subject is under legal hold
    referenced: int  # expired rows kept because rows kept longer still reference them
    partitions: list[PartitionPlan] = field(default_factory=list)


@dataclass
class Plan:
    plan_id: str
    now: str
    policy_version: str
    policy_digest: str
    policy_path: str
    dry_run: bool
    rules: list[RulePlan]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        rules = [
            RulePlan(**{**r, "partitions": [PartitionPlan(**p) for p in r.get("partitions", [])]})
            for r in data["rules"]
        ]
        return cls(**{**data, "rules": rules})

    def rule(self, name: str) -> RulePlan:
        for rp in self.rules:
            if rp.rule == name:
                return rp
        raise KeyError(f"rule {name!r} is not in retention plan {self.plan_id}")

    def stage(self, k: int) -> list[str]:
        return [rp.rule for rp in self.rules if rp.stage == k]

    def stage_tables(self, k: int) -> list[str]:
        """Tables with rules in stage `k`: one purge task each, so no two rules of a table run at once."""
        return list(dict.fromkeys(rp.table for rp in self.rules if rp.stage == k))

    def table_rules(self, table: str, k: int) -> list[str]:
        """The rules of `table` in stage `k`, in policy order (drop_partitions before delete)."""
        return [rp.rule for rp in self.rules if rp.table == table and rp.stage == k]

    def load_policy(self) -> Policy:
        """The policy the plan was made from; refuse if the file changed since."""
        policy = load_policy(self.policy_path)
        if policy.digest != self.policy_digest:
            raise PlanError(
                f"the policy file {self.policy_path} changed since plan {self.plan_id} was made "
                f"(digest {self.policy_digest} -> {policy.digest}); plan again"
            )
        return policy

    def predicates(self, policy: Policy, cur: psycopg2.extensions.cursor, held_ids_param: bool = False) -> Predicates:
        cutoffs = {rp.rule: datetime.fromisoformat(rp.cutoff) for rp in self.rules}
        key_type = holds.key_type(cur, policy)
        fks = catalog.foreign_keys(cur, policy.tables)
        return Predicates(policy, cutoffs, fks, cutoffs, held_ids_param, key_type, links.load(cur, policy))

    def lines(self) -> list[str]:
        """The dry run: one line per rule with its counts."""
        out = [
            f"Retention plan {self.plan_id}: now {self.now}, policy {self.policy_version} ({self.policy_digest})"
            + (", DRY RUN" if self.dry_run else ""),
            f"{'rule':<34}{'action':<16}{'table':<20}{'cutoff':<18}{'rows':>9}{'held':>7}{'referenced':>11}",
        ]
        for rp in self.rules:
            cutoff = datetime.fromisoformat(rp.cutoff).strftime("%Y-%m-%d %H:%M")
            extra = f"  ({len(rp.partitions)} partitions)" if rp.partitions else ""
            extra += "  (clamped by aggregation watermark)" if rp.cutoff != rp.rule_cutoff else ""
            out.append(
                f"{rp.rule:<34}{rp.action:<16}{rp.table:<20}{cutoff:<18}{rp.rows:>9}{rp.held:>7}{rp.referenced:>11}"
                + extra
            )
        out.append(f"total: {sum(rp.rows for rp in self.rules)} rows in {len(self.rules)} rules")
        return out


def _waits_for_sharing(rule: RetentionRule) -> bool:
    """Raw usage not yet aggregated by usage_sharing is kept until it is: rules with a clock on the row
    only (rows collected without consent are never aggregated; cut-link rows are, through the pseudonym)."""
    return rule.event is None and not rule.unless_consent and not rule.cuts_link


def _validate(policy: Policy, cur: psycopg2.extensions.cursor, table: str, rule: RetentionRule) -> None:
    where = f"policy {policy.path}: table {table}, rule {rule.name}"
    if rule.action == "drop_partitions" and not catalog.is_partitioned(cur, table):
        raise PlanError(f"{where}: drop_partitions, but {table} is not a partitioned table")
    if rule.action in DELETING:
        earlier = [r for r in policy.tables[table].retention[: policy.tables[table].retention.index(rule)]]
        if rule.action == "drop_partitions" and any(r.action == "delete" for r in earlier):
            raise PlanError(f"{where}: list drop_partitions before the delete rules of the same table")
    if rule.action == "anonymise":
        types = catalog.column_types(cur, table)
        for column, strategy in rule.columns.items():
            if column not in types:
                raise PlanError(f"{where}: column {column!r} does not exist in the database")
            try:
                anonymised_value(column, strategy, None, policy.tables[table].subject)
            except ValueError as exc:
                raise PlanError(f"{where}: column {column}: {exc}") from None
            if strategy == "truncate_ip" and types[column] not in ("inet", "cidr"):
                raise PlanError(f"{where}: truncate_ip needs an inet column; {column} is {types[column]}")
            if strategy in ("redact", "unique_redact") and types[column].rsplit(".", 1)[-1] not in TEXT_TYPES:
                raise PlanError(f"{where}: {strategy} needs a text column; {column} is {types[column]}")


def _stages(policy: Policy, fks: list[ForeignKey], active: set[str]) -> dict[str, int]:
    """Stage of each table: after every table whose deleted rows reference it, and after every table
    whose rules read it as the clock's event (consents for consent_ended, the subject table for
    account_closed): deleting a consent first would erase the evidence that it ended."""
    deleting = {t for t, r in policy.rules() if r.name in active and r.action in DELETING}
    consents, closed = policy.clock_consent_ended().table, policy.clock_account_closed().table
    readers: dict[str, set[str]] = {consents: set(), closed: set()}
    for table, rule in policy.rules():
        if rule.name in active and (rule.event == "consent_ended" or rule.unless_consent):
            readers[consents].add(table)
        elif rule.name in active and rule.event == "account_closed":
            readers[closed].add(table)
    memo: dict[str, int] = {}

    def stage(table: str, path: tuple[str, ...]) -> int:
        if table in path:
            raise PlanError(f"foreign keys or event clocks form a cycle through {' -> '.join((*path, table))}")
        if table not in memo:
            children = {fk.child for fk in fks if fk.parent == table and fk.child in deleting}
            children = (children | readers.get(table, set())) - {table}
            memo[table] = 1 + max((stage(c, (*path, table)) for c in children), default=-1)
        return memo[table]

    result = {t: stage(t, ()) for t in deleting}
    for table, k in result.items():
        if k >= MAX_STAGES:
            raise PlanError(f"table {table} needs purge stage {k + 1}; the DAG runs at most {MAX_STAGES} stages")
    return result


def build_plan(
    cur: psycopg2.extensions.cursor,
    now: datetime,
    *,
    policy: Policy | None = None,
    rules: list[str] | None = None,
    dry_run: bool = False,
    cutoffs_as_run: dict[str, datetime] | None = None,
) -> Plan:
    """Plan every retention rule of the policy (or only `rules`) as of `now`.

    `cutoffs_as_run` replaces a rule's cutoff by one a past run used (the audit judges each rule
    as of its last completed run, not as of the wall clock).
    """
    if now.tzinfo is None:
        raise PlanError("`now` must be timezone-aware (the run's logical date)")
    policy = policy or load_policy()
    chosen = policy.rules()
    if rules:
        unknown = sorted(set(rules) - {r.name for _, r in chosen})
        if unknown:
            raise PlanError(f"no retention rule named {', '.join(unknown)} in {policy.path}")
        chosen = [(t, r) for t, r in chosen if r.name in rules]
    cur.execute("SELECT source_table, aggregated_until FROM aggregation_watermarks")
    watermarks: dict[str, datetime] = {t: catalog.aware(w) for t, w in cur.fetchall()}

    cutoffs: dict[str, datetime] = {}
    rule_cutoffs: dict[str, datetime] = {}
    for table, rule in chosen:
        _validate(policy, cur, table, rule)
        rule_cutoffs[rule.name] = now - rule.keep.to_timedelta()
        clamp = watermarks.get(table) if _waits_for_sharing(rule) else None
        cutoffs[rule.name] = min(rule_cutoffs[rule.name], clamp) if clamp else rule_cutoffs[rule.name]
        if cutoffs_as_run and rule.name in cutoffs_as_run:
            rule_cutoffs[rule.name] = cutoffs[rule.name] = cutoffs_as_run[rule.name]
    fks = catalog.foreign_keys(cur, policy.tables)
    key_type = holds.key_type(cur, policy)
    preds = Predicates(policy, cutoffs, fks, cutoffs, key_type=key_type, links=links.load(cur, policy))
    stages = _stages(policy, fks, set(cutoffs))
    params = preds.params()

    planned = []
    for table, rule in chosen:
        key, key_type = catalog.primary_key(cur, table)[0]
        partitions: list[PartitionPlan] = []
        boundary = None
        if rule.action == "drop_partitions":
            if any(fk.parent == table for fk in fks):
                raise PlanError(f"table {table}, rule {rule.name}: drop_partitions on a table other tables reference")
            # Its partitions locked before they are listed: another purge's detach and rename cannot come between
            # the list and the counts below (it read each by a name the detach had changed).
            cur.execute(sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(relation(table)))
            for schema, name in catalog.detached_leftovers(cur, table):
                cur.execute("SAVEPOINT lethe_leftover")
                try:
                    cur.execute(
                        sql.SQL(
                            "SELECT count(*) FILTER (WHERE NOT {h}), count(*) FILTER (WHERE {h}) FROM {p} t"
                        ).format(h=preds.held(table, "t"), p=sql.Identifier(schema, name)),
                        params,
                    )
                except psycopg2.errors.UndefinedTable:  # the purge that left it dropped it since it was listed
                    cur.execute("ROLLBACK TO SAVEPOINT lethe_leftover")
                    continue
                rows, held = cur.fetchone()  # type: ignore[misc]
                cur.execute("RELEASE SAVEPOINT lethe_leftover")
                partitions.append(PartitionPlan(name, "", "", rows, held, detached=True, schema=schema))
            for part in catalog.partitions(cur, table):
                if part.upper > cutoffs[rule.name]:
                    continue
                cur.execute(
                    sql.SQL("SELECT count(*) FILTER (WHERE NOT {h}), count(*) FILTER (WHERE {h}) FROM {p} t").format(
                        h=preds.held(table, "t"), p=sql.Identifier(part.schema, part.name)
                    ),
                    params,
                )
                rows, held = cur.fetchone()  # type: ignore[misc]
                boundary = part.upper
                if rows or not held:  # a partition holding only held rows has nothing left to do
                    partitions.append(
                        PartitionPlan(part.name, part.bound, part.upper.isoformat(), rows, held, schema=part.schema)
                    )
        matched = preds.matched(table, rule)
        remainder = matched
        if boundary is not None:
            # Rows left below the cutoff in the partition that is not wholly expired yet: deleted in batches.
            remainder = sql.SQL("{} AND t.{} >= %(boundary)s").format(matched, sql.Identifier(rule.after))
        integer_key = key_type in catalog.INTEGER_TYPES
        bounds = (
            sql.SQL("min(t.{k}) FILTER (WHERE {r}), max(t.{k}) FILTER (WHERE {r})").format(
                k=sql.Identifier(key), r=remainder
            )
            if integer_key
            else sql.SQL("NULL, NULL")
        )
        cur.execute(
            sql.SQL(
                "SELECT count(*) FILTER (WHERE {m}), count(*) FILTER (WHERE {h}), count(*) FILTER (WHERE {r}), {b}"
                " FROM {table} t WHERE {expired}"
            ).format(
                m=remainder,
                h=preds.held_expired(table, rule),
                r=preds.referenced_expired(table, rule),
                b=bounds,
                table=relation(table),
                expired=preds.expired(table, rule, "t"),
            ),
            {**params, "boundary": boundary},
        )
        rows, held, referenced, kmin, kmax = cur.fetchone()  # type: ignore[misc]
        planned.append(
            RulePlan(
                rule=rule.name,
                table=table,
                action=rule.action,
                after=rule.after,
                keep=str(rule.keep),
                stage=stages.get(table, 0) if rule.action in DELETING else 0,
                rule_cutoff=rule_cutoffs[rule.name].isoformat(),
                cutoff=cutoffs[rule.name].isoformat(),
                watermark=watermarks[table].isoformat() if table in watermarks and _waits_for_sharing(rule) else None,
                columns=dict(rule.columns),
                key=key,
                integer_key=integer_key,
                key_min=kmin,
                key_max=kmax,
                rows=int(rows) + sum(p.rows for p in partitions),
                held=int(held),
                referenced=int(referenced),
                partitions=partitions,
            )
        )
    return Plan(
        plan_id=uuid.uuid4().hex[:16],
        now=now.astimezone(UTC).isoformat(),
        policy_version=policy.version,
        policy_digest=policy.digest,
        policy_path=str(policy.path),
        dry_run=dry_run,
        rules=planned,
    )
