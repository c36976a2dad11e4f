"""backup_erasure_propagation's work for one region: carry every pending tombstone into every retained snapshot.

For each complete snapshot, the tombstones not yet applied to it are grouped by
the objects that can hold their rows (subject bucket of the pseudonym), and each
affected object is rewritten once for all of them. Free-text columns are searched
too, for mentions of the erased people by the keyed pseudonyms of their identifiers
(lethe.backup.mentions), in the same rewrite: every object whose term index (a Bloom
filter in its manifest entry, lethe.backup.term_index) may hold one of those pseudonyms,
and every object without an index (snapshots from before indexes). And the
links the primary cuts in kept rows are cut too (lethe.backup.links: an erased person's
legal holds name them by pseudonym only).

A citext subject key may have been re-cased on the primary after a snapshot ('Anna@x' exported, 'anna@x' erased):
the snapshot's pseudonyms (and buckets) are of the old spelling, her tombstone's of the new one. Her tombstone
also keeps the pseudonym of her key case-folded (lethe.pseudonym.folded_subject_pseudonym), so the objects of the
rewritable tables whose subject column is citext are read first, whatever their bucket, and every pseudonym the
snapshot stored beside a key folding to hers is hers there too (_folded_aliases): the rows under it, in any table
(those linked to hers through foreign keys included), are erased as hers, by the normal bucketed path.

A region's run has three parts: plan_region (step 0), propagate_snapshot for each
complete snapshot (steps 1-4; snapshots share nothing, so the DAG maps one task per
snapshot and Celery workers share them) and finish_region (step 5). Order, so that a
kill at any point loses nothing and a rerun finishes the job:

0. delete the incomplete snapshots (no manifest) a killed backup_nightly left, or whose manifest
   someone deleted; while a backup is being written, every one but its own (lethe.backup.writer);
   list the complete ones;
1. put the rewritten object (the old version stays until step 3), read it back and
   check its checksum and that rows = before - erased;
2. write the manifest with the new checksums and row counts;
3. delete every noncurrent version (and delete marker) of every object of the snapshot,
   whether this run rewrote it or an earlier, killed one did;
4. only then record the tombstones as applied to this snapshot (database): a snapshot
   counts as applied when no version of any of its objects holds an erased person;
5. once every snapshot's task is done: a tombstone applied to every complete snapshot of
   the region is marked applied there, and its erasure certificate says so.

Step 3 runs for every retained snapshot on every run, pending tombstones or not. A
rerun finds the tombstones still pending, sees the object already clean, repairs the
manifest entry from the object itself, deletes the old versions and records.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lethe import relations
from lethe.backup import chain, frames, heap, layout, links, store, writer
from lethe.backup.certificate import update_certificates
from lethe.backup.manifest import (
    Manifest,
    ObjectEntry,
    TableEntry,
    complete_manifests,
    complete_snapshot_ids,
    overwritten_indexes,
    sweep_indexes,
)
from lethe.backup.manifest import read as read_manifest
from lethe.backup.manifest import write as write_manifest
from lethe.backup.mentions import MentionFinder, prefilter_of
from lethe.backup.term_index import Query, TermIndexer, TermMemo, may_mention
from lethe.config import BUCKETS
from lethe.db import connect, session_lock, transaction
from lethe.pseudonym import folded_subject_pseudonym
from lethe.storage import delete_versions

log = logging.getLogger(__name__)
T = TypeVar("T")
REWRITE_THREADS = 4
DOWNLOAD_THREADS = 8
DOWNLOAD_AHEAD = 16  # objects downloaded, waiting for a rewrite: on disk, each up to an object's size


class PropagationInterrupted(RuntimeError):
    """Raised by the interruption drill (interrupt_after_puts) to prove a half-done run is safe."""


STEPS = ("remove_incomplete", "put_object", "write_manifest", "sweep_versions", "record_applied", "record_status")
"""Propagation's steps in order, each a module-level function the region's run calls by name."""


@dataclass
class RegionResult:
    region: str
    snapshots: int = 0
    snapshots_rewritten: int = 0
    tombstones: int = 0  # every tombstone (set by finish)
    tombstones_newly_applied: int = 0  # now applied to every complete snapshot of the region
    applications: int = 0  # (snapshot, tombstone) pairs applied by this run: one per snapshot a tombstone reached
    objects_read: int = 0
    objects_rewritten: int = 0
    bytes_rewritten: int = 0
    bytes_in_touched_snapshots: int = 0
    rows_deleted: int = 0
    rows_pseudonymised: int = 0
    manifest_entries_repaired: int = 0
    tombstoned_rows_left: int = 0  # post-condition: rows of a pending subject still in a rewritten object
    mentions_redacted: int = 0  # erased people's identifiers replaced in other people's free text
    mentions_left: int = 0  # post-condition: such mentions still in a rewritten object
    free_text_objects: int = 0  # objects with free text in snapshots searched for erased identifiers
    free_text_objects_read: int = 0  # of those, read (for rows of erased people or for mentions)
    free_text_objects_searched: int = 0  # of those, searched for mentions (the term index may hold one)
    folded_key_objects_read: int = 0  # objects with a citext subject column read for re-cased keys (_folded_aliases)
    noncurrent_versions_deleted: int = 0
    incomplete_snapshots_removed: int = 0
    holds_forgotten: int = 0  # legal holds of erased people now naming them by pseudonym only
    certificates_updated: int = 0
    certificates_missing: int = 0
    rewrites_per_object: dict[str, int] = field(default_factory=dict)  # rewrites in this process, by object
    rewrites_from_tasks: dict[str, int] = field(default_factory=lambda: {"objects": 0, "max": 0})  # other tasks'

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        counts = list(self.rewrites_per_object.values())
        carried = data.pop("rewrites_from_tasks")
        data["rewrites_per_object"] = {
            "objects": len(counts) + carried["objects"],
            "max": max([*counts, carried["max"]]),
        }
        return data

    def add(self, part: RegionResult | dict[str, Any]) -> None:
        """Sum one snapshot's counts into the region's: a result of this process, or a task's as_dict()."""
        data = part.as_dict() if isinstance(part, RegionResult) else part
        for name, value in data.items():
            if name != "region" and isinstance(value, int):
                setattr(self, name, getattr(self, name) + value)
        if isinstance(part, RegionResult):
            self.rewrites_per_object.update(part.rewrites_per_object)  # keys name the snapshot: never shared
        else:
            self.rewrites_from_tasks["objects"] += data["rewrites_per_object"]["objects"]
            self.rewrites_from_tasks["max"] = max(self.rewrites_from_tasks["max"], data["rewrites_per_object"]["max"])


