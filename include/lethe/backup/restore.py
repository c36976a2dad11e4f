"""Restore a snapshot into a database without bringing any erased person back.

Every tombstone is replayed, whatever its date: those in the snapshot's own
erasure_tombstones table and those in the live primary (when it can be reached),
because a person erased after the snapshot was taken is still in it if
propagation has not reached it yet. Rows of a tombstoned subject are erased in
memory before they are loaded, by each table's erasure action, and mentions of
erased people in free text are redacted (lethe.backup.mentions), so they never
touch the target. The links the primary's erasure cuts in kept rows are cut the
same way (lethe.backup.links): a kept row pointing at an erased row loses that
link, an erased person's legal hold names them by pseudonym only. The result is
then checked by recomputing the keyed pseudonym of every subject in the target and
by counting, for every foreign key among the restored tables, rows whose link finds
no parent; a foreign key the primary has and the target lacks fails the check too. A link to a table the snapshot
does not hold (not backed up) must find its row in the target already: checked before each table is loaded, and
when some do not, the restore names every such link and loads nothing (one transaction, rolled back).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg2.extensions
import pyarrow as pa
from psycopg2 import sql

from lethe import relations
from lethe.backup import chain, frames, layout, links, store
from lethe.backup.manifest import Manifest, TableEntry, read
from lethe.backup.mentions import MentionFinder, prefilter_of
from lethe.config import BUCKETS
from lethe.db import ConfigurationError, connect, migrate, transaction
from lethe.policy import load_policy
from lethe.pseudonym import folded_subject_pseudonym, subject_pseudonym

TOMBSTONES = "erasure_tombstones"


@dataclass
class RestoreReport:
    snapshot_id: str
    region: str
    tombstones_in_snapshot: int = 0
    tombstones_from_primary: int = 0
    primary_reachable: bool | None = None
    rows_loaded: dict[str, int] = field(default_factory=dict)
    rows_removed: dict[str, int] = field(default_factory=dict)
    rows_pseudonymised: dict[str, int] = field(default_factory=dict)
    mentions_redacted: dict[str, int] = field(default_factory=dict)
    links_cut: dict[str, int] = field(default_factory=dict)
    holds_forgotten: int = 0
    tombstoned_rows_left: int = 0
    foreign_keys_checked: int = 0
    orphan_rows: dict[str, int] = field(default_factory=dict)  # foreign key -> rows whose parent is missing
    foreign_keys_missing: list[str] = field(default_factory=list)  # in the primary, not in the target

    @property
    def verified(self) -> bool:
        return self.tombstoned_rows_left == 0 and not self.orphan_rows and not self.foreign_keys_missing

    @property
    def tombstones_replayed(self) -> int:
        return self.tombstones_in_snapshot + self.tombstones_from_primary


def _read_table(client: Any, bucket: str, table: str, entry: TableEntry) -> pa.Table:
    """A table's rows at the snapshot (an incremental one's base with its nights replayed, lethe.backup.chain),
    every object checked against the manifest's checksum and row count."""
    parts = list(chain.table_rows(client, bucket, entry))
    if not parts:
        columns = {c["name"]: pa.array([], frames.Column(c["name"], c["pg_type"]).arrow_type) for c in entry.columns}
        columns[layout.SUBJECT_COLUMN] = pa.array([], pa.string())
        return pa.table(columns)
    return pa.concat_tables(parts, promote_options="default")


def _array(value: Any) -> list[str]:
    """A text[] value as exported (PostgreSQL's text form, e.g. {a,b}) or as psycopg2 returns it (a list)."""
    if isinstance(value, list):
        return value
    return [v for v in (value or "").strip("{}").split(",") if v]


def load_order(cur: psycopg2.extensions.cursor, tables: list[str], also: Iterable[links.ForeignKey] = ()) -> list[str]:
    """Tables ordered so each comes after the tables its foreign keys point to (keys declared only on
    partitions count as their partitioned parent's, lethe.relations), and those of `also` (the primary's keys:
    the links a restore cuts are cut against parents loaded first, whether the target declares them or not)."""
    needs: dict[str, set[str]] = {t: set() for t in tables}
    edges = [(fk.child, fk.parent) for fk in relations.foreign_keys(cur, tables)] + [(k.child, k.parent) for k in also]
    for child, parent in edges:
        if child in needs and parent in needs and child != parent:
            needs[child].add(parent)
    ordered: list[str] = []
    while needs:
        ready = [t for t in tables if t in needs and not needs[t] - set(ordered)]
        if not ready:
            raise ConfigurationError(f"foreign keys form a cycle among {sorted(needs)}; cannot order the restore")
        for t in ready:
            ordered.append(t)
            del needs[t]
    return ordered


