"""backup_nightly's work for every backup region but the first: the first region's snapshot, copied server-side.

The primary is read once a night (lethe.backup.snapshot, into the first region). Every other region gets the
same objects by S3 CopyObject from the first region's bucket (no byte passes through the worker), with the
encryption and SHA-256 checksum a put gives them, then its own manifest, written last as an export's is.

Which tombstones a copy honours: the source's applications are read *before* its manifest, and propagation
records an application only after the manifest holding the rewrite. Every copied object is checked against
that manifest's sha256, so the copy holds at least every erasure recorded for it; later ones are left to
backup_erasure_propagation in this region, as for an export.

A retry of a half-done copy keeps this snapshot's objects that already carry the manifest's checksum, copies
the rest, then deletes every other version and key under the prefix before the manifest is written.
"""

from __future__ import annotations

import base64
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO

from botocore.exceptions import ClientError

from lethe.backup import chain, layout, locks, store, writer
from lethe.backup.manifest import Manifest, TableEntry, complete_manifests, complete_snapshot_ids
from lethe.backup.manifest import read as read_manifest
from lethe.backup.manifest import write as write_manifest
from lethe.backup.snapshot import (
    IN_MEMORY_OBJECT_BYTES,
    already_complete,
    encode_object,
    record_complete,
    record_honoured,
    start_writing,
)
from lethe.config import BUCKETS
from lethe.db import session_lock, transaction
from lethe.storage import delete_versions

log = logging.getLogger(__name__)
COPY_THREADS = 8


class SourceIncomplete(RuntimeError):
    """The first region has no complete snapshot of this id: nothing may be copied."""


def replicate_snapshot(
    db_url: str,
    sid: str,
    source_region: str,
    source_endpoint: str | None,
    region: str,
    endpoint_url: str | None,
    *,
    erasure_deadline_days: int = 30,
    fail_after_copies: int | None = None,
    certificates_endpoint: str | None = None,
) -> dict[str, Any]:
    """Copy snapshot `sid` from `source_region`'s bucket into `region`'s; return counts (no personal data).

    `fail_after_copies` (tests) raises after that many objects were copied, as a copy killed half-way.
    """
    layout.check_snapshot_id(sid)
    source = store.region_client(source_region, source_endpoint)
    client = store.region_client(region, endpoint_url)
    source_bucket, bucket = BUCKETS.backup(source_region), BUCKETS.backup(region)
    problem = locks.bucket_violation(client, bucket, erasure_deadline_days)
    if problem:
        raise RuntimeError(f"backup region {region}: refusing to write a snapshot: {problem}")
    with writer.region_lock(db_url, region, wait=True):  # held until the manifest is written, as an export's
        if store.exists(client, bucket, layout.manifest_key(sid)):
            return already_complete(db_url, client, bucket, region, sid, certificates_endpoint or endpoint_url)
        with transaction(db_url) as cur:  # before the manifest (see the module's docstring)
            cur.execute(
                "SELECT subject_pseudonym FROM backup_tombstone_applications WHERE snapshot_id = %s AND region = %s",
                (sid, source_region),
            )
            applied = {row[0] for row in cur.fetchall()}
        if not store.exists(source, source_bucket, layout.manifest_key(sid)):
            raise SourceIncomplete(
                f"backup region {region}: snapshot {sid} is not complete in {source_region} (its export failed or "
                f"has not run): nothing to copy; rerun the export, then this task"
            )
        manifest = read_manifest(source, source_bucket, sid)
        _, leftovers = writer.remove_incomplete(db_url, region, client, bucket, keep=sid)
        start_writing(db_url, region, sid, manifest.policy_version)
        with contextlib.ExitStack() as held:
            if manifest.incremental:
                # Shared objects are copied over under the chain lock propagation rewrites them under (lethe.
                # backup.propagate._propagate_chain): every older manifest here naming one takes its new checksum in
                # the same hold, and the new manifest is written in it too, so no manifest here ever names what the
                # region does not serve (nor an index object propagation's sweep is deleting).
                held.enter_context(session_lock(db_url, writer.chain_lock(region)))
            lacking = _lacking(client, bucket, manifest) if manifest.incremental else []
            if lacking:
                log.warning(
                    "region %s: snapshot %s shares objects of %s, which this region has not (expired here first, "
                    "or never copied): copied as a base of its own, read through the source's chain",
                    region, sid, ", ".join(lacking),
                )  # fmt: skip
                copied, kept = _copy_as_base(source, source_bucket, client, bucket, manifest)
            elif manifest.incremental:
                copied, kept = _copy_chain(
                    db_url, region, source, source_bucket, client, bucket, manifest, applied, fail_after_copies
                )
            else:
                copied, kept = _copy_objects(source, source_bucket, client, bucket, manifest, fail_after_copies)
            removed = _remove_strays(client, bucket, manifest)
            manifest.region, manifest.bucket = region, bucket
            for entry in manifest.tables.values():
                entry.digests = None  # the source's next night diffs against its own; none are copied here
            record_honoured(db_url, region, sid, applied)
            write_manifest(client, bucket, manifest)  # last: from here on the snapshot exists
    return record_complete(
        db_url,
        manifest,
        certificates_endpoint or endpoint_url,
        copied_from=source_region,
        objects_copied=copied,
        objects_already_copied=kept,
        leftover_versions_removed=leftovers + removed,
    )