@dataclass
class _Job:
    table: str
    entry: TableEntry
    obj: ObjectEntry
    pseudonyms: set[str]  # subjects whose rows this object can hold (empty: searched for mentions only)
    mentions: bool = False  # search the table's free-text columns
    holds: set[str] = field(default_factory=set)  # a legal holds object: forget holds of these subjects
    # a pseudonym the snapshot stored for a re-cased citext key -> the tombstone's (_folded_aliases): rows under it
    # are hers, erased under her tombstone's pseudonym
    aliases: dict[str, str] = field(default_factory=dict)


class _Drill:
    def __init__(self, after: int | None) -> None:
        self.after, self.puts, self.lock = after, 0, threading.Lock()

    def put_done(self) -> None:
        if self.after is None:
            return
        with self.lock:
            self.puts += 1
            if self.puts >= self.after:
                raise PropagationInterrupted(f"interrupted after {self.puts} object rewrite(s) (drill)")


def propagate_region(
    db_url: str,
    region: str,
    endpoint_url: str | None,
    *,
    key: bytes,
    certificates_endpoint: str | None = None,
    interrupt_after_puts: int | None = None,
    use_term_index: bool = True,
) -> RegionResult:
    """Apply every pending tombstone to every complete snapshot in `region`; return counts (no personal data).

    The region's three steps in this process, one snapshot after another (the tests' and benches' path):
    the DAG runs the same steps as tasks, a mapped task per snapshot. `key` is the pseudonym key, needed to
    recognise erased identifiers in free text. Without `use_term_index` every free-text object is searched
    (the bench's and tests' full read).
    """
    snapshots, removed = plan_region(db_url, region, endpoint_url)
    drill = _Drill(interrupt_after_puts)
    finders: dict[frozenset[str], MentionFinder] = {}  # shared by the snapshots: it remembers the texts it matched
    result = RegionResult(region=region, incomplete_snapshots_removed=removed)
    for sid in snapshots:
        result.add(_propagate_snapshot(db_url, region, endpoint_url, sid, key, use_term_index, drill, finders))
    return finish_region(db_url, region, endpoint_url, result, certificates_endpoint)


def plan_region(db_url: str, region: str, endpoint_url: str | None) -> tuple[list[str], int]:
    """The region's complete snapshots, oldest first, and how many incomplete ones were removed first.

    Incomplete snapshots are removed: while no backup is being written in the region (its writer lock is free),
    every one (a killed backup_nightly left them); while one is, every one but its own. A writer removes the
    others when it takes the lock, so one found beside it lost its manifest since (someone deleted it): left
    there, it would hold the erased people while their erasure is marked applied to every complete snapshot.
    """
    client = store.region_client(region, endpoint_url)
    bucket = BUCKETS.backup(region)
    with writer.region_lock(db_url, region, wait=False) as alone:
        if not alone:
            log.info("region %s: a backup is being written; its incomplete snapshot is left to it", region)
        removed = len(remove_incomplete(db_url, region, client, bucket, beside_writer=not alone)[0])
    return complete_snapshot_ids(client, bucket), removed


def propagate_snapshot(
    db_url: str,
    region: str,
    endpoint_url: str | None,
    sid: str,
    *,
    key: bytes,
    use_term_index: bool = True,
) -> RegionResult:
    """Apply the tombstones not yet applied to snapshot `sid` (one task of the DAG); counts, no personal data."""
    return _propagate_snapshot(db_url, region, endpoint_url, sid, key, use_term_index, _Drill(None), {})


def _propagate_snapshot(
    db_url: str,
    region: str,
    endpoint_url: str | None,
    sid: str,
    key: bytes,
    use_term_index: bool,
    drill: _Drill,
    finders: dict[frozenset[str], MentionFinder],
) -> RegionResult:
    client = store.region_client(region, endpoint_url)
    bucket = BUCKETS.backup(region)
    result = RegionResult(region=region, snapshots=1)
    if not store.exists(client, bucket, layout.manifest_key(sid)):
        log.info("region %s: snapshot %s is gone (expired since the plan); nothing to apply", region, sid)
        result.snapshots = 0
        return result
    if read_manifest(client, bucket, sid).incremental:
        if _pending_in(db_url, region, sid):
            _propagate_chain(db_url, region, client, bucket, key, use_term_index, drill, result)
        result.noncurrent_versions_deleted += sweep_versions(client, bucket, sid)
        return result
    with transaction(db_url) as cur:
        cur.execute(
            "SELECT t.subject_pseudonym, t.identifier_pseudonyms, t.prefilter_pseudonyms FROM erasure_tombstones t"
            " WHERE NOT EXISTS (SELECT 1 FROM backup_tombstone_applications a WHERE a.snapshot_id = %s"
            " AND a.region = %s AND a.subject_pseudonym = t.subject_pseudonym)",
            (sid, region),
        )
        rows = cur.fetchall()
    if rows:
        pending = {p for p, _, _ in rows}
        identifiers = {p: list(ids or []) for p, ids, _ in rows}
        wanted = frozenset(i for ids in identifiers.values() for i in ids)
        finder = finders.get(wanted) or finders.setdefault(
            wanted, MentionFinder(key, wanted, prefilter_of((identifiers[p], terms) for p, _, terms in rows))
        )
        manifest = read_manifest(client, bucket, sid)
        per_subject: dict[str, dict[str, int]] = defaultdict(lambda: {"objects": 0, "bytes": 0})
        aliases = _folded_aliases(db_url, client, bucket, [manifest], identifiers, key, result)
        jobs = _affected_jobs(manifest, pending, finder, use_term_index, result, aliases)
        _rewrite_snapshot(client, bucket, manifest, jobs, finder, len(pending), result, per_subject, drill)
    # Every run, every retained snapshot: no old version may outlive its rewrite, whoever wrote it.
    result.noncurrent_versions_deleted += sweep_versions(client, bucket, sid)
    if rows:
        record_applied(db_url, region, sid, per_subject, pending)
        result.applications = len(pending)
    return result


