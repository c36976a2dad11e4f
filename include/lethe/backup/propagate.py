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
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO

from lethe.backup import frames, heap, layout, links, store, writer
from lethe.backup.certificate import update_certificates
from lethe.backup.manifest import Manifest, ObjectEntry, TableEntry, complete_snapshot_ids
from lethe.backup.manifest import read as read_manifest
from lethe.backup.manifest import write as write_manifest
from lethe.backup.mentions import MentionFinder, prefilter_of
from lethe.backup.term_index import Query, TermIndexer, TermMemo, may_mention
from lethe.config import BUCKETS
from lethe.db import transaction
from lethe.storage import delete_versions

log = logging.getLogger(__name__)
REWRITE_THREADS = 4


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
        jobs = _affected_jobs(manifest, pending, finder, use_term_index, result)
        _rewrite_snapshot(client, bucket, manifest, jobs, finder, len(pending), result, per_subject, drill)
    # Every run, every retained snapshot: no old version may outlive its rewrite, whoever wrote it.
    result.noncurrent_versions_deleted += sweep_versions(client, bucket, sid)
    if rows:
        record_applied(db_url, region, sid, per_subject, pending)
        result.applications = len(pending)
    return result


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
    manifest: Manifest, pending: set[str], finder: MentionFinder, use_term_index: bool, result: RegionResult
) -> list[_Job]:
    """One job per object to read: the buckets that can hold the pending subjects' rows and, when
    they left identifiers behind, every object of a table with free text whose term index may hold
    one of them (mentions can be anywhere; an object without an index is always searched)."""
    jobs = {obj.key: _Job(table, entry, obj, found) for table, entry, obj, found in manifest.holding(pending)}
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

    def rewrite(job: _Job) -> None:
        # The object goes through unnamed temporary files (gone with the process, even a killed one), a row
        # group at a time: a worker's memory is bounded by the row group, whatever the object's size.
        with tempfile.TemporaryFile() as original, tempfile.TemporaryFile() as rewritten:
            data_digest = store.download(client, bucket, job.obj.key, original)
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

    def rewrite_and_give_back(job: _Job) -> None:
        try:
            rewrite(job)
        finally:
            heap.give_back()

    heap.few_arenas()
    with ThreadPoolExecutor(REWRITE_THREADS) as pool:
        for future in [pool.submit(rewrite_and_give_back, job) for job in jobs]:
            future.result()
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
    """
    listed = store.versions(client, bucket, layout.snapshot_prefix(sid))
    doomed = [v for v in listed if not v["IsLatest"] or v["DeleteMarker"]]
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
