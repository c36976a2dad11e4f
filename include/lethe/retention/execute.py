"""Carry out one rule of a retention plan: short transactions, checkpointed, resumable.

- delete / anonymise: primary-key range batches (each its own transaction, a few
  ms to tens of ms), never LIMIT batches through a secondary index (DESIGN.md:
  50x slower, each batch rescans the dead index entries of the batches before).
- drop_partitions: each wholly expired partition is detached and dropped in one
  short transaction; rows of people under legal hold are first copied into a
  fresh table that is attached in its place for the same range, so they stay
  where queries expect them. Rows below the cutoff in the partition that is not
  wholly expired yet are then deleted in batches.

Every transaction also advances the rule's row in retention_progress, so a run
killed at any point resumes after its last committed batch with exact counts;
the rule's ledger entry is written once, in the transaction that marks it done.
"""

from __future__ import annotations

import logging
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg2.errors
import psycopg2.extensions
from lethe import ledger
from lethe.db import DatabaseError, connect, table
from lethe.holds import HOLDS, active_keys_as_stored
from lethe.policy import Policy
from lethe.pseudonym import subject_pseudonym
from lethe.relations import key_text_is_canonical, relation, stored_key
from lethe.retention.catalog import EXPIRED_SUFFIX, column_types, expired_marker
from lethe.retention.plan import PartitionPlan, Plan, RulePlan
from lethe.retention.predicates import Predicates, anonymised_value
from psycopg2 import sql

log = logging.getLogger(__name__)

LEDGER_KIND = "retention"
PROGRESS = "retention_progress"  # Lethe's checkpoints, in its own schema
DEFAULT_BATCH = 10_000
TARGET_BATCH_MS = 40.0  # integer-key batches widen up to MAX_WIDEN x batch_size while faster than half this
MAX_WIDEN = 8
LOCK_TIMEOUT = "5s"  # never queue long behind another transaction: our queued lock would block its readers too
LOCK_PATIENCE_S = 900.0  # how long a rule keeps coming back for locks other transactions hold before it fails


@dataclass
class RuleResult:
    rule: str
    table: str
    action: str
    planned: int
    rows: int = 0
    partitions_dropped: int = 0
    batches: int = 0
    resumed: bool = False
    dry_run: bool = False
    batch_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Counts and timings only: safe for XCom and logs."""
        ms = sorted(self.batch_ms)
        return {
            "rule": self.rule,
            "table": self.table,
            "action": self.action,
            "planned": self.planned,
            "rows": self.rows,
            "partitions_dropped": self.partitions_dropped,
            "batches": self.batches,
            "resumed": self.resumed,
            "dry_run": self.dry_run,
            "batch_ms_p50": round(statistics.median(ms), 2) if ms else None,
            "batch_ms_max": round(ms[-1], 2) if ms else None,
        }


def _progress(cur: psycopg2.extensions.cursor, plan_id: str, rule: str) -> dict[str, tuple[int, int, str | None, bool]]:
    cur.execute(
        sql.SQL("SELECT step, rows_done, batches, last_key, finished FROM {} WHERE plan_id = %s AND rule = %s").format(
            table(PROGRESS)
        ),
        (plan_id, rule),
    )
    return {step: (rows, batches, key, done) for step, rows, batches, key, done in cur.fetchall()}


def _advance(
    cur: psycopg2.extensions.cursor, plan_id: str, rule: str, step: str, rows: int, last_key: Any, finished: bool
) -> None:
    cur.execute(
        sql.SQL(
            """
        INSERT INTO {t} AS p (plan_id, rule, step, rows_done, batches, last_key, finished)
        VALUES (%s, %s, %s, %s, 1, %s, %s)
        ON CONFLICT (plan_id, rule, step) DO UPDATE SET
            rows_done = p.rows_done + EXCLUDED.rows_done,
            batches = p.batches + 1,
            last_key = EXCLUDED.last_key, finished = EXCLUDED.finished, updated_at = now()
        """
        ).format(t=table(PROGRESS)),
        (plan_id, rule, step, rows, None if last_key is None else str(last_key), finished),
    )


def ledger_payload(plan: Plan, rp: RulePlan, rows: int, partitions: int) -> dict[str, Any]:
    """What the ledger records about a rule's run: names, cutoff and counts, never a row's values."""
    return {
        "rule": rp.rule,
        "table": rp.table,
        "action": rp.action,
        "plan_id": plan.plan_id,
        "now": plan.now,
        "cutoff": rp.cutoff,
        "watermark_clamped": rp.cutoff != rp.rule_cutoff,
        "counts": {
            "planned": rp.rows,
            "done": rows,
            "held": rp.held,
            "referenced": rp.referenced,
            "partitions_dropped": partitions,
        },
        "policy_version": plan.policy_version,
        "policy_digest": plan.policy_digest,
        "dry_run": plan.dry_run,
    }


def partition_step(rp: RulePlan, part: PartitionPlan) -> str:
    """The progress step of one expired partition: `partition:<name>`, or, when another partition of the rule's
    plan has the same name (partitions of one table may live in two schemas under one name), the name qualified
    and quoted, `partition:"<schema>"."<name>"`. Sharing one step, the second was counted as the first (one
    partition dropped in the ledger for two) and, on a rerun of the plan after it died there, skipped as done.
    A plan's other steps are as they were recorded, so a plan made before resumes on its own progress."""
    if sum(p.name == part.name for p in rp.partitions) < 2:
        return f"partition:{part.name}"
    return "partition:" + ".".join('"' + n.replace('"', '""') + '"' for n in (part.schema, part.name))


