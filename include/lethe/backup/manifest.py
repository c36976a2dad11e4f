"""The manifest of one snapshot in one region: written last, so a snapshot is complete or absent.

It names every data object with its bucket, row count, size and sha256, the
schema of each table and the policy version the snapshot was taken under. It
holds no personal data: no rows, no pseudonyms; an object's term index is a Bloom
filter of keyed pseudonyms (lethe.backup.term_index), meaningless without the key.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from lethe.backup import chain, layout, store

FORMAT = "lethe-backup/1 parquet+zstd"


@dataclass
class ObjectEntry:
    key: str
    bucket: int | None
    rows: int
    bytes: int
    sha256: str
    # Bloom filter of the keyed terms its free text holds (lethe.backup.term_index); None: not indexed
    term_index: dict[str, Any] | None = None
    # Incremental snapshots (lethe.backup.chain): a delta object holds the changes of night `night` (a snapshot
    # id) for buckets `bucket`..`last_bucket`; a base or full object has neither.
    night: str | None = None
    last_bucket: int | None = None


@dataclass
class TableEntry:
    columns: list[dict[str, str]]  # name, pg_type, arrow_type
    subject_column: str | None
    erasure_action: str | None
    erasure_columns: dict[str, str]
    pseudonym_column: str | None = None  # where a pseudonymised row keeps its subject's pseudonym
    rows: int = 0
    objects: list[ObjectEntry] = field(default_factory=list)
    buckets: int | None = None  # this table's subject buckets; None in manifests from before per-table counts
    free_text: list[str] = field(default_factory=list)  # text-like columns searched for erased people

    @property
    def rewritable(self) -> bool:
        """Erasure changes this table's rows (`retain` tables and tables without a subject keep them)."""
        return self.erasure_action in ("delete", "pseudonymise")

    def object(self, key: str) -> ObjectEntry:
        for entry in self.objects:
            if entry.key == key:
                return entry
        raise KeyError(key)


@dataclass
class Manifest:
    snapshot_id: str
    region: str
    bucket: str
    created_at: str
    policy_version: str
    policy_digest: str
    buckets: int  # the policy's rewrite bound: erasing one person rewrites at most 1/buckets of the bytes
    tables: dict[str, TableEntry]
    format: str = FORMAT
    tombstones_at_export: int = 0
    rewrites: list[dict[str, Any]] = field(default_factory=list)  # one entry per propagation that changed it
    incremental: bool = False  # objects are a base and nightly deltas, shared with other snapshots (chain)

    def holding(self, pseudonyms: set[str]) -> list[tuple[str, TableEntry, ObjectEntry, set[str]]]:
        """(table, entry, object, pseudonyms in it) for each object of a rewritable table that can hold
        rows of these subjects: the one object per table whose bucket each pseudonym hashes to."""
        found = []
        for table, entry in self.tables.items():
            if not entry.rewritable:
                continue
            per_bucket: dict[int, set[str]] = {}
            for pseudonym in pseudonyms:
                per_bucket.setdefault(layout.bucket_of(pseudonym, entry.buckets or self.buckets), set()).add(pseudonym)
            for obj in entry.objects:
                held = {p for b, ps in per_bucket.items() if chain.covers(obj, b) for p in ps}
                if held:
                    found.append((table, entry, obj, held))
        return found

    @property
    def objects(self) -> list[ObjectEntry]:
        return [o for t in self.tables.values() for o in t.objects]

    @property
    def total_bytes(self) -> int:
        return sum(o.bytes for o in self.objects)

    @property
    def own_bytes(self) -> int:
        """Bytes of the objects this snapshot wrote (an incremental one also names objects earlier nights wrote)."""
        own = layout.snapshot_prefix(self.snapshot_id)
        return sum(o.bytes for o in self.objects if o.key.startswith(own))

    @property
    def total_rows(self) -> int:
        return sum(t.rows for t in self.tables.values())

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Manifest:
        try:
            raw = json.loads(gzip.decompress(data) if data[:2] == GZIP_MAGIC else data)
            tables = {
                name: TableEntry(**{**t, "objects": [ObjectEntry(**o) for o in t["objects"]]})
                for name, t in raw.pop("tables").items()
            }
            return cls(**raw, tables=tables)
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{where}: not a Lethe backup manifest ({exc})") from exc


GZIP_MAGIC = b"\x1f\x8b"


def write(client: Any, bucket: str, manifest: Manifest) -> str:
    """Store the manifest. An incremental one names every object of its base and of each night since, most of them
    named alike by the manifests before it: it is stored gzipped (35 nights of plain JSON weighed 14 MB beside a
    5 MB snapshot at 2,000 users; bench/backup_growth.py), under the same key."""
    body = manifest.to_json()
    if manifest.incremental:
        body = gzip.compress(body, mtime=0)  # no time in the header: the same manifest, the same bytes
    kind = "application/gzip" if manifest.incremental else "application/json"
    store.put(client, bucket, layout.manifest_key(manifest.snapshot_id), body, kind)
    return hashlib.sha256(body).hexdigest()


def read(client: Any, bucket: str, sid: str) -> Manifest:
    key = layout.manifest_key(sid)
    return Manifest.from_json(store.get(client, bucket, key), f"s3://{bucket}/{key}")


def snapshot_ids(client: Any, bucket: str, *, include_hidden: bool = False) -> list[str]:
    """Every snapshot prefix in the bucket, complete or not, oldest first.

    include_hidden also finds prefixes whose only versions sit behind delete markers (expiry needs them).
    """
    # Versions hidden behind delete markers still hold bytes: with include_hidden the prefixes come from the
    # versions rolled up by prefix, which holds every current object's too (one entry a snapshot; listing every
    # version took 5.7 s at 35 snapshots, 31k versions).
    listing = "list_object_versions" if include_hidden else "list_objects_v2"
    ids = {
        p["Prefix"][len(layout.SNAPSHOT_PREFIX) :].rstrip("/")
        for page in client.get_paginator(listing).paginate(Bucket=bucket, Prefix=layout.SNAPSHOT_PREFIX, Delimiter="/")
        for p in page.get("CommonPrefixes", [])
    }
    return sorted(ids)


def complete_snapshot_ids(client: Any, bucket: str) -> list[str]:
    """The snapshots whose manifest is written (complete), oldest first."""
    return [sid for sid in snapshot_ids(client, bucket) if store.exists(client, bucket, layout.manifest_key(sid))]


def complete_manifests(client: Any, bucket: str) -> list[Manifest]:
    """The manifests of every complete snapshot, oldest first."""
    return [read(client, bucket, sid) for sid in complete_snapshot_ids(client, bucket)]