def _pending_in(db_url: str, region: str, sid: str) -> bool:
    with transaction(db_url) as cur:
        cur.execute(
            "SELECT EXISTS (SELECT 1 FROM erasure_tombstones t WHERE NOT EXISTS (SELECT 1 FROM"
            " backup_tombstone_applications a WHERE a.snapshot_id = %s AND a.region = %s"
            " AND a.subject_pseudonym = t.subject_pseudonym))",
            (sid, region),
        )
        return bool(cur.fetchone()[0])  # type: ignore[index]


@dataclass
class _ChainJob:
    job: _Job
    refs: list[tuple[Manifest, TableEntry, ObjectEntry]] = field(default_factory=list)  # every manifest's entry
    deleted: dict[int, list[int]] = field(default_factory=dict)  # bucket -> digests of the rows erased (delete)
    gone: dict[int, list[int]] = field(default_factory=dict)  # bucket -> a delta's gone digests
    stale: bool = False  # found already rewritten, some manifest not: its tables' rows are counted again


def _propagate_chain(
    db_url: str,
    region: str,
    client: Any,
    bucket: str,
    key: bytes,
    use_term_index: bool,
    drill: _Drill,
    result: RegionResult,
) -> None:
    """Every pending tombstone into every incremental snapshot of the region at once.

    Incremental snapshots share objects (a night's manifest names the base and every delta since, written under
    older snapshots' prefixes), so they are done together: each distinct object is read once and rewritten at
    most once for the union of the tombstones pending in the manifests naming it (a person already applied to
    one of them is not in it: erasing her again changes nothing), and every manifest naming it takes its new
    checksum, size, rows and term index. Why one pass under one lock rather than each snapshot's task on its own:
    a task rewriting only its own manifest would read every shared object again (35 times for a base), and two
    tasks updating the same manifests would lose one's update. So the first snapshot task of the region with
    something pending takes the region's chain lock (a session advisory lock, also taken by replication when it
    updates older manifests) and does the whole region; the others wait, then find nothing pending and only
    sweep. The steps keep their order: objects, then every changed manifest, then the old versions under every
    snapshot's prefix, then the applications.
    """
    with session_lock(db_url, writer.chain_lock(region)):
        manifests = [m for m in complete_manifests(client, bucket) if m.incremental]
        with transaction(db_url) as cur:
            cur.execute(
                "SELECT b.sid, t.subject_pseudonym, t.identifier_pseudonyms, t.prefilter_pseudonyms"
                " FROM unnest(%s::text[]) AS b(sid) JOIN erasure_tombstones t ON NOT EXISTS (SELECT 1"
                " FROM backup_tombstone_applications a WHERE a.snapshot_id = b.sid AND a.region = %s"
                " AND a.subject_pseudonym = t.subject_pseudonym)",
                ([m.snapshot_id for m in manifests], region),
            )
            rows = cur.fetchall()
        pending: dict[str, set[str]] = defaultdict(set)
        identifiers: dict[str, list[str]] = {}
        terms: dict[str, Any] = {}
        for sid, subject, ids, prefilter in rows:
            pending[sid].add(subject)
            identifiers[subject], terms[subject] = list(ids or []), prefilter
        if not pending:
            return
        wanted = frozenset(i for ids in identifiers.values() for i in ids)
        finder = MentionFinder(key, wanted, prefilter_of((identifiers[p], terms[p]) for p in identifiers))
        jobs: dict[str, _ChainJob] = {}
        scratch = RegionResult(region=region)
        with_pending = [m for m in manifests if pending[m.snapshot_id]]
        aliases = _folded_aliases(db_url, client, bucket, with_pending, identifiers, key, result)
        for m in with_pending:
            theirs = {a: o for a, o in aliases.items() if o in pending[m.snapshot_id]}
            for job in _affected_jobs(m, pending[m.snapshot_id], finder, use_term_index, scratch, theirs):
                found = jobs.setdefault(job.obj.key, _ChainJob(_Job(job.table, job.entry, job.obj, set())))
                found.job.pseudonyms |= job.pseudonyms
                found.job.mentions |= job.mentions
                found.job.holds |= job.holds
                found.job.aliases.update(job.aliases)
        for m in manifests:  # every manifest naming an object to read, pending there or not
            for entry in m.tables.values():
                for obj in entry.objects:
                    if obj.key in jobs:
                        jobs[obj.key].refs.append((m, entry, obj))
        result.free_text_objects += scratch.free_text_objects
        result.free_text_objects_searched += sum(1 for j in jobs.values() if j.job.mentions)
        if wanted:
            result.free_text_objects_read += sum(1 for j in jobs.values() if j.job.entry.free_text)
        per_subject: dict[str, dict[str, dict[str, int]]] = defaultdict(
            lambda: defaultdict(lambda: {"objects": 0, "bytes": 0})
        )
        changed = _rewrite_chain(client, bucket, list(jobs.values()), finder, pending, result, per_subject, drill)
        _count_rows(client, bucket, list(jobs.values()), changed)
        for m in manifests:  # step 2: every manifest naming a rewritten or repaired object
            if m.snapshot_id in changed:
                m.rewrites.append({"at": datetime.now(UTC).isoformat(timespec="seconds"), **changed[m.snapshot_id]})
                write_manifest(client, bucket, m)
                result.snapshots_rewritten += 1
        for m in manifests:  # step 3: the old versions of shared objects live under their owners' prefixes
            result.noncurrent_versions_deleted += sweep_versions(client, bucket, m.snapshot_id)
        result.noncurrent_versions_deleted += sweep_indexes(client, bucket, manifests)
        for m in manifests:  # step 4
            if pending[m.snapshot_id]:
                record_applied(db_url, region, m.snapshot_id, per_subject[m.snapshot_id], pending[m.snapshot_id])
                result.applications += len(pending[m.snapshot_id])
        result.bytes_in_touched_snapshots += sum(m.total_bytes for m in manifests if m.snapshot_id in changed)