def _drop_partition(
    conn: psycopg2.extensions.connection,
    cur: psycopg2.extensions.cursor,
    preds: Predicates,
    rp: RulePlan,
    part: PartitionPlan,
    plan_id: str,
    timings: list[float],
) -> None:
    """Detach one expired partition (held rows kept in a fresh one for the range), then drop it.

    Two transactions: a DROP forces a synchronous WAL flush at commit, so it runs on its own,
    after the parent's lock is released. A run killed between them leaves `<name>__expired`
    detached: a retry of the same plan drops it here, a new plan lists it (`detached`).
    """
    step = partition_step(rp, part)
    started = time.perf_counter()
    # Every name qualified by the partition's schema, which need not be on the search path, where a table of the
    # same name may be; a RENAME's new name takes none (the table stays in its schema).
    if part.detached:  # left detached by a killed run of an earlier plan
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(part.relation()))
        _advance(cur, plan_id, rp.rule, step, part.rows, None, True)
        conn.commit()
        timings.append((time.perf_counter() - started) * 1000)
        return
    parent, old = relation(rp.table), part.relation()
    expired, keep = part.relation(EXPIRED_SUFFIX), part.relation("__held")
    # to_regclass reads its text as SQL does: quoted, so neither a mixed-case name nor the search path misleads it.
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (expired.as_string(cur),))
    if not cur.fetchone()[0]:  # type: ignore[index]
        cur.execute(
            "SELECT 1 FROM pg_inherits WHERE inhparent = to_regclass(%s) AND inhrelid = to_regclass(%s)",
            (parent.as_string(cur), old.as_string(cur)),
        )
        if cur.fetchone() is None:  # gone already (another run): nothing of ours to count
            _advance(cur, plan_id, rp.rule, step, 0, None, True)
            conn.commit()
            return
        held = preds.held_where(rp.table, "t")
        params = preds.params()
        cur.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(old))  # no writes slip in while held rows move
        cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {} t WHERE {})").format(old, held), params)
        has_held = bool(cur.fetchone()[0])  # type: ignore[index]
        if has_held:
            # Indexes are built now, on the few held rows, so ATTACH below only adopts them.
            cur.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(keep, parent))
            columns = sql.SQL(", ").join(sql.Identifier(c) for c in column_types(cur, rp.table))
            cur.execute(
                sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} t WHERE {}").format(keep, columns, columns, old, held),
                params,
            )
        cur.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(parent, old))
        cur.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(old, sql.Identifier(part.name + EXPIRED_SUFFIX)))
        # Marks it as retention's leftover should this run die before the DROP: the next plan drops it.
        cur.execute(sql.SQL("COMMENT ON TABLE {} IS %s").format(expired), (expired_marker(rp.table),))
        if has_held:
            cur.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(keep, sql.Identifier(part.name)))
            # The bound clause comes from pg_get_expr for this very partition (not from user input).
            cur.execute(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} ").format(parent, old) + sql.SQL(part.bound))
        conn.commit()
        timings.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
    cur.execute(sql.SQL("DROP TABLE {}").format(expired))
    _advance(cur, plan_id, rp.rule, step, part.rows, None, True)
    conn.commit()
    timings.append((time.perf_counter() - started) * 1000)


