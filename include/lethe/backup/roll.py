"""Expiry of incremental snapshots: a retained snapshot's chain rolled into a base of its own.

An incremental snapshot's manifest names objects under earlier snapshots' prefixes (lethe.backup.chain): its
base and the deltas of every night since. Deleting an expired snapshot's prefix would break every retained
manifest sharing its objects, and keeping them would keep rows deleted from the primary past the retention.
So before expiry deletes anything, each retained snapshot S naming an object of a snapshot that goes (the
oldest retained one, normally) is rolled:

1. every table of S whose chain is not already S's own base is materialised bucket by bucket at S and
   written as S's new base objects (under S's prefix: unnamed by any manifest until step 2);
2. the manifests are rewritten, the latest first and S's last: in each, the objects a table's chain holds of
   nights up to S (S's old chain) are replaced by S's new base, later nights' deltas stay. Each manifest
   names only stored objects before and after its rewrite;
3. expiry then deletes the expired prefixes and every version under a retained incremental snapshot's prefix
   that no retained manifest names (S's old deltas, a re-run's superseded base versions).

A run killed anywhere converges when run again: S's manifest is written last, so it still names its old chain
until every later manifest names its new base; the re-run rolls S again (a base object already stored with the
same bytes is not put again) and replaces, in a later manifest, either S's old chain or a base under S's prefix.

Propagation may have rewritten a shared object through another snapshot's manifest, leaving this one's entry
stale. Such an object is read as it now is when a retained manifest names it with its current checksum:
propagation verifies an object against the manifest it writes, and only ever erases, pseudonymises or redacts
rows (a row keeps its digest), so that version is the object's truth for every manifest sharing it. Any other
mismatch stops the expiry, naming the snapshot and the object.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from lethe.backup import chain, layout, store
from lethe.backup.manifest import IndexReader, Manifest, ObjectEntry, TableEntry
from lethe.backup.manifest import write as write_manifest
from lethe.db import ConfigurationError

log = logging.getLogger(__name__)


class StaleEntry(ConfigurationError):
    """An object's current version matches neither the manifest read nor any retained manifest naming it."""


class ManifestChanged(RuntimeError):
    """A manifest changed while the expiry rolled it (a propagation wrote it meanwhile): rerun the expiry."""


@dataclass
class Rolled:
    """What rolling did (counts only: no personal data)."""

    snapshots_rolled: int = 0  # retained snapshots given a base of their own
    objects_rolled: int = 0  # objects (old bases and deltas) folded into those bases
    bases_written: int = 0  # base objects written (or found already written by a killed run)
    manifests_rewritten: int = 0


@dataclass
class Stored:
    """A retained snapshot's manifest, and its bytes as read (to notice a concurrent rewrite)."""

    manifest: Manifest
    body: bytes


def read_retained(client: Any, bucket: str, sids: list[str]) -> list[Stored]:
    found = []
    indexes = IndexReader(client, bucket)
    for sid in sids:
        where = layout.manifest_key(sid)
        body = store.get(client, bucket, where)
        found.append(Stored(Manifest.from_json(body, f"s3://{bucket}/{where}", indexes), body))
    return found


@dataclass
class _Reader(chain.Reader):
    """chain.Reader that takes an object's current version when a retained manifest vouches for it."""

    snapshot: str = ""
    vouched: dict[str, dict[str, ObjectEntry]] = field(default_factory=dict)  # key -> sha256 -> entry

    def checked(self, obj: ObjectEntry, data: bytes) -> ObjectEntry:
        digest = hashlib.sha256(data).hexdigest()
        if digest == obj.sha256:
            return obj
        other = self.vouched.get(obj.key, {}).get(digest)
        if other is None:
            raise StaleEntry(
                f"snapshot {self.snapshot}: s3://{self.bucket}/{obj.key} matches the checksum of no retained "
                "manifest (changed outside Lethe, or by a propagation killed before writing its manifest): run "
                "backup_erasure_propagation for the region (it repairs the manifests), then the expiry again"
            )
        log.info(
            "snapshot %s: %s was rewritten through another manifest; reading it as it now is", self.snapshot, obj.key
        )
        return other