def _rewrite_chain(
    client: Any,
    bucket: str,
    jobs: list[_ChainJob],
    finder: MentionFinder,
    pending: dict[str, set[str]],
    result: RegionResult,
    per_subject: dict[str, dict[str, dict[str, int]]],
    drill: _Drill,
) -> dict[str, dict[str, int]]:
    """Read each object once, rewrite it when something of the erased is in it, and give every manifest entry
    naming it the object's truth; return, per manifest changed, what changed in it."""
    lock = threading.Lock()
    memo = TermMemo()
    indexers: dict[str, TermIndexer] = {}
    changed: dict[str, dict[str, int]] = {}

    def count(sid: str, name: str, n: int) -> None:
        into = changed.setdefault(
            sid, {"tombstones": len(pending[sid]), "objects_rewritten": 0, "rows_deleted": 0,
                  "rows_pseudonymised": 0, "mentions_redacted": 0, "bytes_rewritten": 0, "repaired": 0},
        )  # fmt: skip
        into[name] += n

    def rewrite(chain_job: _ChainJob, original: BinaryIO, data_digest: str) -> None:
        job = chain_job.job
        with lock:
            indexer = indexers.get(job.table)
            if indexer is None and job.entry.free_text:
                indexer = indexers[job.table] = TermIndexer(finder.key, job.entry.free_text, memo)
        with tempfile.TemporaryFile() as rewritten:
            done = _rewrite_rows(job, original, rewritten, finder)
            with lock:
                result.objects_read += 1
            _digests_erased(chain_job, original)
            if not done.changed:
                stale = [r for r in chain_job.refs if r[2].sha256 != data_digest or r[2].rows != done.rows]
                if stale:  # an interrupted run rewrote it, or an export copied an entry from before: take its truth
                    size = _size(original)
                    index = None
                    if indexer is not None and any(r[2].term_index is not None for r in stale):
                        index = indexer.index_parts(frames.parquet_batches(original))
                    for m, _, obj in stale:
                        obj.sha256, obj.rows, obj.bytes = data_digest, done.rows, size
                        if obj.term_index is not None:
                            obj.term_index = index
                        with lock:
                            count(m.snapshot_id, "repaired", 1)
                    chain_job.stale = True
                return
            digest = put_object(client, bucket, job.obj.key, rewritten)
            body_bytes = _size(rewritten)
        drill.put_done()
        with tempfile.TemporaryFile() as served:  # verify what S3 now serves, not what we meant to send
            served_digest = store.download(client, bucket, job.obj.key, served)
            indexed = any(r[2].term_index is not None for r in chain_job.refs)
            check = _check_served(job, served, finder, indexer if indexed else None)
        erased = done.erased
        if served_digest != digest or check.rows != done.rows - erased.deleted:
            raise RuntimeError(
                f"s3://{bucket}/{job.obj.key}: rewrite not verified (rows {check.rows}, expected "
                f"{done.rows - erased.deleted}); the previous version is kept, rerun the propagation"
            )
        for _, _, obj in chain_job.refs:
            obj.sha256, obj.rows, obj.bytes = digest, check.rows, body_bytes
            if obj.term_index is not None:
                obj.term_index = check.term_index
        with lock:
            result.tombstoned_rows_left += check.tombstoned_left + check.holds_left
            result.holds_forgotten += done.forgotten
            result.mentions_left += check.mentions_left
            result.objects_rewritten += 1
            result.rows_deleted += erased.deleted
            result.rows_pseudonymised += erased.pseudonymised
            result.bytes_rewritten += body_bytes
            result.mentions_redacted += done.mentions
            result.rewrites_per_object[job.obj.key] = result.rewrites_per_object.get(job.obj.key, 0) + 1
            for m in {id(r[0]): r[0] for r in chain_job.refs}.values():
                count(m.snapshot_id, "objects_rewritten", 1)
                count(m.snapshot_id, "bytes_rewritten", body_bytes)
                count(m.snapshot_id, "rows_deleted", erased.deleted)
                count(m.snapshot_id, "rows_pseudonymised", erased.pseudonymised)
                count(m.snapshot_id, "mentions_redacted", done.mentions)
            for pseudonym in erased.per_subject:  # counted once: for the oldest snapshot it was pending in
                first = next((m for m, _, _ in chain_job.refs if pseudonym in pending[m.snapshot_id]), None)
                if first is not None:
                    per_subject[first.snapshot_id][pseudonym]["objects"] += 1
                    per_subject[first.snapshot_id][pseudonym]["bytes"] += body_bytes

    _rewrite_each(client, bucket, jobs, lambda chain_job: chain_job.job.obj.key, rewrite)
    result.manifest_entries_repaired += sum(c.get("repaired", 0) for c in changed.values())
    return changed


def _digests_erased(chain_job: _ChainJob, original: BinaryIO) -> None:
    """The digests (by bucket) of the rows the rewrite deletes, and a delta's gone digests: what a manifest's
    row count loses is counted from them (_count_rows)."""
    job = chain_job.job
    if job.entry.erasure_action != "delete" or not job.pseudonyms:
        return
    wanted = pa.array(sorted(job.pseudonyms), pa.string())
    for frame in frames.parquet_batches(original):
        if chain.ROW_COLUMN not in frame.column_names:
            return
        digests = frame.column(chain.ROW_COLUMN).to_numpy()
        if job.obj.night is None:
            buckets = np.full(frame.num_rows, chain.bucket_number(job.obj.bucket))
            gone = np.zeros(frame.num_rows, dtype=bool)
        else:
            buckets = frame.column(chain.BUCKET_COLUMN).to_numpy()
            gone = frame.column(chain.GONE_COLUMN).to_numpy(zero_copy_only=False).astype(bool)
        subjects = frame.column(layout.SUBJECT_COLUMN).combine_chunks()
        erased = pc.fill_null(pc.is_in(subjects, value_set=wanted), False).to_numpy(zero_copy_only=False)
        for into, mask in ((chain_job.deleted, erased), (chain_job.gone, gone)):
            for b, d in zip(buckets[mask].tolist(), digests[mask].tolist(), strict=True):
                into.setdefault(b, []).append(d)


