"""Cross-region backups: nightly Parquet snapshots bucketed by subject, erasures carried into them, safe restores.

Modules, one concern each:
- layout: object keys, subject buckets and how many per table, snapshot ids, per-region endpoints
- store: S3 helpers (every version of a key, deletes that really delete)
- frames: PostgreSQL <-> Arrow, Parquet bytes, the erasure of rows in a frame
- mentions: erased people's identifiers in others' free text, found by keyed pseudonyms
- manifest: the per-snapshot manifest, written last
- snapshot: backup_nightly's one export of the primary (into the first region)
- replicate: backup_nightly's server-side copy of that snapshot into every other region
- propagate: backup_erasure_propagation's rewrite of one region
- expiry: snapshots past the backup retention, every version deleted
- restore: a snapshot loaded into a database with every tombstone replayed
- links: the links of kept rows the primary's erasure cuts (foreign keys to erased rows, holds), cut alike
- writer: one writer per region (advisory lock), and the incomplete snapshots a killed backup left
- locks: S3 Object Lock settings that would block erasure
- certificate: the erasure certificate's per-region section
"""
