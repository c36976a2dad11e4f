"""backup_nightly's one read of the primary: export every backed-up table into a region, write the manifest last.

The export runs in one REPEATABLE READ transaction, so all tables are from one
instant. The tombstones visible in that same transaction are filtered out of the
rows (an erasure that wrote its tombstone before deleting rows is still honoured)
and recorded as applied to this snapshot; any tombstone committed later is left
for backup_erasure_propagation, so no erasure can slip between export and manifest.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, BinaryIO

import numpy as np
import psycopg2.extensions
import pyarrow as pa
from psycopg2 import sql

from lethe import relations
from lethe.backup import chain, digest_state, frames, heap, layout, locks, store, writer
from lethe.backup.certificate import update_certificates
from lethe.backup.manifest import Manifest, ObjectEntry, TableEntry, snapshot_ids
from lethe.backup.manifest import read as read_manifest
from lethe.backup.manifest import write as write_manifest
from lethe.backup.term_index import BloomFilter, TermIndexer
from lethe.config import BUCKETS
from lethe.db import connect, session_lock, transaction
from lethe.policy.model import Policy

log = logging.getLogger(__name__)
# Objects encoded at once (small ones are stored by store.Uploads' threads meanwhile): each holds a row group or
# two, whatever its table's size.
WRITE_THREADS = 4
IN_MEMORY_OBJECT_BYTES = 4 << 20  # an object whose rows spilled to at most this is encoded in memory
# An incremental night reads the chain back for its digests, an object a GET (most of a few KB: round trips, not
# bytes): FETCH_THREADS read for all tables' deltas at once (with the uploads, within the client's connections:
# lethe.storage.s3_client), each table's reads running up to FETCH_AHEAD objects ahead of the bucket it is at.
FETCH_THREADS = 4
FETCH_AHEAD = 8
OWNER = "__lethe_owner"  # the computed owner column of a referenced table, dropped after use


# The export holds one REPEATABLE READ snapshot open on the primary for its whole run (it keeps VACUUM
# from removing rows deleted meanwhile). A 100,000-user export takes ~6 s (BENCHMARKS.md); these bound
# one statement (the COPY of the largest table) and a stall between statements (an upload that hangs).
EXPORT_STATEMENT_TIMEOUT = "30min"
EXPORT_IDLE_TIMEOUT = "10min"


@contextlib.contextmanager
def export_transaction(
    db_url: str,
    *,
    statement_timeout: str = EXPORT_STATEMENT_TIMEOUT,
    idle_timeout: str = EXPORT_IDLE_TIMEOUT,
    lock: Sequence[str] = (),
) -> Iterator[psycopg2.extensions.cursor]:
    """A read-only REPEATABLE READ transaction, all tables from one instant, bounded in time; rolled back.

    The tables of `lock` (a partitioned one with its partitions) are locked before the snapshot is taken: a
    partition retention detached after the snapshot was gone from its table when read, and the rows it put back
    in a fresh partition (legally held people's) were written after the snapshot, so missing too."""
    conn = connect(db_url)
    try:
        conn.set_session(isolation_level=psycopg2.extensions.ISOLATION_LEVEL_REPEATABLE_READ, readonly=True)
        with conn.cursor() as cur:
            # SET and LOCK take no snapshot: it is taken by the first query, after the locks are held.
            cur.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(statement_timeout)))
            cur.execute(sql.SQL("SET LOCAL idle_in_transaction_session_timeout = {}").format(sql.Literal(idle_timeout)))
            if lock:
                cur.execute(
                    sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(
                        sql.SQL(", ").join(relations.relation(t) for t in lock)
                    )
                )
            yield cur
        conn.rollback()
    finally:
        conn.close()


def backed_up_tables(policy: Policy) -> list[str]:
    return [name for name, rule in policy.tables.items() if rule.backup]