def _lock_table(cur: psycopg2.extensions.cursor, table: str) -> None:
    """One purge per table at a time, across tasks, DAG runs and `lethe purge` (held until the session ends).

    Two rules of one table at once deadlocked under a real executor (a batched DELETE against a
    DETACH PARTITION of usage_events); the DAG runs a table's rules in one task, and this lock
    covers every other way two purges could meet.
    """
    try:
        cur.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (f"lethe.retention:{table}",))
    except psycopg2.errors.LockNotAvailable:
        raise RuntimeError(
            f"another purge of table {table} is running (a second DAG run or `lethe purge`); "
            f"this one gave up after waiting {LOCK_TIMEOUT}: retry when it is done"
        ) from None


def _held_ids(cur: psycopg2.extensions.cursor, policy: Policy) -> list[str]:
    """Subject keys under legal hold, read under a lock that makes a hold placed now wait for this batch (a citext
    key also as the subject row stores it, the spelling of its pseudonym: holds.active_keys_as_stored)."""
    cur.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(sql.Identifier(HOLDS)))
    return active_keys_as_stored(cur, policy)


def _statement(preds: Predicates, rp: RulePlan, rule: Any, key_range: sql.Composable) -> sql.Composable:
    table = relation(rp.table)
    if rp.action == "anonymise":
        subject = preds.policy.tables[rp.table].subject
        sets = [
            sql.SQL("{} = {}").format(sql.Identifier(c), anonymised_value(c, s, "t", subject))
            for c, s in rp.columns.items()
        ]
        if rule.cuts_link:
            # The link goes, the subject's keyed pseudonym (computed here, per batch: _cut_links) stays.
            column = preds.policy.tables[rp.table].link_pseudonym
            assert column is not None and subject is not None  # the model requires both for pseudonym_link
            sets.append(sql.SQL("{} = m.p").format(sql.Identifier(column)))
            return sql.SQL(
                "UPDATE {} t SET {} FROM unnest(%(cut_subjects)s::text[], %(cut_pseudonyms)s::text[]) AS m(k, p)"
                " WHERE t.{} = m.k::{} AND {} AND {}"
            ).format(
                table,
                sql.SQL(", ").join(sets),
                sql.Identifier(subject),
                sql.SQL(preds.key_type),
                key_range,
                preds.matched(rp.table, rule),
            )
        return sql.SQL("UPDATE {} t SET {} WHERE {} AND {}").format(
            table, sql.SQL(", ").join(sets), key_range, preds.matched(rp.table, rule)
        )
    return sql.SQL("DELETE FROM {} t WHERE {} AND {}").format(table, key_range, preds.matched(rp.table, rule))


def _batch_params(
    cur: psycopg2.extensions.cursor,
    preds: Predicates,
    rp: RulePlan,
    rule: Any,
    key_range: sql.Composable,
    params: dict[str, Any],
) -> dict[str, Any]:
    """The batch's parameters: held people read now (by key and by pseudonym) and, for a rule cutting
    the subject link, the pseudonyms of the subjects of the batch's rows, computed in memory."""
    held = _held_ids(cur, preds.policy)
    params = {**params, "held_ids": held, "held_pseudonyms": preds.links.held_pseudonyms(held)}
    if not rule.cuts_link:
        return params
    subject = preds.policy.tables[rp.table].subject
    assert subject is not None
    link = sql.SQL("t.{}").format(sql.Identifier(subject))
    if key_text_is_canonical(cur, preds.policy):
        keys_sql = sql.SQL("SELECT DISTINCT {}::text FROM {} t WHERE {} AND {}").format(
            link, relation(rp.table), key_range, preds.matched(rp.table, rule)
        )
    else:
        # A citext key spelt in several cases in these rows is one person: her one key, as her subject row stores
        # it (the spelling her tombstone and erasure pseudonymise), once per key as the database compares keys.
        keys_sql = sql.SQL(
            "SELECT DISTINCT ON (s.k::{kt}) s.k FROM (SELECT {owner} AS k FROM {t} t WHERE {r} AND {m}) s"
            " ORDER BY s.k::{kt}, s.k"
        ).format(
            kt=sql.SQL(preds.key_type),
            owner=stored_key(preds.policy, link),
            t=relation(rp.table),
            r=key_range,
            m=preds.matched(rp.table, rule),
        )
    cur.execute(keys_sql, params)
    keys = [k for (k,) in cur.fetchall() if k is not None]
    assert preds.links.key is not None  # links.load reads the key whenever a rule cuts a link
    return {**params, "cut_subjects": keys, "cut_pseudonyms": [subject_pseudonym(preds.links.key, k) for k in keys]}