def _copy_objects(
    source: Any, source_bucket: str, client: Any, bucket: str, manifest: Manifest, fail_after: int | None
) -> tuple[int, int]:
    """Copy every object the manifest names that this bucket does not already hold with its checksum."""
    present = {v["Key"] for v in store.versions(client, bucket, layout.snapshot_prefix(manifest.snapshot_id))}
    todo = [o for o in manifest.objects if o.key not in present or stored_sha256(client, bucket, o.key) != o.sha256]
    if fail_after is not None:
        for obj in todo[:fail_after]:
            copy_object(client, source_bucket, bucket, obj.key, obj.sha256)
        raise RuntimeError(f"interrupted after {fail_after} copies (test)")
    with ThreadPoolExecutor(COPY_THREADS) as pool:
        list(pool.map(lambda o: copy_object(client, source_bucket, bucket, o.key, o.sha256), todo))
    return len(todo), len(manifest.objects) - len(todo)


def _lacking(client: Any, bucket: str, manifest: Manifest) -> list[str]:
    """The snapshots whose objects `manifest` shares but this region holds no complete snapshot of."""
    writers = {layout.written_by(o.key) for o in manifest.objects}
    return sorted(writers - {manifest.snapshot_id} - set(complete_snapshot_ids(client, bucket)))


def _copy_as_base(source: Any, source_bucket: str, client: Any, bucket: str, manifest: Manifest) -> tuple[int, int]:
    """An incremental snapshot whose chain reaches snapshots this region does not hold (its expiry ran before the
    source's, or an earlier copy failed), written here as a base of its own: each bucket read through the source's
    chain, as expiry's roll does. Copying the shared objects instead put them under prefixes this region has no
    manifest for, which the next copy removed as a killed backup's (found from outside: every later night here then
    named objects that were gone). Term indexes are not rebuilt (no key here): those tables are always searched."""
    sid = manifest.snapshot_id

    def sink(table: str, bucket_no: int | None, body: BinaryIO) -> tuple[str, str]:
        object_key = layout.object_key(sid, table, bucket_no)
        return object_key, store.put_file(client, bucket, object_key, body)

    written = 0
    for table, entry in manifest.tables.items():
        reader = chain.Reader(source, source_bucket)
        bases = []
        for number in chain.buckets_named(entry):
            rows = reader.rows(entry, number)
            if rows is not None and rows.num_rows:
                small = rows.nbytes <= IN_MEMORY_OBJECT_BYTES
                bases.append(encode_object(table, number, [rows], rows.schema, sink, None, small=small))
        entry.objects = sorted(bases, key=lambda o: o.key)
        written += len(bases)
    return written, 0


def _copy_chain(
    db_url: str,
    region: str,
    source: Any,
    source_bucket: str,
    client: Any,
    bucket: str,
    manifest: Manifest,
    applied: set[str],
    fail_after: int | None,
) -> tuple[int, int]:
    """An incremental snapshot's copy: its own objects as _copy_objects copies them, and the objects it shares
    with older snapshots only where this region serves another version than the source's manifest names (the
    source propagated an erasure this region has not yet). Such a copy replaces what this region's older
    manifests name: they take the source's entry (checksum, size, rows, term index), the versions they named
    go, and the tombstones they were recorded as honouring but the copy does not (`applied`: the source's
    applications for this snapshot) are theirs no longer, until this region's propagation applies them again."""
    own = layout.snapshot_prefix(manifest.snapshot_id)
    mine = Manifest(**{**manifest.__dict__, "tables": {}})
    mine.tables = {
        t: TableEntry(**{**e.__dict__, "objects": [o for o in e.objects if o.key.startswith(own)]})
        for t, e in manifest.tables.items()
    }
    olders = [m for m in complete_manifests(client, bucket) if m.incremental and m.snapshot_id < manifest.snapshot_id]
    served: dict[str, str] = {}  # key -> sha256 this region serves, as its manifests name it (they agree)
    for older in olders:
        served.update({o.key: o.sha256 for o in older.objects})
    shared = {o.key: o for o in manifest.objects if not o.key.startswith(own)}
    todo = [
        o
        for o in shared.values()
        if (served[o.key] if o.key in served else stored_sha256(client, bucket, o.key)) != o.sha256
    ]
    replaced = {o.key: o for o in todo}
    naming = [m for m in olders if any(o.key in replaced for o in m.objects)]
    if naming:  # first: from the copy on, they hold what the source's version holds
        with transaction(db_url) as cur:
            writer.lock_status(cur, region)
            cur.execute(
                "DELETE FROM backup_tombstone_applications WHERE region = %s AND snapshot_id = ANY(%s)"
                " AND NOT (subject_pseudonym = ANY(%s))",
                (region, [m.snapshot_id for m in naming], sorted(applied)),
            )
        # Their people's region status goes back to pending with record_complete: this snapshot does not honour
        # them either.
    copied, kept = _copy_objects(source, source_bucket, client, bucket, mine, fail_after)
    for obj in todo:
        copy_object(client, source_bucket, bucket, obj.key, obj.sha256)
    for older in naming:
        for entry in older.tables.values():
            for obj in entry.objects:
                if obj.key in replaced:
                    new = replaced[obj.key]
                    obj.sha256, obj.bytes, obj.rows, obj.term_index = new.sha256, new.bytes, new.rows, new.term_index
        _rows_from_source(source, source_bucket, older, client, bucket, set(replaced))
        write_manifest(client, bucket, older)
    for key in sorted(replaced):  # then the versions the older manifests named: nobody names them now
        old = [v for v in store.versions(client, bucket, key) if v["Key"] == key and not v["IsLatest"]]
        delete_versions(client, bucket, old)
    if todo:
        log.info("%s: %d shared object(s) copied over, %d older manifest(s) updated", bucket, len(todo), len(naming))
    return copied + len(todo), kept + len(shared) - len(todo)