def take_snapshot(
    db_url: str,
    region: str,
    endpoint_url: str | None,
    sid: str,
    policy: Policy,
    key: bytes,
    *,
    erasure_deadline_days: int = 30,
    certificates_endpoint: str | None = None,
) -> dict[str, Any]:
    """Write snapshot `sid` into `region`'s backup bucket; return counts (no personal data).

    `certificates_endpoint`: where the evidence bucket is (default: the region's endpoint)."""
    layout.check_snapshot_id(sid)
    client = store.region_client(region, endpoint_url)
    bucket = BUCKETS.backup(region)
    problem = locks.bucket_violation(client, bucket, erasure_deadline_days)
    if problem:
        raise RuntimeError(f"backup region {region}: refusing to write a snapshot: {problem}")
    with writer.region_lock(db_url, region, wait=True):  # held until the manifest is written
        done = _export(db_url, region, client, bucket, sid, policy, key)
    if done is None:
        return already_complete(db_url, client, bucket, region, sid, certificates_endpoint or endpoint_url)
    manifest, leftovers = done
    return record_complete(db_url, manifest, certificates_endpoint or endpoint_url, leftover_versions_removed=leftovers)


def record_honoured(db_url: str, region: str, sid: str, tombstones: set[str]) -> None:
    """Before the manifest: the tombstones the snapshot's objects honour, so that whoever completes it (this run,
    or a retry finding the manifest of a run killed right after it) knows who is in it."""
    with transaction(db_url) as cur:
        cur.execute(
            "DELETE FROM backup_tombstone_applications WHERE snapshot_id = %s AND region = %s", (sid, region)
        )  # a killed attempt's, before its manifest: this attempt's set is the one its objects honour
        cur.execute(
            "INSERT INTO backup_tombstone_applications (snapshot_id, region, subject_pseudonym)"
            " SELECT %s, %s, unnest(%s::text[])",
            (sid, region, sorted(tombstones)),
        )


def record_complete(db_url: str, manifest: Manifest, certificates_endpoint: str | None, **extra: Any) -> dict[str, Any]:
    """After the manifest is written: mark the snapshot complete in the catalogue, put the people erased while
    it was written (no application recorded by record_honoured) back to pending, their certificates too, append
    the ledger entry; return the summary (counts, no personal data)."""
    sid, region = manifest.snapshot_id, manifest.region
    summary: dict[str, Any] = {
        "region": region,
        "snapshot_id": sid,
        "status": "complete",
        "tables": len(manifest.tables),
        "objects": len(manifest.objects),
        "rows": manifest.total_rows,
        "bytes": manifest.total_bytes,
        "bytes_written": manifest.own_bytes,
        **extra,
    }
    with transaction(db_url) as cur:
        writer.lock_status(cur, region)  # first: propagation may be applying tombstones to this very snapshot
        cur.execute(
            "UPDATE backup_snapshots SET status = 'complete', completed_at = now(), objects = %s, rows = %s,"
            " bytes = %s WHERE snapshot_id = %s AND region = %s",
            (summary["objects"], summary["rows"], summary["bytes"], sid, region),
        )
        # People erased while this snapshot was written are in it: their region status is pending again until
        # propagation has rewritten it too.
        cur.execute(
            "UPDATE backup_propagation_status s SET status = 'pending', certificate_updated = false"
            " WHERE s.region = %s AND s.status = 'applied' AND NOT EXISTS (SELECT 1 FROM"
            " backup_tombstone_applications a WHERE a.snapshot_id = %s AND a.region = s.region"
            " AND a.subject_pseudonym = s.subject_pseudonym)",
            (region, sid),
        )
        summary["erasures_pending_again"] = cur.rowcount
        from lethe.ledger import append

        append(cur, "backup_snapshot", {k: v for k, v in summary.items() if k != "status"})
    if summary["erasures_pending_again"]:
        update_certificates(db_url, region, certificates_endpoint)
    return summary