def _count_rows(client: Any, bucket: str, jobs: list[_ChainJob], changed: dict[str, dict[str, int]]) -> None:
    """Each changed manifest's table rows: the table's rows at that snapshot, not the sum of its objects' (those
    hold older nights and gone entries). A deleted row counts where it was live: the manifest's objects replayed
    on the erased digests alone (a base adds them, a delta removes its gone digests first, then adds). A table
    an interrupted run left stale is counted again, whole, from its objects."""
    by_key = {j.job.obj.key: j for j in jobs}
    done: set[tuple[int, str]] = set()
    for chain_job in jobs:
        for m, entry, _ in chain_job.refs:
            table = chain_job.job.table
            if (id(m), table) in done or m.snapshot_id not in changed:
                continue
            done.add((id(m), table))
            mine = [by_key[o.key] for o in entry.objects if o.key in by_key]
            if any(j.stale for j in mine):
                reader = chain.Reader(client, bucket)
                entry.rows = sum(
                    rows.num_rows for b in chain.buckets_named(entry) if (rows := reader.rows(entry, b)) is not None
                )
                continue
            lost = 0
            for b in {b for j in mine for b in j.deleted}:
                live: Counter[int] = Counter()
                for obj in entry.objects:
                    found = by_key.get(obj.key)
                    if found is None or not chain.covers(obj, None if b == chain.NO_BUCKET else b):
                        continue
                    for d in found.gone.get(b, []) if obj.night is not None else []:
                        if live[d] > 0:
                            live[d] -= 1
                    live.update(found.deleted.get(b, []))
                lost += sum(live.values())
            entry.rows -= lost


def finish_region(
    db_url: str, region: str, endpoint_url: str | None, result: RegionResult, certificates_endpoint: str | None = None
) -> RegionResult:
    """After every snapshot's task: check the rewrites left nothing, mark the tombstones now applied to every
    complete snapshot of the region, update their certificates. `result` sums the snapshots' counts."""
    if result.objects_rewritten:
        from lethe.quality import zero_rows

        zero_rows(
            f"backup_propagation_{region}",
            {"tombstoned_rows_left": result.tombstoned_rows_left, "mentions_left": result.mentions_left},
        ).raise_if_failed()
    record_status(db_url, region, store.region_client(region, endpoint_url), BUCKETS.backup(region), result)
    result.certificates_updated, result.certificates_missing = update_certificates(
        db_url, region, certificates_endpoint or endpoint_url
    )
    return result


def remove_incomplete(
    db_url: str, region: str, client: Any, bucket: str, *, beside_writer: bool = False
) -> tuple[list[str], int]:
    """Step 0: snapshots without a manifest go, every version (but a live writer's, `beside_writer`)."""
    return writer.remove_incomplete(db_url, region, client, bucket, beside_writer=beside_writer)


def record_applied(
    db_url: str, region: str, sid: str, per_subject: dict[str, dict[str, int]], pending: set[str]
) -> None:
    """The tombstones are applied to snapshot `sid`: written only once no version in it holds their people.

    Each newly applied tombstone's region status counts the snapshot and what was rewritten for it, and stays
    'pending' until finish_region has seen every snapshot of the region applied.
    """
    with transaction(db_url) as cur:
        writer.lock_status(cur, region)
        cur.execute(
            "INSERT INTO backup_tombstone_applications (snapshot_id, region, subject_pseudonym)"
            " SELECT %s, %s, unnest(%s::text[]) ON CONFLICT DO NOTHING RETURNING subject_pseudonym",
            (sid, region, sorted(pending)),
        )
        new = sorted(row[0] for row in cur.fetchall())
        cur.execute(
            "INSERT INTO backup_propagation_status AS s (subject_pseudonym, region, status, snapshots,"
            " objects_rewritten, bytes_rewritten) SELECT p, %s, 'pending', 1, o, b"
            " FROM unnest(%s::text[], %s::int[], %s::bigint[]) AS u(p, o, b)"
            " ON CONFLICT (subject_pseudonym, region) DO UPDATE SET status = 'pending', snapshots = s.snapshots + 1,"
            " certificate_updated = s.certificate_updated AND s.status = 'pending',"
            " objects_rewritten = s.objects_rewritten + EXCLUDED.objects_rewritten,"
            " bytes_rewritten = s.bytes_rewritten + EXCLUDED.bytes_rewritten",
            (
                region,
                new,
                [per_subject[p]["objects"] for p in new],
                [per_subject[p]["bytes"] for p in new],
            ),
        )


def _affected_jobs(
    manifest: Manifest,
    pending: set[str],
    finder: MentionFinder,
    use_term_index: bool,
    result: RegionResult,
    aliases: dict[str, str] | None = None,
) -> list[_Job]:
    """One job per object to read: the buckets that can hold the pending subjects' rows (and those of the
    pseudonyms the snapshot stored for their re-cased citext keys, `aliases`: see _folded_aliases) and, when
    they left identifiers behind, every object of a table with free text whose term index may hold
    one of them (mentions can be anywhere; an object without an index is always searched)."""
    aliases = {a: o for a, o in (aliases or {}).items() if a not in pending and o in pending}
    jobs = {}
    for table, entry, obj, found in manifest.holding(pending | set(aliases)):
        theirs = {a: aliases[a] for a in found if a in aliases}
        jobs[obj.key] = _Job(table, entry, obj, found | set(theirs.values()), aliases=theirs)
    if finder.identifier_pseudonyms:
        query = Query.of(finder.identifier_pseudonyms)
        for table, entry in manifest.tables.items():
            for obj in entry.objects if entry.free_text else ():
                result.free_text_objects += 1
                if not use_term_index or may_mention(obj.term_index, query):
                    jobs.setdefault(obj.key, _Job(table, entry, obj, set())).mentions = True
                    result.free_text_objects_searched += 1
    for table, entry in manifest.tables.items():
        for obj in entry.objects if links.is_holds_table(table) else ():
            jobs.setdefault(obj.key, _Job(table, entry, obj, set())).holds = set(pending)
    if finder.identifier_pseudonyms:
        result.free_text_objects_read += sum(1 for job in jobs.values() if job.entry.free_text)
    return list(jobs.values())


