-- Cross-region backups (lethe.backup): the snapshot catalogue and how far each
-- erasure tombstone has been carried into each region's retained snapshots.
-- Holds keyed pseudonyms and counts only, never a raw identifier.

CREATE TABLE IF NOT EXISTS backup_snapshots (
    snapshot_id     text NOT NULL,
    region          text NOT NULL,
    status          text NOT NULL DEFAULT 'writing' CHECK (status IN ('writing', 'complete', 'expired')),
    started_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz,
    expired_at      timestamptz,
    policy_version  text,
    objects         integer,
    rows            bigint,
    bytes           bigint,
    PRIMARY KEY (snapshot_id, region)
);

-- One row per (snapshot, region, tombstone) whose erasure that snapshot already
-- reflects: written when the snapshot is taken (tombstones filtered at export)
-- and when propagation rewrites it.
CREATE TABLE IF NOT EXISTS backup_tombstone_applications (
    snapshot_id        text NOT NULL,
    region             text NOT NULL,
    subject_pseudonym  text NOT NULL,
    applied_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (snapshot_id, region, subject_pseudonym)
);

-- Per tombstone and region: applied to every retained snapshot of the region?
CREATE TABLE IF NOT EXISTS backup_propagation_status (
    subject_pseudonym    text NOT NULL,
    region               text NOT NULL,
    status               text NOT NULL CHECK (status IN ('pending', 'applied')),
    snapshots            integer NOT NULL DEFAULT 0,
    objects_rewritten    integer NOT NULL DEFAULT 0,
    bytes_rewritten      bigint NOT NULL DEFAULT 0,
    applied_at           timestamptz,
    certificate_updated  boolean NOT NULL DEFAULT false,
    PRIMARY KEY (subject_pseudonym, region)
);