def already_complete(
    db_url: str, client: Any, bucket: str, region: str, sid: str, certificates_endpoint: str | None
) -> dict[str, Any]:
    """The manifest is there. A run killed after it, before record_complete, is caught up: the catalogue, the
    people erased while it was written put back to pending (the snapshot holds them), the ledger entry."""
    with transaction(db_url) as cur:
        cur.execute("SELECT status FROM backup_snapshots WHERE snapshot_id = %s AND region = %s", (sid, region))
        row = cur.fetchone()
    if row is not None and row[0] == "writing":
        log.info("snapshot %s: manifest written in %s by a run killed before completing it; completing", sid, region)
        return record_complete(db_url, read_manifest(client, bucket, sid), certificates_endpoint, caught_up=True)
    log.info("snapshot %s already complete in %s", sid, region)
    return {"region": region, "snapshot_id": sid, "status": "already complete"}


def start_writing(db_url: str, region: str, sid: str, policy_version: str) -> None:
    with transaction(db_url) as cur:
        cur.execute(
            "INSERT INTO backup_snapshots (snapshot_id, region, status, policy_version) VALUES (%s, %s, 'writing', %s)"
            " ON CONFLICT (snapshot_id, region) DO UPDATE SET status = 'writing', started_at = now()",
            (sid, region, policy_version),
        )


def _export(
    db_url: str, region: str, client: Any, bucket: str, sid: str, policy: Policy, key: bytes
) -> tuple[Manifest, int] | None:
    """Write the snapshot's objects, then its manifest; None when it is already complete. Under the region lock."""
    if store.exists(client, bucket, layout.manifest_key(sid)):
        return None
    # Leftovers of killed attempts (this snapshot's or an earlier one's) have no manifest, and no writer
    # holds the lock: remove every version of them before writing anew.
    _, leftovers = writer.remove_incomplete(db_url, region, client, bucket)
    start_writing(db_url, region, sid, policy.version)
    manifest = Manifest(
        snapshot_id=sid,
        region=region,
        bucket=bucket,
        created_at=layout.snapshot_time(sid).isoformat(),
        policy_version=policy.version,
        policy_digest=policy.digest,
        buckets=policy.backups.buckets,
        tables={},
        incremental=policy.backups.incremental,
    )
    with contextlib.ExitStack() as held:
        if policy.backups.incremental:  # the night before is read whole: no propagation rewrites it meanwhile
            held.enter_context(session_lock(db_url, writer.chain_lock(region)))
        previous = _previous(client, bucket, sid) if policy.backups.incremental else None
        with export_transaction(db_url, lock=backed_up_tables(policy)) as cur:
            cur.execute("SELECT subject_pseudonym FROM erasure_tombstones")
            tombstones = {row[0] for row in cur.fetchall()}
            manifest.tombstones_at_export = len(tombstones)

            with store.Uploads(client, bucket) as uploads:

                def upload(
                    table: str, bucket_no: int | None, body: BinaryIO, last: int | None = None
                ) -> tuple[str, str]:
                    object_key = layout.object_key(sid, table, bucket_no, last)
                    return object_key, uploads.put_file(object_key, body)

                since = None if previous is None else Since(previous, client, bucket, sid)
                tables = backed_up_tables(policy)
                manifest.tables = export_tables(cur, tables, policy, key, tombstones, upload, since=since)
        own = layout.snapshot_prefix(sid)
        if previous is not None and any(not o.key.startswith(own) for o in manifest.objects):
            # Objects shared with earlier snapshots hold whom those hold: only the people already erased from them
            # are honoured here; propagation carries the others into every snapshot sharing the objects.
            tombstones &= _applied(db_url, region, previous.snapshot_id)
        record_honoured(db_url, region, sid, tombstones)
        write_manifest(client, bucket, manifest)  # last: from here on the snapshot exists
        writer.remove_strays(client, bucket, manifest)
        if previous is not None:  # tonight's digests supersede the night before's
            digest_state.delete_previous(client, bucket, previous)
        return manifest, leftovers