def _uses_placeholder(manifest: Manifest) -> bool:
    return any(
        s.startswith(frames.PLACEHOLDER_PREFIX) for e in manifest.tables.values() for s in e.erasure_columns.values()
    )


def _ensure_placeholder(cur: psycopg2.extensions.cursor, policy: Any) -> None:
    """The placeholder subject row (no personal data) that kept rows' NOT NULL links point to."""
    if policy.subject.placeholder is None:
        return
    cur.execute(
        sql.SQL("INSERT INTO {} ({}) VALUES (%s) ON CONFLICT DO NOTHING").format(
            relations.relation(policy.subject.table), sql.Identifier(policy.subject.key)
        ),
        (policy.subject.placeholder,),
    )


def _placeholder_key(frame: pa.Table, policy: Any) -> object:
    """The placeholder's key as the subject frame's key column holds it (the links re-pointed to it carry the
    same cast of the same text, `masking.arrow_value`)."""
    return pa.scalar(str(policy.subject.placeholder), pa.string()).cast(frame.column(policy.subject.key).type).as_py()


def _primary_tombstones(primary_url: str | None, target_url: str) -> list[tuple[Any, ...]] | None:
    if not primary_url or primary_url == target_url:
        return None
    try:
        with transaction(primary_url) as cur:
            cur.execute(
                "SELECT subject_pseudonym, identifier_pseudonyms, request_id, erased_at, counts::text,"
                " prefilter_pseudonyms FROM erasure_tombstones"
            )
            return list(cur.fetchall())
    except (ConfigurationError, psycopg2.Error):
        return None