def execute_rule(
    url: str,
    plan: Plan,
    rule_name: str,
    *,
    batch_size: int = DEFAULT_BATCH,
    on_batch: Callable[[int, float], None] | None = None,
    policy: Policy | None = None,
    lock_patience_s: float = LOCK_PATIENCE_S,
) -> RuleResult:
    """Run one rule of `plan` to completion (or resume it); return what was actually done.

    `policy`: the already loaded policy the plan was made from (saves re-reading it per rule).

    A statement that waits more than LOCK_TIMEOUT for a lock another transaction holds (an
    erasure's transaction on the same rows, its VACUUM, the platform's own writes), or that
    PostgreSQL picks as a deadlock's victim, is rolled back and the rule resumes from its last
    checkpoint after a pause, for up to
    `lock_patience_s` in all: waiting in the lock queue instead would block everyone queued
    behind our request, and failing would spend one of the task's retries on ordinary traffic.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    deadline = time.monotonic() + lock_patience_s
    attempt = 0
    while True:
        try:
            return _execute_rule_once(url, plan, rule_name, batch_size, on_batch, policy)
        except _LockBusy as busy:
            attempt += 1
            pause = min(30.0, 0.5 * 2**attempt) * random.uniform(0.5, 1.0)
            if time.monotonic() + pause > deadline:
                raise RuntimeError(
                    f"retention rule {rule_name} on table {busy.table}: other transactions held the locks it needs "
                    f"for {lock_patience_s:.0f} s ({attempt} attempts, each waiting {LOCK_TIMEOUT}); "
                    "its checkpoints are kept: a retry resumes it"
                ) from None
            log.info(
                "retention rule %s on table %s: a lock is held by another transaction; "
                "resuming from the last checkpoint in %.1f s (attempt %d)",
                rule_name,
                busy.table,
                pause,
                attempt,
            )
            time.sleep(pause)


class _LockBusy(Exception):
    """A statement gave up waiting LOCK_TIMEOUT for another transaction's lock (rolled back, nothing lost)."""

    def __init__(self, table: str) -> None:
        super().__init__(table)
        self.table = table


def _execute_rule_once(
    url: str,
    plan: Plan,
    rule_name: str,
    batch_size: int,
    on_batch: Callable[[int, float], None] | None,
    policy: Policy | None,
) -> RuleResult:
    rp = plan.rule(rule_name)
    if policy is None or policy.digest != plan.policy_digest:
        policy = plan.load_policy()
    _, rule = policy.rule(rule_name)
    result = RuleResult(rp.rule, rp.table, rp.action, rp.rows, dry_run=plan.dry_run)
    conn = connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
            _lock_table(cur, rp.table)
            # Batches need not wait for their WAL flush: a server crash can only lose the last few,
            # together with their checkpoint rows, and a rerun redoes them. The ledger entry waits.
            cur.execute("SET synchronous_commit = off")
            preds = plan.predicates(policy, cur, held_ids_param=True)
            params = preds.params()
            progress = _progress(cur, plan.plan_id, rp.rule)
            conn.commit()
            result.resumed = bool(progress)
            if "ledger" in progress:  # finished by an earlier attempt
                result.rows = sum(v[0] for k, v in progress.items() if k != "ledger")
                result.partitions_dropped = sum(1 for k in progress if k.startswith("partition:"))
                return result
            if not plan.dry_run:
                for part in rp.partitions:
                    step = partition_step(rp, part)
                    if step in progress and progress[step][3]:
                        continue
                    _drop_partition(conn, cur, preds, rp, part, plan.plan_id, result.batch_ms)
                if rp.key_min is not None or not rp.integer_key:
                    _batches(conn, cur, preds, rp, rule, params, plan.plan_id, progress, batch_size, result, on_batch)
            progress = _progress(cur, plan.plan_id, rp.rule)
            result.rows = sum(v[0] for v in progress.values())
            result.partitions_dropped = sum(1 for k in progress if k.startswith("partition:"))
            result.batches = sum(v[1] for k, v in progress.items() if k == "batches")
            cur.execute("SET LOCAL synchronous_commit = on")
            cur.execute(
                sql.SQL(
                    "INSERT INTO {} (plan_id, rule, step, finished) VALUES (%s, %s, 'ledger', true)"
                    " ON CONFLICT DO NOTHING"
                ).format(table(PROGRESS)),
                (plan.plan_id, rp.rule),
            )
            if cur.rowcount == 1:
                ledger.append(cur, LEDGER_KIND, ledger_payload(plan, rp, result.rows, result.partitions_dropped))
            conn.commit()
    except (psycopg2.errors.LockNotAvailable, psycopg2.errors.DeadlockDetected):
        # A deadlock's victim is rolled back like a lock wait given up: nothing lost, resumed from the checkpoint.
        # (The DROP of a detached partition takes the lock of the table its foreign key references, after its
        # own: a long reader of both, such as the erasure's residue scan, met it the other way round.)
        raise _LockBusy(rp.table) from None
    except psycopg2.Error as exc:  # told by rule and table; PostgreSQL's text can quote the failing row
        raise DatabaseError(f"retention rule {rp.rule} on table {rp.table}", exc) from None
    finally:
        conn.close()
    return result