Sink = Callable[..., tuple[str, str]]
"""Stores one encoded object: (table, bucket, file of Parquet bytes, rewound[, a delta's last bucket]) ->
(object key, sha256)."""


@dataclass
class Since:
    """An incremental export: the region's last complete snapshot (in `bucket`); `night` is this one."""

    previous: Manifest
    client: Any
    bucket: str
    night: str

    def entry(self, table: str, columns: list[frames.Column]) -> TableEntry | None:
        """The table's entry to write a delta against: None (write a base) unless the previous snapshot is
        incremental and holds the table with the same columns."""
        entry = self.previous.tables.get(table)
        if not self.previous.incremental or entry is None or entry.buckets is None:
            return None
        same = [(c["name"], c["pg_type"]) for c in entry.columns] == [(c.name, c.pg_type) for c in columns]
        return entry if same else None


def _previous(client: Any, bucket: str, sid: str) -> Manifest | None:
    """The last complete snapshot before `sid`, found newest first (not a HEAD per retained snapshot)."""
    for earlier in reversed([s for s in snapshot_ids(client, bucket) if s < sid]):
        if store.exists(client, bucket, layout.manifest_key(earlier)):
            return read_manifest(client, bucket, earlier)
    return None


def _applied(db_url: str, region: str, sid: str) -> set[str]:
    with transaction(db_url) as cur:
        cur.execute(
            "SELECT subject_pseudonym FROM backup_tombstone_applications WHERE snapshot_id = %s AND region = %s",
            (sid, region),
        )
        return {row[0] for row in cur.fetchall()}


def export_tables(
    cur: psycopg2.extensions.cursor,
    tables: list[str],
    policy: Policy,
    key: bytes,
    tombstones: set[str],
    sink: Sink,
    *,
    buckets: int | None = None,
    threads: int = WRITE_THREADS,
    index_terms: bool | None = None,
    since: Since | None = None,
) -> dict[str, TableEntry]:
    """Export tables in the caller's transaction, a block at a time; encode and store each object in a worker.

    Each table's COPY is parsed in blocks while it is received, its rows split by subject bucket into an
    unnamed spill file (frames.BucketSpill); then each bucket's object is written a row group at a time and
    stored by a worker while the next table is read: a worker's memory is bounded by the block and the row
    group, not by the table. Each table gets its own bucket count (layout.bucket_counts, from the tables'
    sizes on disk) unless `buckets` fixes one for all. Each object of a table with free text gets its term
    index (lethe.backup.term_index) when the policy's `backups.term_index` (or `index_terms`, if given) says so.
    With `since` (an incremental export), a table the previous snapshot holds alike gets a delta against it
    (lethe.backup.chain) in its bucket count, every other table a base.
    """
    if index_terms is None:
        index_terms = policy.backups.term_index
    pseudonyms = frames.Pseudonyms(key)  # one HMAC per person for the whole snapshot
    if buckets is None:
        rewritable = {t for t in tables if _rewritable(policy, t)}
        counts = layout.bucket_counts(table_sizes(cur, tables), rewritable, policy.backups.buckets)
    else:
        counts = dict.fromkeys(tables, buckets)
    before: dict[str, TableEntry] = {}
    if since is not None:
        for table in tables:
            found = since.entry(table, frames.table_columns(cur, table))
            # A table grown past its chain's bucket count (beyond the headroom the counts are chosen with) gets a
            # base with tonight's: the chain's count would let one person's objects outgrow the policy's share.
            if (
                found is not None
                and found.buckets is not None
                and counts[table] <= found.buckets * layout.BUCKET_HEADROOM
            ):
                before[table], counts[table] = found, found.buckets
    digests = since is not None or policy.backups.incremental
    entries: dict[str, TableEntry] = {}
    pending: list[tuple[str, TableEntry, frames.BucketSpill, list[Future[Any]]]] = []
    heap.few_arenas(fixed_mmap=digests)  # an incremental night, base or delta: its digests need the room
    try:
        # fetch first: it shuts down after the writers that read through it
        with (
            ThreadPoolExecutor(FETCH_THREADS) as fetch,
            ThreadPoolExecutor(threads) as pool,
            ThreadPoolExecutor(1) as parser,
        ):
            try:
                for table in tables:
                    entry, spill = _export_table(
                        cur, table, policy, key, tombstones, pseudonyms, counts[table], parser, digests=digests
                    )
                    entries[table] = entry
                    indexer = TermIndexer(key, entry.free_text) if entry.free_text and index_terms else None
                    writes: list[Future[Any]]
                    if table in before and since is not None:
                        delta = (table, entry, spill, before[table], since, sink, indexer, fetch)
                        writes = [pool.submit(_write_delta, *delta)]
                    else:
                        held = spill.buckets_held()
                        writes = [pool.submit(_write_part, table, b, spill, sink, indexer) for b in held]
                    pending.append((table, entry, spill, writes))
                for table, entry, spill, writes in pending:
                    done = [w.result() for w in writes]
                    if table in before:  # a delta: the objects before it, then its own
                        objects, ends = done[0]
                        entry.objects = [*before[table].objects, *objects]
                        entry.digests = ends
                    else:
                        entry.objects = sorted(done, key=lambda o: o.key)
                    spill.close()  # its objects are stored: the disk space goes now, not at the end
            except BaseException:
                for _, _, _, writes in pending:
                    for write in writes:
                        write.cancel()  # the ones already running finish before the pool lets go
                raise
    finally:
        for _, _, spill, _ in pending:  # after the workers stopped reading them
            spill.close()
    return entries