def _folds_case(entry: TableEntry) -> bool:
    """A rewritable table whose subject column is citext: a key in it may spell a person otherwise than her
    tombstone does (she re-cased it after the snapshot)."""
    return bool(entry.rewritable and entry.subject_column) and any(
        c["name"] == entry.subject_column and c["pg_type"] == "citext" for c in entry.columns
    )


def _folded_aliases(
    db_url: str,
    client: Any,
    bucket: str,
    manifests: list[Manifest],
    identifiers: dict[str, list[str]],
    key: bytes,
    result: RegionResult,
) -> dict[str, str]:
    """The pseudonyms the snapshots stored beside a citext key that folds to an erased person's, each with her
    tombstone's subject pseudonym (`identifiers`: each pending tombstone's identifier pseudonyms).

    A snapshot's pseudonym (and bucket) is of the key as her subject row stored it at export; re-cased on the
    primary since ('Anna@x' to 'anna@x'), then erased, her tombstone's is of the new spelling, and matching by it
    finds nothing. Her tombstone also keeps the pseudonym of her key case-folded by the database (kind
    user_id_folded, lethe.pseudonym.folded_subject_pseudonym): every object of a rewritable table whose subject
    column is citext is read (its key and pseudonym columns only), whatever its bucket, and each distinct key is
    folded by the database's lower(), as citext compares. A table without such a column (no citext key, or rows
    linked to hers by foreign keys only) is not read here: its rows carry the same stored pseudonyms, found then
    in their buckets. Nothing is read when no table has a citext subject column."""
    owners = {i: subject for subject, ids in identifiers.items() for i in ids}
    objects: dict[str, tuple[TableEntry, ObjectEntry]] = {}
    for m in manifests:
        for entry in m.tables.values():
            for obj in entry.objects if _folds_case(entry) else ():
                objects.setdefault(obj.key, (entry, obj))
    if not owners or not objects:
        return {}
    aliases: dict[str, str] = {}
    lock = threading.Lock()
    conn = connect(db_url)
    conn.autocommit = True
    try:

        def read(item: tuple[TableEntry, ObjectEntry], original: BinaryIO, _digest: str) -> None:
            entry, _ = item
            column = str(entry.subject_column)
            pairs: set[tuple[str, str]] = set()
            parquet = pq.ParquetFile(original)
            if not {column, layout.SUBJECT_COLUMN} <= set(parquet.schema_arrow.names):
                raise RuntimeError(f"s3://{bucket}/{item[1].key}: no key or pseudonym column to match re-cased keys by")
            for batch in parquet.iter_batches(columns=[column, layout.SUBJECT_COLUMN]):
                pairs |= frames.key_pseudonym_pairs(pa.Table.from_batches([batch]), column)
            with lock:
                result.objects_read += 1
                result.folded_key_objects_read += 1
                if not pairs:
                    return
                with conn.cursor() as cur:
                    folded = relations.folded_keys(cur, {k for k, _ in pairs})
                for k, stored in pairs:
                    owner = owners.get(folded_subject_pseudonym(key, folded[k]))
                    if owner is not None and stored != owner:
                        aliases[stored] = owner

        _rewrite_each(client, bucket, list(objects.values()), lambda item: item[1].key, read)
    finally:
        conn.close()
    return aliases