def _batches(
    conn: psycopg2.extensions.connection,
    cur: psycopg2.extensions.cursor,
    preds: Predicates,
    rp: RulePlan,
    rule: Any,
    params: dict[str, Any],
    plan_id: str,
    progress: dict[str, tuple[int, int, str | None, bool]],
    batch_size: int,
    result: RuleResult,
    on_batch: Callable[[int, float], None] | None,
) -> None:
    done = progress.get("batches")
    if done and done[3]:
        return
    last: Any = done[2] if done else None
    key = sql.Identifier("t", rp.key)
    if rp.integer_key:
        assert rp.key_min is not None and rp.key_max is not None
        lo = int(last) + 1 if last is not None else rp.key_min
        width = batch_size
        between = sql.SQL("{} BETWEEN %(lo)s AND %(hi)s").format(key)
        ranged = _statement(preds, rp, rule, between)
        while lo <= rp.key_max:
            hi = min(lo + width - 1, rp.key_max)
            started = time.perf_counter()
            cur.execute(ranged, _batch_params(cur, preds, rp, rule, between, {**params, "lo": lo, "hi": hi}))
            n = cur.rowcount
            _advance(cur, plan_id, rp.rule, "batches", n, hi, hi >= rp.key_max)
            conn.commit()
            elapsed = (time.perf_counter() - started) * 1000
            result.batch_ms.append(elapsed)
            if on_batch:
                on_batch(n, elapsed)
            lo = hi + 1
            # Sparse or cheap ranges: widen (fewer commits); slow ones: narrow, never below batch_size.
            if elapsed < TARGET_BATCH_MS / 2:
                width = min(width * 2, batch_size * MAX_WIDEN)
            elif elapsed > TARGET_BATCH_MS:
                width = max(width // 2, batch_size)
        return
    # Keys that are not integers (uuid, text): keyset ranges of batch_size keys each.
    table = relation(rp.table)
    while True:
        started = time.perf_counter()
        after = sql.SQL("{} > %(lo)s").format(key) if last is not None else sql.SQL("true")
        cur.execute(
            sql.SQL("SELECT {k} FROM {t} t WHERE {a} ORDER BY {k} OFFSET %(n)s LIMIT 1").format(
                k=key, t=table, a=after
            ),
            {"lo": last, "n": batch_size - 1},
        )
        row = cur.fetchone()
        top = row[0] if row else None
        upper = sql.SQL("{} <= %(hi)s").format(key) if top is not None else sql.SQL("true")
        key_range = sql.SQL("{} AND {}").format(after, upper)
        statement = _statement(preds, rp, rule, key_range)
        cur.execute(statement, _batch_params(cur, preds, rp, rule, key_range, {**params, "lo": last, "hi": top}))
        n = cur.rowcount
        _advance(cur, plan_id, rp.rule, "batches", n, top if top is not None else last, top is None)
        conn.commit()
        elapsed = (time.perf_counter() - started) * 1000
        result.batch_ms.append(elapsed)
        if on_batch:
            on_batch(n, elapsed)
        if top is None:
            return
        last = top