def restore_snapshot(
    sid: str,
    region: str,
    target_url: str,
    *,
    endpoint_url: str | None,
    key: bytes,
    primary_url: str | None = None,
    out: Callable[[str], None] = print,
) -> RestoreReport:
    layout.check_snapshot_id(sid)
    client = store.region_client(region, endpoint_url)
    bucket = BUCKETS.backup(region)
    if not store.exists(client, bucket, layout.manifest_key(sid)):
        from lethe.backup.manifest import complete_snapshot_ids

        # the ids only: one snapshot's unreadable manifest (an index object deleted outside Lethe) must not hide
        # that this one is not there
        available = ", ".join(complete_snapshot_ids(client, bucket)) or "none"
        raise ConfigurationError(
            f"no complete snapshot {sid} in region {region} (bucket {bucket}); complete snapshots there: {available}"
        )
    manifest: Manifest = read(client, bucket, sid)
    report = RestoreReport(snapshot_id=sid, region=region)
    migrate(target_url)  # Lethe's own schema only: the platform's tables must be there already
    tables = list(manifest.tables)
    with transaction(target_url) as cur:
        known = set(relations.policy_oids(cur, tables).values())
        missing = [t for t in tables if t not in known]
        if missing:
            raise ConfigurationError(
                f"target database has no table {', '.join(missing)}: Lethe creates only its own schema, so create "
                "the platform's tables there first (the demo platform: `lethe seed --platform-only --database NAME`)"
            )
        not_empty = []
        for table in tables:
            cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(relations.relation(table)))
            if cur.fetchone()[0]:  # type: ignore[index]
                not_empty.append(table)
        if not_empty:
            raise ConfigurationError(
                f"target database is not empty (rows in {', '.join(not_empty)}): restore into an empty database"
            )
        fks = links.foreign_keys(cur, tables)
        outside = links.outside_foreign_keys(cur, tables, load_policy().tables)

    snapshot_tombstones = (
        _read_table(client, bucket, TOMBSTONES, manifest.tables[TOMBSTONES]) if TOMBSTONES in tables else None
    )
    in_snapshot = set(snapshot_tombstones.column("subject_pseudonym").to_pylist()) if snapshot_tombstones else set()
    from_primary = _primary_tombstones(primary_url, target_url)
    report.primary_reachable = None if from_primary is None and not primary_url else from_primary is not None
    primary_only = [row for row in from_primary or [] if row[0] not in in_snapshot]
    report.tombstones_in_snapshot = len(in_snapshot)
    report.tombstones_from_primary = len(primary_only)
    erased = in_snapshot | {row[0] for row in primary_only}
    identifiers = {i for row in primary_only for i in row[1] or []}
    terms = [(row[1], row[5]) for row in primary_only]
    if snapshot_tombstones is not None:
        ids = snapshot_tombstones.column("identifier_pseudonyms").to_pylist()
        identifiers |= {i for v in ids for i in _array(v)}
        kept = (  # a snapshot from before the prefilter terms has no such column: every text is matched
            snapshot_tombstones.column("prefilter_pseudonyms").to_pylist()
            if "prefilter_pseudonyms" in snapshot_tombstones.column_names
            else [None] * len(ids)
        )
        terms += [(_array(i), None if t is None else _array(t)) for i, t in zip(ids, kept, strict=True)]
    finder = MentionFinder(key, frozenset(identifiers), prefilter_of(terms))
    policy = load_policy()
    # identifier pseudonym -> its tombstone's subject: a citext key's case-folded pseudonym among them finds her
    # rows the snapshot names under another spelling of her key (she re-cased it after the snapshot, then was erased)
    owners = {i: row[0] for row in primary_only for i in row[1] or []}
    if snapshot_tombstones is not None:
        subjects_of = snapshot_tombstones.column("subject_pseudonym").to_pylist()
        for subject, ids in zip(
            subjects_of, snapshot_tombstones.column("identifier_pseudonyms").to_pylist(), strict=True
        ):
            owners.update((i, subject) for i in _array(ids))
    with transaction(target_url) as cur:
        fold = relations.key_folds_case(cur, policy)
        # the pseudonyms the snapshot stored beside those keys: rows under them in any table are hers (those linked
        # to hers by foreign keys only, with no key of their own, included), as propagation finds them
        aliases = _folded_aliases(cur, client, bucket, manifest, key, owners) if fold and owners else {}
    out(f"restoring snapshot {sid} from {region} (policy {manifest.policy_version}) into the target database")
    if report.primary_reachable is False:
        out("warning: the primary database could not be reached; only the snapshot's own tombstones are replayed")

    expected = _primary_foreign_keys(primary_url, target_url, tables) if report.primary_reachable else []
    fks = list({fk.describe(): fk for fk in [*fks, *expected]}.values())  # cut what either side links
    with transaction(target_url) as cur:
        order = load_order(cur, tables, expected)
    present: dict[tuple[str, tuple[str, ...]], set[tuple[object, ...]]] = {}  # parent keys left after erasure
    unfound: dict[str, int] = {}  # link to a table outside the snapshot -> rows whose parent the target lacks
    with transaction(target_url) as cur:
        for table in order:
            entry = manifest.tables[table]
            frame = snapshot_tombstones if table == TOMBSTONES and snapshot_tombstones else None
            if frame is None:
                frame = _read_table(client, bucket, table, entry)
            if aliases and entry.rewritable and layout.SUBJECT_COLUMN in frame.column_names:
                frame = frames.attribute_aliases(frame, aliases)
            frame, done = frames.erase_subjects(
                frame, erased, entry.erasure_action, entry.erasure_columns, entry.pseudonym_column
            )
            if unfound:  # the restore fails (rolled back): the other tables are only checked, to name every link
                _check_outside_links(cur, table, frame, outside, unfound)
                continue
            if links.is_holds_table(table):
                frame, report.holds_forgotten = links.forget_holds(frame, key, erased)
            free_text = entry.free_text or (policy.tables[table].free_text if table in policy.tables else [])
            frame, mentions = finder.redact_columns(frame, free_text)
            for fk in fks:  # parents come first (load order); a table's links to itself are checked against itself
                if fk.parent == table:
                    present[(table, fk.parent_columns)] = links.parent_keys(frame, fk.parent_columns)
            placeholder = table == policy.subject.table and _uses_placeholder(manifest)
            kept = present.get((table, (policy.subject.key,)))
            if placeholder and kept is not None and policy.subject.placeholder is not None:
                kept.add((_placeholder_key(frame, policy),))  # re-pointed links are not dangling: it is made below
            cut = 0
            for fk in fks:
                if fk.child == table:
                    # the database says how the key compares: against the loaded parent (another table, the
                    # placeholder made), or against this frame's own rows for a table's links to itself
                    parents = present[(fk.parent, fk.parent_columns)]
                    among = parents if fk.parent == table else None
                    confirm = functools.partial(links.missing_parents, cur, fk, among=among)
                    frame, n = links.cut_dangling(frame, fk, parents, confirm)
                    cut += n
            if _check_outside_links(cur, table, frame, outside, unfound):
                continue
            report.rows_loaded[table] = frames.copy_into(cur, table, frame)
            if placeholder:
                _ensure_placeholder(cur, policy)  # kept rows re-pointed after this snapshot was taken need it
            if mentions:
                report.mentions_redacted[table] = mentions
            if cut:
                report.links_cut[table] = cut
            if done.deleted:
                report.rows_removed[table] = done.deleted
            if done.pseudonymised:
                report.rows_pseudonymised[table] = done.pseudonymised
        if unfound:
            raise _missing_parents_error(sid, unfound, outside)
        for row in primary_only:  # the tombstones themselves must survive the restore too
            cur.execute(
                "INSERT INTO erasure_tombstones (subject_pseudonym, identifier_pseudonyms, request_id, erased_at,"
                " counts, prefilter_pseudonyms) VALUES (%s, %s, %s, %s, %s::jsonb, %s) ON CONFLICT DO NOTHING",
                row,
            )
    folded = {i for i in owners if fold}
    report.tombstoned_rows_left = verify_no_tombstoned_rows(target_url, manifest, erased, key, policy, folded)
    verify_links(target_url, tables, expected, report)
    out(
        f"replayed {report.tombstones_replayed} tombstones ({report.tombstones_in_snapshot} in the snapshot, "
        f"{report.tombstones_from_primary} more from the primary)"
    )
    for table in order:
        extra = []
        if table in report.rows_removed:
            extra.append(f"{report.rows_removed[table]} erased rows left out")
        if table in report.rows_pseudonymised:
            extra.append(f"{report.rows_pseudonymised[table]} rows pseudonymised")
        if table in report.mentions_redacted:
            extra.append(f"{report.mentions_redacted[table]} mentions of erased people redacted")
        if table in report.links_cut:
            extra.append(f"{report.links_cut[table]} links to erased rows cut")
        if links.is_holds_table(table) and report.holds_forgotten:
            extra.append(f"{report.holds_forgotten} holds of erased people named by pseudonym only")
        out(f"  {table}: {report.rows_loaded[table]} rows loaded" + (f" ({', '.join(extra)})" if extra else ""))
    orphans = sum(report.orphan_rows.values())
    verdict = "ok" if report.verified else "FAILED"
    out(
        f"verified: {report.tombstoned_rows_left} rows of any tombstoned subject in the target; "
        f"{report.foreign_keys_checked} foreign keys checked, {orphans} rows with a missing parent, "
        f"{len(report.foreign_keys_missing)} foreign keys of the primary missing in the target ({verdict})"
    )
    for name, n in sorted(report.orphan_rows.items()):
        out(f"  {name}: {n} rows point at no parent row")
    for name in report.foreign_keys_missing:
        out(f"  {name}: declared in the primary, absent in the target (links not enforced there)")
    if report.tombstoned_rows_left:
        raise ConfigurationError(f"restore left {report.tombstoned_rows_left} rows of erased people in the target")
    if not report.verified:
        raise ConfigurationError(
            "restore loaded rows whose foreign keys are not intact in the target (see the lines above); "
            "do not use this database"
        )
    return report