def _rows_from_source(
    source: Any, source_bucket: str, older: Manifest, client: Any, bucket: str, replaced: set[str]
) -> None:
    """An older manifest's table rows, where a copied-over object changed them: the source's manifest of the same
    snapshot says them when it names the table's objects alike (then it holds the same rows); else they are
    counted from this region's objects (the table's every bucket materialised: rare, a source expired or changed
    since)."""
    theirs = None
    if store.exists(source, source_bucket, layout.manifest_key(older.snapshot_id)):
        theirs = read_manifest(source, source_bucket, older.snapshot_id)
    for table, entry in older.tables.items():
        if not any(o.key in replaced for o in entry.objects):
            continue
        other = theirs.tables.get(table) if theirs is not None else None
        if other is not None and [(o.key, o.sha256) for o in other.objects] == [
            (o.key, o.sha256) for o in entry.objects
        ]:
            entry.rows = other.rows
            continue
        reader = chain.Reader(client, bucket)
        entry.rows = sum(
            rows.num_rows for b in chain.buckets_named(entry) if (rows := reader.rows(entry, b)) is not None
        )


def copy_object(client: Any, source_bucket: str, bucket: str, key: str, sha256: str) -> None:
    """One server-side copy, stored as store.put stores an object (encrypted, its SHA-256 kept and checked).

    The copy's checksum must be the manifest's: a source object rewritten since (a propagation in the
    source region) fails the copy, and the retry reads the new manifest.
    """
    answer = client.copy_object(
        Bucket=bucket,
        Key=key,
        CopySource={"Bucket": source_bucket, "Key": key},
        MetadataDirective="COPY",  # the content type the export gave it; it sets no user metadata
        TaggingDirective="REPLACE",  # no tags, as a put has (and no Get/PutObjectTagging needed)
        ServerSideEncryption="AES256",
        ChecksumAlgorithm="SHA256",
    )
    # AWS answers with the copy's checksum; a server that does not (SeaweedFS) is asked for it.
    returned = answer.get("CopyObjectResult", {}).get("ChecksumSHA256")
    got = base64.b64decode(returned).hex() if returned else stored_sha256(client, bucket, key)
    if got != sha256:
        raise RuntimeError(
            f"copy of s3://{source_bucket}/{key} into {bucket} has sha256 {got}, its manifest says {sha256}: "
            "the source changed while copying (an erasure propagated there); rerun this task"
        )


def stored_sha256(client: Any, bucket: str, key: str) -> str | None:
    """The SHA-256 (hex) S3 keeps for the current version of `key`; None when absent or not kept."""
    try:
        head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    value = head.get("ChecksumSHA256")
    if not value or "-" in value:  # a multipart upload's checksum of checksums is no object digest
        return None
    return base64.b64decode(value).hex()


def _remove_strays(client: Any, bucket: str, manifest: Manifest) -> int:
    """Every version under the prefix but the current one of each object the manifest names."""
    named = {o.key for o in manifest.objects}
    listed = store.versions(client, bucket, layout.snapshot_prefix(manifest.snapshot_id))
    doomed = [v for v in listed if not (v["IsLatest"] and not v["DeleteMarker"] and v["Key"] in named)]
    if doomed:
        log.info("region %s: removing %d stray version(s) of a retried copy", manifest.region, len(doomed))
    return delete_versions(client, bucket, doomed)