def _rewritable(policy: Policy, table: str) -> bool:
    rule = policy.tables[table]
    return rule.erasure is not None and rule.erasure.action in ("delete", "pseudonymise")


def table_sizes(cur: psycopg2.extensions.cursor, tables: list[str]) -> dict[str, int]:
    """Bytes on disk per table (a partitioned table: all its partitions), to size the subject buckets."""
    names = relations.policy_oids(cur, tables)
    cur.execute(
        "SELECT c.oid::oid, CASE WHEN c.relkind = 'p' THEN (SELECT coalesce(sum(pg_table_size(p.relid)), 0)"
        " FROM pg_partition_tree(c.oid) p) ELSE pg_table_size(c.oid) END FROM pg_class c"
        " WHERE c.oid = ANY(%s::oid[])",
        (list(names),),
    )
    sizes = {names[int(oid)]: int(size) for oid, size in cur.fetchall()}
    return {t: sizes.get(t, 0) for t in tables}


# Every text-like column can hold an erased person (a URL, a JSON payload, a hold's reason, a cookie):
# backups redact them all, with the residue scanner's matching, as the primary's erasure does.
_SEARCHED_TYPES = frozenset(
    {"text", "varchar", "bpchar", "citext", "json", "jsonb", "inet", "cidr"}
    | {f"_{t}" for t in ("text", "varchar", "bpchar", "citext", "json", "jsonb", "inet", "cidr")}
)


def searched_columns(
    columns: list[frames.Column], subject: str | None, classes: dict[str, str], kept: Iterable[str] = ()
) -> list[str]:
    """The columns propagation, restore and the audit search for erased people: every text-like one but the links
    and what the policy keeps of a kept row (`erasure.keep`: an invoice's billing_name stays as issued, on the
    primary as in every snapshot, as lethe.erasure.sweep leaves it)."""
    skipped = {subject, *kept} | {c for c, cls in classes.items() if cls == "pseudonym"}
    return [c.name for c in columns if c.pg_type in _SEARCHED_TYPES and c.name not in skipped]