def _check_outside_links(
    cur: psycopg2.extensions.cursor,
    table: str,
    frame: pa.Table,
    outside: list[links.ForeignKey],
    unfound: dict[str, int],
) -> bool:
    """Whether some rows `table` is about to load link to rows of a table outside the snapshot that the target
    does not hold (the COPY would fail on them, its message quoting the value); counted into `unfound`."""
    found = False
    for fk in outside:
        if fk.child == table:
            n = links.rows_without_parent(cur, fk, frame)
            if n:
                unfound[fk.describe()] = n
                found = True
    return found


def _missing_parents_error(sid: str, unfound: dict[str, int], outside: list[links.ForeignKey]) -> ConfigurationError:
    """What the target lacks, by link and row count (no value), and what to do."""
    lines = [
        f"  {name}: {n} row{'' if n == 1 else 's'} of the snapshot link{'s' if n == 1 else ''} to no row there"
        for name, n in unfound.items()
    ]
    parents = sorted({fk.parent for fk in outside if fk.describe() in unfound})
    return links.MissingParentError(
        f"cannot restore snapshot {sid}: rows of it link to tables it does not hold, and the target database lacks "
        "the rows they point at:\n"
        + "\n".join(lines)
        + f"\n{', '.join(parents)} {'is' if len(parents) == 1 else 'are'} not in the snapshot (not backed up): "
        "load those rows into the target first (from the live database, or the table's own "
        "source), or restore into a database that holds them, then run the restore again. Nothing was restored."
    )


