"""The manifest of one snapshot in one region: written last, so a snapshot is complete or absent.

It names every data object with its bucket, row count, size and sha256, the
schema of each table and the policy version the snapshot was taken under. It
holds no personal data: no rows, no pseudonyms; an object's term index is a Bloom
filter of keyed pseudonyms (lethe.backup.term_index), meaningless without the key.

An incremental snapshot names the objects of its base and of every night since,
most of them named alike by each manifest before it. Its manifest does not repeat
them: the entries are stored once per writing snapshot, in content-addressed index
objects (`snapshots/<writer>/index/<sha256>.json.gz`, immutable, checked against
the sha256 the manifest gives), and the manifest names its indexes. An erasure that
rewrites a base object writes one new index for the base and small manifests, not
35 copies of every entry (bench/backup_growth.py).
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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
    # An incremental night's digests of the table's rows, for the next night (lethe.backup.digest_state): key and
    # sha256; None: the next night reads the chain's objects for them
    digests: dict[str, str] | None = None

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
    # The index objects the entries were read from (not stored: the manifest names them as it is written)
    indexes: list[str] = field(default_factory=list, compare=False, repr=False)

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
        raw = asdict(self)
        del raw["indexes"]
        return json.dumps(raw, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(
        cls, data: bytes, where: str, indexes: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = None
    ) -> Manifest:
        """The manifest stored as `data`; one naming index objects needs `indexes` (a reference -> the index's
        tables, checked: `IndexReader`)."""
        try:
            raw = json.loads(gzip.decompress(data) if data[:2] == GZIP_MAGIC else data)
            refs = raw.pop("index_objects", None)
            if refs is not None:
                if indexes is None:
                    raise ValueError("it names index objects and none can be read here")
                held = indexes(refs)
                for name, t in raw["tables"].items():
                    t["objects"] = [o for index in held for o in index.get(name, [])]
            tables = {
                name: TableEntry(**{**t, "objects": [ObjectEntry(**o) for o in t["objects"]]})
                for name, t in raw.pop("tables").items()
            }
            return cls(**raw, tables=tables, indexes=[ref["key"] for ref in refs or []])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{where}: not a Lethe backup manifest ({exc})") from exc


GZIP_MAGIC = b"\x1f\x8b"
INDEX_FORMAT = "lethe-backup-index/1"


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)  # no time in the header: the same content, the same bytes


def _split(manifest: Manifest) -> tuple[dict[str, Any], list[tuple[str, bytes]]] | None:
    """The manifest without its entries, and one gzipped index body per snapshot whose prefix holds the objects
    (in the order the tables name them); None when that order cannot be rebuilt from such indexes."""
    raw = json.loads(manifest.to_json())
    groups: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for name, t in raw["tables"].items():
        for o in t.pop("objects"):
            groups.setdefault(layout.written_by(o["key"]), {}).setdefault(name, []).append(o)
    # Oldest writer first, as every table's chain runs (a base, then the nights since): not the order of the first
    # table's objects, which a table given a base of its own later (its columns changed) would make the order of all
    groups = dict(sorted(groups.items()))
    for name, entry in manifest.tables.items():
        if [o["key"] for g in groups.values() for o in g.get(name, [])] != [o.key for o in entry.objects]:
            return None
    bodies = [
        (writer, _gzip(json.dumps({"format": INDEX_FORMAT, "tables": tables}, sort_keys=True).encode()))
        for writer, tables in groups.items()
    ]
    return raw, bodies


def write(client: Any, bucket: str, manifest: Manifest) -> str:
    """Store the manifest, last (see the module's docstring for an incremental one's index objects)."""
    split = _split(manifest) if manifest.incremental else None
    if split is None:
        body = manifest.to_json()
        if manifest.incremental:  # an order the indexes cannot give: every entry inline, gzipped
            body = _gzip(body)
    else:
        raw, bodies = split
        shas = [hashlib.sha256(index).hexdigest() for _, index in bodies]
        refs = [{"key": index_key(w, sha), "sha256": sha} for (w, _), sha in zip(bodies, shas, strict=True)]
        there = store.exists_many(client, bucket, [ref["key"] for ref in refs])
        for ref, (_, index), stored in zip(refs, bodies, there, strict=True):
            if not stored:  # content-addressed: there, it holds these very bytes
                store.put(client, bucket, ref["key"], index, "application/gzip")
        raw["index_objects"] = refs
        body = _gzip(json.dumps(raw, indent=1, sort_keys=True).encode())
    manifest.indexes = [ref["key"] for ref in raw["index_objects"]] if split else []
    kind = "application/gzip" if manifest.incremental else "application/json"
    store.put(client, bucket, layout.manifest_key(manifest.snapshot_id), body, kind)
    return hashlib.sha256(body).hexdigest()


def index_key(writer: str, sha256: str) -> str:
    return f"{index_prefix(writer)}{sha256}.json.gz"


def index_prefix(writer: str) -> str:
    return f"{layout.snapshot_prefix(writer)}index/"


def sweep_indexes(client: Any, bucket: str, manifests: list[Manifest]) -> int:
    """Delete the index objects under these snapshots' prefixes that none of them names any more (a rewrite
    gives its writer a new index; the old one, Bloom filters of erased people's terms included, goes).
    `manifests`: every complete manifest of the bucket, as written. Returns the versions deleted."""
    from lethe.storage import delete_versions

    named = {key for m in manifests for key in m.indexes}
    doomed = [
        v
        for m in manifests
        if m.incremental
        for v in store.versions(client, bucket, index_prefix(m.snapshot_id))
        if v["Key"] not in named
    ]
    return delete_versions(client, bucket, doomed)


def overwritten_indexes(client: Any, bucket: str, listed: list[dict[str, Any]]) -> set[str]:
    """The index objects among `listed` (store.versions under a prefix) with an older version under a current one
    that is not the content their key names: overwritten outside Lethe. A sweep of old versions leaves theirs
    alone: one of them is what a manifest names (IndexReader says which key; put it back), whether or not the
    manifest of the snapshot whose prefix holds it names it (one written before index objects). A key deleted
    outside Lethe (a delete marker on top) is kept by the sweep whatever it is."""
    older = {v["Key"] for v in listed if not v["IsLatest"]}
    return {
        v["Key"]
        for v in listed
        if v["IsLatest"]
        and not v["DeleteMarker"]
        and v["Key"] in older
        and v["Key"].startswith(index_prefix(layout.written_by(v["Key"])))
        and f"{hashlib.sha256(store.get(client, bucket, v['Key'])).hexdigest()}.json.gz" != v["Key"].rsplit("/", 1)[-1]
    }


class IndexReader:
    """Reads index objects, each once (many manifests name the same), checked against the manifest's sha256."""

    def __init__(self, client: Any, bucket: str) -> None:
        self.client, self.bucket = client, bucket
        self.read: dict[str, dict[str, Any]] = {}

    def __call__(self, refs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The tables of each index object `refs` name, in order; those not read yet are fetched a few at once
        (a manifest names one a night of its chain: ~35 GETs, one after the other a round trip each)."""
        unread = list({ref["key"]: ref for ref in refs if ref["key"] not in self.read}.values())
        with ThreadPoolExecutor(max(1, min(store.SMALL_REQUEST_THREADS, len(unread)))) as pool:
            for ref, tables in zip(unread, pool.map(self._fetch, unread), strict=True):
                self.read[ref["key"]] = tables
        return [self.read[ref["key"]] for ref in refs]

    def _fetch(self, ref: dict[str, Any]) -> dict[str, Any]:
        key, sha = ref["key"], ref["sha256"]
        data = store.get(self.client, self.bucket, key)
        if hashlib.sha256(data).hexdigest() != sha:
            raise ValueError(f"index object s3://{self.bucket}/{key} does not match its sha256")
        index = json.loads(gzip.decompress(data))
        if index.get("format") != INDEX_FORMAT:
            raise ValueError(f"s3://{self.bucket}/{key} is not a Lethe backup index")
        tables: dict[str, Any] = index["tables"]
        return tables


def read(client: Any, bucket: str, sid: str, indexes: IndexReader | None = None) -> Manifest:
    """Snapshot `sid`'s manifest; `indexes` shares index objects already read (one reader per bucket)."""
    key = layout.manifest_key(sid)
    body = store.get(client, bucket, key)
    return Manifest.from_json(body, f"s3://{bucket}/{key}", indexes or IndexReader(client, bucket))


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
    ids = snapshot_ids(client, bucket)
    there = store.exists_many(client, bucket, map(layout.manifest_key, ids))
    return [sid for sid, complete in zip(ids, there, strict=True) if complete]


def complete_manifests(client: Any, bucket: str) -> list[Manifest]:
    """The manifests of every complete snapshot, oldest first."""
    indexes = IndexReader(client, bucket)
    return [read(client, bucket, sid, indexes) for sid in complete_snapshot_ids(client, bucket)]