def _export_table(
    cur: psycopg2.extensions.cursor,
    table: str,
    policy: Policy,
    key: bytes,
    tombstones: set[str],
    pseudonyms: frames.Pseudonyms,
    buckets: int,
    parser: ThreadPoolExecutor,
    *,
    digests: bool = False,
) -> tuple[TableEntry, frames.BucketSpill]:
    """COPY one table, each block parsed on `parser` while the next is received: its subjects' pseudonyms
    added, the tombstoned people's rows erased, each row's digest added (`digests`: an incremental snapshot),
    the rows spilled by bucket."""
    rule = policy.tables[table]
    columns = frames.table_columns(cur, table)
    erasure = rule.erasure
    entry = TableEntry(
        columns=[{"name": c.name, "pg_type": c.pg_type, "arrow_type": str(c.arrow_type)} for c in columns],
        subject_column=rule.subject,
        erasure_action=erasure.action if erasure else None,
        erasure_columns=frames.manifest_strategies(dict(erasure.columns), policy.subject.placeholder)
        if erasure
        else {},
        pseudonym_column=next((c for c, cls in rule.columns.items() if cls == "pseudonym"), None),
        free_text=searched_columns(
            columns, rule.subject, rule.columns, erasure.keep if erasure and erasure.action != "delete" else ()
        ),
        buckets=buckets,
    )
    owner = None
    canonical = relations.key_text_is_canonical(cur, policy)
    if rule.subject is None and erasure is not None:
        # a citext key: the pointing rows' keys as the subject row stores them (one person in any case, and the
        # spelling of her tombstone's pseudonym)
        fks = relations.foreign_keys(cur, policy.tables)
        owner = relations.referenced_owner(policy, fks, table, canonical=canonical) or relations.inherited_owner(
            policy, fks, table, canonical=canonical
        )
    elif rule.subject and table != policy.subject.table and not canonical:
        # a citext link may spell the key otherwise than the subject row: the pseudonym is of the stored spelling,
        # the one an erasure's tombstone holds, so every spelling of the person is in one bucket and erased with it
        owner = relations.stored_key(policy, sql.SQL("t.{}").format(sql.Identifier(rule.subject)))
    exported = columns if owner is None else [*columns, frames.Column(OWNER, "text", owner)]
    spill = frames.BucketSpill(buckets)

    def consume(block: Any) -> None:
        rows = frames.parse_csv(block, exported)
        if owner is None:
            rows = frames.with_subject(rows, rule.subject, key, pseudonyms, rule.link_pseudonym)
        else:  # a row the subject points to (an address), or one pointing at hers: its owner is that row's
            cut = rule.link_pseudonym if rule.subject else None
            rows = frames.with_subject(rows, OWNER, key, pseudonyms, cut).drop_columns([OWNER])
        rows, _ = frames.erase_subjects(
            rows, tombstones, entry.erasure_action, entry.erasure_columns, entry.pseudonym_column
        )
        if digests:  # the subject too: a row whose owner changed within its bucket is a change (found from outside)
            rows = chain.with_row_digests(rows, [*(c.name for c in columns), layout.SUBJECT_COLUMN], key)
        spill.add(rows)

    blocks = frames.CopyBlocks(parser, consume)
    cur.execute("SET LOCAL DateStyle = 'ISO, YMD'")  # the time format Arrow parses, whatever the server default
    try:
        cur.copy_expert(frames.copy_query(table, exported).as_string(cur), blocks)
        blocks.finish()
    except BaseException:
        blocks.cancel()
        blocks.wait()  # a block being parsed still writes into the spill
        spill.close()
        raise
    entry.rows = spill.rows
    return entry, spill