def _primary_foreign_keys(primary_url: str | None, target_url: str, tables: list[str]) -> list[links.ForeignKey]:
    if not primary_url or primary_url == target_url:
        return []
    try:
        with transaction(primary_url) as cur:
            return links.foreign_keys(cur, tables)
    except (ConfigurationError, psycopg2.Error):
        return []


def verify_links(target_url: str, tables: list[str], expected: list[links.ForeignKey], report: RestoreReport) -> None:
    """Every foreign key among the restored tables, from the target's catalogue and the primary's (`expected`):
    rows whose link finds no parent row, counted with plain SQL whether or not the target enforces the key, and
    keys the primary declares that the target lacks."""
    with transaction(target_url) as cur:
        found = links.foreign_keys(cur, tables)
        have = {fk.describe() for fk in found}
        report.foreign_keys_missing = sorted(fk.describe() for fk in expected if fk.describe() not in have)
        checked = {fk.describe(): fk for fk in [*found, *expected]}
        for name, fk in sorted(checked.items()):
            n = links.orphans(cur, fk)
            if n:
                report.orphan_rows[name] = n
    report.foreign_keys_checked = len(checked)


def _folded_aliases(
    cur: psycopg2.extensions.cursor, client: Any, bucket: str, manifest: Manifest, key: bytes, owners: dict[str, str]
) -> dict[str, str]:
    """Each pseudonym the snapshot stored beside a citext key that folds to an erased person's (her tombstone's
    folded pseudonym among `owners`), with her tombstone's subject pseudonym: she re-cased her key after the
    snapshot, so its rows, and those of tables linked to hers by foreign keys only, carry the old spelling's."""
    aliases: dict[str, str] = {}
    for table, entry in manifest.tables.items():
        if table == TOMBSTONES or not entry.subject_column or not entry.rewritable:
            continue
        found = frames.key_pseudonym_pairs(_read_table(client, bucket, table, entry), entry.subject_column)
        if not found:
            continue
        folded = relations.folded_keys(cur, {k for k, _ in found})
        for k, s in found:
            owner = owners.get(folded_subject_pseudonym(key, folded[k]))
            if owner is not None and s != owner:
                aliases[s] = owner
    return aliases


def verify_no_tombstoned_rows(
    target_url: str,
    manifest: Manifest,
    erased: set[str],
    key: bytes,
    policy: Any = None,
    folded: set[str] | frozenset[str] = frozenset(),
) -> int:
    """Rows in the target whose subject's keyed pseudonym is tombstoned (tables whose erasure removes the link).

    Each spelling of a key is read on its own (grouped as text: grouped as citext, 'Anna@x' and 'anna@x' are one
    group giving one of them only), by its own pseudonym and, for a citext key, by the pseudonym of the key as the
    target's subject row stores it (relations.stored_key; `policy`: default, the policy file's) and of its
    case-folded spelling where the tombstones keep one (`folded`: their identifier pseudonyms)."""
    counts: dict[str, int] = {}
    policy = policy if policy is not None else load_policy()
    conn = connect(target_url)
    try:
        with conn.cursor() as cur:
            citext = relations.key_folds_case(cur, policy)
            subject_there = citext and policy.subject.table in manifest.tables
            fold = citext and bool(folded)
            for table, entry in manifest.tables.items():
                if entry.subject_column is None or not entry.rewritable:
                    continue
                column = sql.Identifier(entry.subject_column)
                stored = (
                    relations.stored_key(policy, sql.Identifier("g", entry.subject_column))
                    if subject_there
                    else sql.SQL("NULL::text")
                )
                cur.execute(
                    sql.SQL(
                        "SELECT v, {stored}, {low}, n FROM (SELECT {c}::text AS v, {one} AS {c}, count(*) AS n"
                        " FROM {t} WHERE {c} IS NOT NULL GROUP BY {c}::text) g"
                    ).format(
                        c=column,
                        one=sql.SQL("min({})").format(column) if subject_there else sql.SQL("NULL"),
                        t=relations.relation(table),
                        stored=stored,
                        low=relations.fold_sql(sql.SQL("v")) if fold else sql.SQL("NULL::text"),
                    )
                )
                counts[table] = sum(
                    n
                    for value, as_stored, low, n in cur.fetchall()
                    if subject_pseudonym(key, value) in erased
                    or (as_stored is not None and subject_pseudonym(key, as_stored) in erased)
                    or (low is not None and folded_subject_pseudonym(key, low) in folded)
                )
    finally:
        conn.close()
    return sum(counts.values())