def _vouched(stored: list[Stored]) -> dict[str, dict[str, ObjectEntry]]:
    found: dict[str, dict[str, ObjectEntry]] = {}
    for s in stored:
        for obj in s.manifest.objects:
            found.setdefault(obj.key, {}).setdefault(obj.sha256, obj)
    return found


def _own_base(sid: str, entry: TableEntry) -> bool:
    """Whether the table's chain at snapshot `sid` is only its own base objects (nothing to roll)."""
    own = layout.snapshot_prefix(sid)
    return all(o.night is None and o.key.startswith(own) for o in entry.objects)


def roll_retained(
    client: Any, bucket: str, stored: list[Stored], doomed: list[str], key: bytes | None, result: Rolled
) -> None:
    """Roll every retained snapshot (`stored`, oldest first) naming an object under a `doomed` prefix, then
    rewrite the manifests (the latest first); see the module's docstring."""
    prefixes = tuple(layout.snapshot_prefix(sid) for sid in doomed)
    vouched = _vouched(stored)
    changed: set[str] = set()
    for i, s in enumerate(stored):
        if not prefixes or not any(o.key.startswith(prefixes) for o in s.manifest.objects):
            continue
        sid = s.manifest.snapshot_id
        rolled = _roll_snapshot(client, bucket, s.manifest, key, vouched, result)
        if not rolled:
            continue
        changed.add(sid)
        result.snapshots_rolled += 1
        for later in stored[i + 1 :]:
            if _replace_chain(later.manifest, sid, rolled):
                changed.add(later.manifest.snapshot_id)
    for s in reversed(stored):  # the rolled snapshot last: until then it names its old chain (see above)
        if s.manifest.snapshot_id in changed:
            _write_unchanged(client, bucket, s)
            result.manifests_rewritten += 1


def _roll_snapshot(
    client: Any,
    bucket: str,
    manifest: Manifest,
    key: bytes | None,
    vouched: dict[str, dict[str, ObjectEntry]],
    result: Rolled,
) -> dict[str, tuple[list[str], list[ObjectEntry]]]:
    """Write the snapshot's new base objects and point its (in-memory) manifest at them; per table rolled, the
    keys of its old chain and the new base objects."""
    from lethe.backup.snapshot import IN_MEMORY_OBJECT_BYTES, encode_object
    from lethe.backup.term_index import TermIndexer

    sid = manifest.snapshot_id

    def sink(table: str, bucket_no: int | None, body: BinaryIO) -> tuple[str, str]:
        object_key = layout.object_key(sid, table, bucket_no)
        digest = hashlib.sha256(body.read()).hexdigest()
        if _current_sha256(client, bucket, object_key) == digest:
            return object_key, digest  # a killed run stored these very bytes
        return object_key, store.put_file(client, bucket, object_key, body)

    rolled: dict[str, tuple[list[str], list[ObjectEntry]]] = {}
    for table, entry in manifest.tables.items():
        if _own_base(sid, entry):
            continue
        indexed = any(o.term_index is not None for o in entry.objects)
        if indexed and key is None:
            log.warning("snapshot %s: %s rolled without term indexes (no pseudonym key given)", sid, table)
        indexer = TermIndexer(key, entry.free_text) if indexed and key is not None and entry.free_text else None
        reader = _Reader(client, bucket, snapshot=sid, vouched=vouched)
        bases = []
        for number in chain.buckets_named(entry):
            rows = reader.rows(entry, number)
            if rows is None or not rows.num_rows:
                continue  # as an export: no object for a bucket without rows
            small = rows.nbytes <= IN_MEMORY_OBJECT_BYTES
            bases.append(encode_object(table, number, [rows], rows.schema, sink, indexer, small=small))
        bases.sort(key=lambda o: o.key)
        rolled[table] = ([o.key for o in entry.objects], bases)
        result.objects_rolled += len(entry.objects)
        result.bases_written += len(bases)
        entry.objects = list(bases)
        entry.rows = sum(o.rows for o in bases)
    return rolled


def _current_sha256(client: Any, bucket: str, key: str) -> str | None:
    from lethe.backup.replicate import stored_sha256

    return stored_sha256(client, bucket, key)