def _write_part(
    table: str, bucket_no: int | None, spill: frames.BucketSpill, sink: Sink, indexer: TermIndexer | None
) -> ObjectEntry:
    """Encode one bucket's object from the spill a row group at a time into an unnamed file and store it; with an
    indexer (a table with free text), index its terms for the manifest."""
    try:
        return _encode_and_store(table, bucket_no, spill, sink, indexer)
    finally:
        # A small object's encoding frees little; trimming the heap after each of a small snapshot's hundreds
        # of objects cost it a tenth of its time (py-spy, 20k users).
        if spill.spilled_bytes(bucket_no) > IN_MEMORY_OBJECT_BYTES:
            heap.give_back()


def _encode_and_store(
    table: str, bucket_no: int | None, spill: frames.BucketSpill, sink: Sink, indexer: TermIndexer | None
) -> ObjectEntry:
    assert spill.schema is not None  # a bucket held means rows were spilled
    # A small object is encoded in memory (most are: a file each cost a small snapshot a fifth of its time),
    # a large one into an unnamed file.
    small = spill.spilled_bytes(bucket_no) <= IN_MEMORY_OBJECT_BYTES
    return encode_object(table, bucket_no, spill.parts(bucket_no), spill.schema, sink, indexer, small=small)


def encode_object(
    table: str,
    bucket_no: int | None,
    parts: Iterable[pa.Table],
    schema: pa.Schema,
    sink: Sink,
    indexer: TermIndexer | None,
    *,
    small: bool,
) -> ObjectEntry:
    """One base (or full) object of a bucket, written a part at a time (in memory when `small`, else into an
    unnamed file) and stored through `sink`; with an indexer, its term index. Also expiry's rolled bases."""
    found: set[str] = set()
    rows = 0
    with io.BytesIO() if small else tempfile.TemporaryFile() as body:
        out = frames.ParquetStream(body, schema)
        for part in parts:
            out.write(part)
            rows += part.num_rows
            if indexer is not None:
                found |= indexer.terms(part)
        out.close()
        body.flush()
        size = body.tell()
        body.seek(0)
        object_key, digest = sink(table, bucket_no, body)
    return ObjectEntry(
        key=object_key,
        bucket=bucket_no,
        rows=rows,
        bytes=size,
        sha256=digest,
        term_index=BloomFilter.of(found).to_manifest() if indexer is not None else None,
    )


def _write_delta(
    table: str,
    entry: TableEntry,
    spill: frames.BucketSpill,
    before: TableEntry,
    since: Since,
    sink: Sink,
    indexer: TermIndexer | None,
    fetch: Executor,
) -> tuple[list[ObjectEntry], dict[str, Any]]:
    """A table's night of changes against `before`, bucket by bucket: the rows whose digest is new, one gone row
    per digest no longer there; consecutive buckets gathered into objects of about chain.DELTA_OBJECT_BYTES.
    Also stores the digests the night ends with (lethe.backup.digest_state) and returns their reference."""
    rows_schema = spill.schema or _rows_schema(entry)
    schema = chain.delta_schema(rows_schema)
    reader = chain.Reader(since.client, since.bucket, columns=[])  # the digests only
    objects: list[ObjectEntry] = []
    group: list[pa.Table] = []
    span: list[int | None] = []
    gathered = 0  # the group's bytes: summed once a part (Table.nbytes on every bucket cost a night seconds)

    def flush() -> None:
        nonlocal gathered
        if group:
            objects.append(_store_delta(table, pa.concat_tables(group), span[0], span[-1], since.night, sink, indexer))
        group.clear()
        span.clear()
        gathered = 0

    held = set(spill.buckets_held())
    buckets = sorted(held | set(chain.buckets_named(before)), key=lambda b: -1 if b is None else b)
    was = digest_state.digests_at(
        since.client,
        since.bucket,
        before,
        buckets,
        lambda asked: chain.digests_at(reader, before, asked, fetch, FETCH_AHEAD),
    )
    ends = digest_state.Writer()
    try:
        for bucket_no, was_digests in zip(buckets, was, strict=True):
            part = _bucket_delta(spill, bucket_no, was_digests, ends, rows_schema, schema)
            if not part.num_rows:
                continue
            if bucket_no is None:  # rows without a subject: an object of their own
                flush()
            group.append(part)
            span.append(bucket_no)
            gathered += part.nbytes
            if bucket_no is None or gathered >= chain.DELTA_OBJECT_BYTES:
                flush()
        flush()
    except BaseException:
        ends.discard()
        raise
    return objects, ends.store(
        since.client, since.bucket, digest_state.key(since.night, table), [*before.objects, *objects]
    )