def _rewrite_snapshot(
    client: Any,
    bucket: str,
    manifest: Manifest,
    jobs: list[_Job],
    finder: MentionFinder,
    pending: int,
    result: RegionResult,
    per_subject: dict[str, dict[str, int]],
    drill: _Drill,
) -> None:
    lock = threading.Lock()
    # The index describes the object as it now is: rebuilt whenever an indexed object changes. An object
    # exported without one (term indexes off) stays without: it is always searched, and building an index
    # nobody asked for cost a 1M-user propagation most of its time and memory on a few rewritten objects.
    memo = TermMemo()  # one bounded memo for all tables: a worker's memory is not multiplied by its tables
    indexers = {t: TermIndexer(finder.key, e.free_text, memo) for t, e in manifest.tables.items() if e.free_text}
    changed = {"objects": 0, "deleted": 0, "pseudonymised": 0, "bytes": 0, "repaired": 0, "mentions": 0}

    def rewrite(job: _Job, original: BinaryIO, data_digest: str) -> None:
        # The object goes through unnamed temporary files (gone with the process, even a killed one), a row
        # group at a time: a worker's memory is bounded by the row group, whatever the object's size.
        with tempfile.TemporaryFile() as rewritten:
            done = _rewrite_rows(job, original, rewritten, finder)
            with lock:
                result.objects_read += 1
            if not done.changed:
                if data_digest != job.obj.sha256 or done.rows != job.obj.rows:
                    # An interrupted run already rewrote this object but not the manifest: take the object's truth.
                    job.obj.sha256, job.obj.rows, job.obj.bytes = data_digest, done.rows, _size(original)
                    if job.obj.term_index is not None and job.table in indexers:
                        job.obj.term_index = indexers[job.table].index_parts(frames.parquet_batches(original))
                    with lock:
                        changed["repaired"] += 1
                return
            digest = put_object(client, bucket, job.obj.key, rewritten)
            body_bytes = _size(rewritten)
        drill.put_done()
        with tempfile.TemporaryFile() as served:  # verify what S3 now serves, not what we meant to send
            served_digest = store.download(client, bucket, job.obj.key, served)
            indexer = indexers.get(job.table) if job.obj.term_index is not None else None
            check = _check_served(job, served, finder, indexer)
        erased = done.erased
        if served_digest != digest or check.rows != done.rows - erased.deleted:
            raise RuntimeError(
                f"s3://{bucket}/{job.obj.key}: rewrite not verified (rows {check.rows}, expected "
                f"{done.rows - erased.deleted}); the previous version is kept, rerun the propagation"
            )
        job.obj.sha256, job.obj.rows, job.obj.bytes = digest, check.rows, body_bytes
        if check.term_index is not None:
            job.obj.term_index = check.term_index
        with lock:
            result.tombstoned_rows_left += check.tombstoned_left + check.holds_left
            result.holds_forgotten += done.forgotten
            result.mentions_left += check.mentions_left
            changed["mentions"] += done.mentions
            changed["objects"] += 1
            changed["deleted"] += erased.deleted
            changed["pseudonymised"] += erased.pseudonymised
            changed["bytes"] += body_bytes
            result.rewrites_per_object[f"{manifest.snapshot_id}/{job.obj.key}"] = (
                result.rewrites_per_object.get(f"{manifest.snapshot_id}/{job.obj.key}", 0) + 1
            )
            for pseudonym in erased.per_subject:
                per_subject[pseudonym]["objects"] += 1
                per_subject[pseudonym]["bytes"] += body_bytes

    result.bytes_in_touched_snapshots += manifest.total_bytes

    _rewrite_each(client, bucket, jobs, lambda job: job.obj.key, rewrite)
    if changed["objects"] or changed["repaired"]:
        for entry in manifest.tables.values():
            entry.rows = sum(o.rows for o in entry.objects)
        manifest.rewrites.append(
            {
                "at": datetime.now(UTC).isoformat(timespec="seconds"),
                "tombstones": pending,
                "objects_rewritten": changed["objects"],
                "rows_deleted": changed["deleted"],
                "rows_pseudonymised": changed["pseudonymised"],
                "mentions_redacted": changed["mentions"],
                "bytes_rewritten": changed["bytes"],
            }
        )
        write_manifest(client, bucket, manifest)  # step 2
        result.snapshots_rewritten += 1
    result.objects_rewritten += changed["objects"]
    result.rows_deleted += changed["deleted"]
    result.rows_pseudonymised += changed["pseudonymised"]
    result.bytes_rewritten += changed["bytes"]
    result.mentions_redacted += changed["mentions"]
    result.manifest_entries_repaired += changed["repaired"]


def _rewrite_each(
    client: Any,
    bucket: str,
    jobs: Sequence[T],
    key_of: Callable[[T], str],
    rewrite: Callable[[T, BinaryIO, str], None],
) -> None:
    """Run `rewrite(job, its object, the object's sha256)` on every job, REWRITE_THREADS at once, the heap given
    back after each (an object's rewrite frees its row groups' memory); the first failure is raised, and no
    download begins after it.

    The objects are downloaded ahead, in the jobs' order, on DOWNLOAD_THREADS into unnamed files (disk, not
    memory), at most DOWNLOAD_AHEAD not yet rewritten: a GET is a round trip, and a rewrite that waited for its
    own spent most of a propagation over a distant region waiting (bench/backup_growth.py --s3-latency-ms)."""
    room = threading.BoundedSemaphore(DOWNLOAD_AHEAD)  # taken in the jobs' order, before each download
    failed = threading.Event()

    def download(job: T) -> tuple[BinaryIO, str]:
        original = tempfile.TemporaryFile()  # noqa: SIM115 (closed by its rewrite, or by discard)
        try:
            return original, store.download(client, bucket, key_of(job), original)
        except BaseException:
            original.close()
            raise

    def rewrite_and_give_back(job: T, downloaded: Future[tuple[BinaryIO, str]]) -> None:
        try:
            original, digest = downloaded.result()
        except BaseException:
            failed.set()
            room.release()
            raise
        try:
            rewrite(job, original, digest)
        except BaseException:
            failed.set()
            raise
        finally:
            original.close()
            room.release()
            heap.give_back()

    def discard(downloaded: Future[tuple[BinaryIO, str]]) -> None:  # of a rewrite that will not run
        if not downloaded.cancelled() and downloaded.exception() is None:
            downloaded.result()[0].close()

    heap.few_arenas()
    started: list[tuple[Future[None], Future[tuple[BinaryIO, str]]]] = []
    with ThreadPoolExecutor(DOWNLOAD_THREADS) as downloads, ThreadPoolExecutor(REWRITE_THREADS) as pool:
        try:
            for job in jobs:
                room.acquire()
                if failed.is_set():  # no more downloads: the failure is raised below
                    break
                downloaded = downloads.submit(download, job)
                started.append((pool.submit(rewrite_and_give_back, job, downloaded), downloaded))
            for rewritten, _ in started:
                rewritten.result()
        except BaseException:
            for rewritten, downloaded in started:
                if rewritten.cancel():
                    downloaded.cancel()
                    downloaded.add_done_callback(discard)
            raise


@dataclass
class _Rewritten:
    """What one object's rewrite did, over all its row groups."""

    rows: int = 0  # before
    erased: frames.Erased = field(default_factory=frames.Erased)
    mentions: int = 0
    forgotten: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.erased.changed or self.mentions or self.forgotten)