def _replace_chain(manifest: Manifest, sid: str, rolled: dict[str, tuple[list[str], list[ObjectEntry]]]) -> bool:
    """In a later manifest, a rolled table's objects of nights up to `sid` become `sid`'s new base: when they
    are `sid`'s old chain, or base objects under its prefix (a killed run's rewrite). Whether it changed."""
    changed = False
    own = layout.snapshot_prefix(sid)
    for table, (old_keys, bases) in rolled.items():
        entry = manifest.tables.get(table)
        if entry is None:
            continue
        head = 0
        while head < len(entry.objects) and layout.written_by(entry.objects[head].key) <= sid:
            head += 1
        if any(layout.written_by(o.key) <= sid for o in entry.objects[head:]):
            continue  # not a chain in night order: not one this roll knows
        keys = [o.key for o in entry.objects[:head]]
        ours = all(o.night is None and o.key.startswith(own) for o in entry.objects[:head])
        if not head or not (keys == old_keys or ours):
            continue  # another chain (its table was given a base since): not through `sid`
        objects = [*bases, *entry.objects[head:]]
        if objects != entry.objects:
            entry.objects = objects
            changed = True
    return changed


def _write_unchanged(client: Any, bucket: str, stored: Stored) -> None:
    """Write a rewritten manifest unless it changed since it was read (then nothing is lost: rerun)."""
    sid = stored.manifest.snapshot_id
    if store.get(client, bucket, layout.manifest_key(sid)) != stored.body:
        raise ManifestChanged(
            f"snapshot {sid}: its manifest changed while the expiry rolled it (a propagation wrote it meanwhile); "
            "nothing was deleted: run the expiry again"
        )
    write_manifest(client, bucket, stored.manifest)


def check_unreferenced(stored: list[Stored], doomed: list[str]) -> None:
    """No retained manifest may name an object under a prefix about to be deleted."""
    prefixes = tuple(layout.snapshot_prefix(sid) for sid in doomed)
    for s in stored:
        for obj in s.manifest.objects:
            if prefixes and obj.key.startswith(prefixes):
                raise ConfigurationError(
                    f"snapshot {s.manifest.snapshot_id} still names {obj.key} of a snapshot being expired: "
                    "nothing was deleted; run the expiry again"
                )


def delete_unreferenced(client: Any, bucket: str, stored: list[Stored]) -> int:
    """Every version under a retained incremental snapshot's prefix that no retained manifest names: keys none
    names, and the noncurrent versions and delete markers of those named (a manifest names the current one).
    Manifests themselves are left alone. Returns the versions deleted."""
    from lethe.storage import delete_versions

    named = {o.key for s in stored for o in s.manifest.objects} | {k for s in stored for k in s.manifest.indexes}
    # Only the newest night's digests: the next night reads no other. A later night supersedes a night's; one
    # killed before deleting the night before's, a full night between two incremental ones, or Object Lock
    # refusing the deletion (lethe.backup.digest_state.delete_previous) leaves them, and they go here.
    newest = stored[-1].manifest.tables.values() if stored else []
    named |= {t.digests["key"] for t in newest if t.digests is not None}
    doomed: list[dict[str, Any]] = []
    superseded: list[dict[str, Any]] = []
    for s in stored:
        if not s.manifest.incremental:
            continue  # a full snapshot's prefix holds only what its manifest names, as before
        by_key: dict[str, list[dict[str, Any]]] = {}
        for v in store.versions(client, bucket, layout.snapshot_prefix(s.manifest.snapshot_id)):
            by_key.setdefault(v["Key"], []).append(v)
        by_key.pop(layout.manifest_key(s.manifest.snapshot_id), None)
        digests = f"{layout.snapshot_prefix(s.manifest.snapshot_id)}digests/"
        for object_key, listed in by_key.items():
            if object_key not in named:
                (superseded if object_key.startswith(digests) else doomed).extend(listed)
            elif not any(v["IsLatest"] and v["DeleteMarker"] for v in listed):
                # a named object plainly deleted is left for its repair (store.MissingObject says how)
                doomed += [v for v in listed if not v["IsLatest"]]
    deleted = delete_versions(client, bucket, doomed)
    try:
        deleted += delete_versions(client, bucket, superseded)
    except RuntimeError as exc:  # Object Lock keeps the newer ones a while yet: a later expiry deletes them
        log.warning("superseded digests left for a later expiry (%s)", exc)
    return deleted