def _bucket_delta(
    spill: frames.BucketSpill,
    bucket_no: int | None,
    was: np.ndarray,
    ends: digest_state.Writer,
    rows_schema: pa.Schema,
    schema: pa.Schema,
) -> pa.Table:
    """A bucket's part of the delta against its digests of the night before (`was`); its digests of tonight added
    to `ends`. Its working arrays go at the return, before the next bucket's digests are read."""
    now = _spilled_digests(spill, bucket_no)
    new, gone = chain.changes(was, now)
    ends.add(bucket_no, now)  # after the changes: their working arrays are let go
    number = chain.bucket_number(bucket_no)
    added = chain.as_delta(_taken(spill, bucket_no, new, rows_schema), number, schema)
    return pa.concat_tables([added, chain.gone_rows(schema, gone, number)])


def _spilled_digests(spill: frames.BucketSpill, bucket_no: int | None) -> np.ndarray:
    """A bucket's digests, each block's copied out (a view would keep the block's whole buffer, every column,
    alive), the copies let go once joined: not held beside the diff."""
    parts = [b.column(chain.ROW_COLUMN).to_numpy().copy() for b in spill.parts(bucket_no)]
    return np.concatenate(parts) if parts else np.empty(0, np.uint64)


def _taken(spill: frames.BucketSpill, bucket_no: int | None, rows: np.ndarray, schema: pa.Schema) -> pa.Table:
    """Rows `rows` (positions in the bucket) of a spilled bucket, read a block at a time: a bucket is never whole
    in memory (the rows without a subject of a large table are one bucket: 301 MiB of visitor_logs at 1M users)."""
    rows = np.sort(rows)
    taken, offset = [], 0
    for block in spill.parts(bucket_no) if len(rows) else ():
        low, high = np.searchsorted(rows, [offset, offset + block.num_rows])
        if high > low:
            taken.append(block.take(rows[low:high] - offset))
        offset += block.num_rows
    return pa.concat_tables(taken) if taken else schema.empty_table()


def _rows_schema(entry: TableEntry) -> pa.Schema:
    """The exported rows' schema, from the manifest's columns (a table with no rows tonight has no spill schema)."""
    fields = [pa.field(c["name"], frames.Column(c["name"], c["pg_type"]).arrow_type) for c in entry.columns]
    return pa.schema([*fields, pa.field(layout.SUBJECT_COLUMN, pa.string()), pa.field(chain.ROW_COLUMN, pa.uint64())])


def _store_delta(
    table: str,
    rows: pa.Table,
    first: int | None,
    last: int | None,
    night: str,
    sink: Sink,
    indexer: TermIndexer | None,
) -> ObjectEntry:
    with io.BytesIO() as body:
        out = frames.ParquetStream(body, rows.schema)
        out.write(rows)
        out.close()
        size = body.tell()
        body.seek(0)
        object_key, digest = sink(table, first, body, chain.bucket_number(last))
    terms = indexer.terms(rows) if indexer is not None else set()
    return ObjectEntry(
        key=object_key,
        bucket=first,
        last_bucket=last,
        rows=rows.num_rows,
        bytes=size,
        sha256=digest,
        term_index=BloomFilter.of(terms).to_manifest() if indexer is not None else None,
        night=night,
    )


def new_snapshot_id(now: datetime | None = None) -> str:
    return layout.snapshot_id(now or datetime.now(UTC))