def _rewrite_rows(job: _Job, original: BinaryIO, rewritten: BinaryIO, finder: MentionFinder) -> _Rewritten:
    """Erase, redact and forget in each row group of `original`; write the result to `rewritten` only once
    something changed (the unchanged row groups before it are copied then: an object nothing touches,
    most of those searched for mentions, costs no encoding)."""
    done = _Rewritten()
    out: frames.ParquetStream | None = None
    for n, frame in enumerate(frames.parquet_batches(original)):
        done.rows += frame.num_rows
        if job.aliases:  # rows the snapshot named under an old spelling of her citext key: hers, under her tombstone
            frame = frames.attribute_aliases(frame, job.aliases)
        new, erased = frames.erase_subjects(
            frame, job.pseudonyms, job.entry.erasure_action, job.entry.erasure_columns, job.entry.pseudonym_column
        )
        mentions = forgotten = 0
        if job.mentions:
            new, mentions = finder.redact_columns(new, job.entry.free_text)
        if job.holds:
            new, forgotten = links.forget_holds(new, finder.key, job.holds)
        done.erased.deleted += erased.deleted
        done.erased.pseudonymised += erased.pseudonymised
        for pseudonym, count in erased.per_subject.items():
            done.erased.per_subject[pseudonym] = done.erased.per_subject.get(pseudonym, 0) + count
        done.mentions, done.forgotten = done.mentions + mentions, done.forgotten + forgotten
        if out is None and done.changed:
            out = frames.ParquetStream(rewritten, frames.parquet_schema(original))
            for unchanged in frames.parquet_batches(original, limit=n):
                out.write(unchanged)
        if out is not None:
            out.write(new)
    if out is not None:
        out.close()
    return done


@dataclass
class _Served:
    rows: int = 0
    tombstoned_left: int = 0
    mentions_left: int = 0
    holds_left: int = 0
    term_index: dict[str, Any] | None = None


def _check_served(job: _Job, served: BinaryIO, finder: MentionFinder, indexer: TermIndexer | None) -> _Served:
    """Read a rewritten object back a row group at a time: its rows, what of the erased people is left in it,
    and (a table with free text) its new term index."""
    check = _Served()
    for frame in frames.parquet_batches(served):
        check.rows += frame.num_rows
        _, left = frames.erase_subjects(frame, job.pseudonyms, "delete", {})
        check.tombstoned_left += left.deleted
        if job.mentions:
            check.mentions_left += finder.redact_columns(frame, job.entry.free_text)[1]
        if job.holds:
            check.holds_left += links.held_subjects_left(frame, finder.key, job.holds)
    if indexer is not None:
        check.term_index = indexer.index_parts(frames.parquet_batches(served))
    return check


def _size(file: BinaryIO) -> int:
    return os.fstat(file.fileno()).st_size


def put_object(client: Any, bucket: str, key: str, body: BinaryIO) -> str:
    """Step 1: the rewritten object as a new version (the old one stays until the sweep)."""
    return store.put_file(client, bucket, key, body)


def sweep_versions(client: Any, bucket: str, sid: str) -> int:
    """Step 3: every noncurrent version and delete marker under a snapshot's prefix, for good.

    One listing of the snapshot's prefix, not one per object: listing cost grows with the bucket on some servers.
    A key whose current version is a delete marker was deleted outside Lethe (Lethe deletes versions, never puts
    markers): its versions stay for the repair store.MissingObject asks for (the audit reads them meanwhile).
    """
    listed = list(store.versions(client, bucket, layout.snapshot_prefix(sid)))
    kept = {v["Key"] for v in listed if v["IsLatest"] and v["DeleteMarker"]}
    doomed = [v for v in listed if not v["IsLatest"] and v["Key"] not in kept]
    if doomed:  # an index object overwritten outside Lethe keeps the version a manifest names
        kept |= overwritten_indexes(client, bucket, listed)
        doomed = [v for v in doomed if v["Key"] not in kept]
    return delete_versions(client, bucket, doomed)


def unapplied_erasures(db_url: str, regions: list[str]) -> int:
    """Tombstones not 'applied' in one of `regions` or more: erasures not yet propagated, and people a snapshot
    completed holding (lethe.backup.snapshot.record_complete put them back to 'pending')."""
    with transaction(db_url) as cur:
        cur.execute(
            "SELECT count(*) FROM erasure_tombstones t WHERE EXISTS (SELECT 1 FROM unnest(%s::text[]) AS r(region)"
            " WHERE NOT EXISTS (SELECT 1 FROM backup_propagation_status s WHERE s.subject_pseudonym ="
            " t.subject_pseudonym AND s.region = r.region AND s.status = 'applied'))",
            (list(regions),),
        )
        return int(cur.fetchone()[0])  # type: ignore[index]


def record_status(db_url: str, region: str, client: Any, bucket: str, result: RegionResult) -> None:
    """A tombstone is 'applied' in a region once every complete snapshot there has it applied; then the run's
    ledger entry.

    The snapshots are listed under the region's status lock: a snapshot whose manifest is written later
    completes after this transaction (lethe.backup.snapshot.record_complete takes the same lock) and marks
    the people erased while it was written pending again.
    """
    from lethe.ledger import append

    with transaction(db_url) as cur:
        writer.lock_status(cur, region)
        snapshots = complete_snapshot_ids(client, bucket)
        cur.execute("SELECT count(*) FROM erasure_tombstones")
        result.tombstones = cur.fetchone()[0]  # type: ignore[index]
        cur.execute(
            "INSERT INTO backup_propagation_status AS s (subject_pseudonym, region, status, applied_at)"
            " SELECT t.subject_pseudonym, %(region)s, 'applied', now() FROM erasure_tombstones t"
            " WHERE NOT EXISTS (SELECT 1 FROM backup_propagation_status d WHERE d.subject_pseudonym ="
            " t.subject_pseudonym AND d.region = %(region)s AND d.status = 'applied')"
            " AND NOT EXISTS (SELECT 1 FROM unnest(%(snapshots)s::text[]) AS b(sid) WHERE NOT EXISTS (SELECT 1"
            " FROM backup_tombstone_applications a WHERE a.snapshot_id = b.sid AND a.region = %(region)s"
            " AND a.subject_pseudonym = t.subject_pseudonym))"
            " ON CONFLICT (subject_pseudonym, region) DO UPDATE SET status = 'applied', applied_at = now(),"
            " certificate_updated = false",
            {"region": region, "snapshots": snapshots},
        )
        result.tombstones_newly_applied = cur.rowcount
        payload = result.as_dict()
        payload.pop("certificates_updated")
        payload.pop("certificates_missing")
        append(cur, "backup_propagation", payload)
