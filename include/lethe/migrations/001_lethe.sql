-- Lethe's own state, in Lethe's schema (migrate runs this file with search_path set to it).
-- Idempotent: every statement can run again on a migrated database.

-- A hold keeps every row of the person, whatever its retention, until released. It names its
-- subject by the subject key's value (any key type, as text), with no foreign key into the platform.
CREATE TABLE IF NOT EXISTS legal_holds (
    hold_id            bigint PRIMARY KEY,
    subject_key        text,
    reference          text,
    reason             text NOT NULL,
    placed_at          timestamptz NOT NULL,
    released_at        timestamptz,
    subject_pseudonym  text
);
-- Its index on active holds: 070 (the previous release's table gains subject_key there).

-- The identifier is kept only while the request is open, then nulled.
CREATE TABLE IF NOT EXISTS erasure_requests (
    request_id         uuid PRIMARY KEY,
    identifier_kind    text NOT NULL CHECK (identifier_kind IN ('user_id', 'email', 'phone', 'username')),
    identifier         text,
    reference          text,
    reason             text,
    received_at        timestamptz NOT NULL DEFAULT now(),
    due_at             timestamptz NOT NULL,
    status             text NOT NULL DEFAULT 'pending'
                       CHECK (status IN ('pending', 'running', 'completed', 'no_data', 'failed')),
    subject_pseudonym  text,
    completed_at       timestamptz,
    detail             jsonb
);
CREATE INDEX IF NOT EXISTS erasure_requests_status_idx ON erasure_requests (status, due_at);

-- The only record of an erased person: keyed pseudonyms, never a raw identifier.
CREATE TABLE IF NOT EXISTS erasure_tombstones (
    subject_pseudonym      text PRIMARY KEY,
    identifier_pseudonyms  text[] NOT NULL,
    request_id             uuid,
    erased_at              timestamptz NOT NULL DEFAULT now(),
    counts                 jsonb NOT NULL DEFAULT '{}'::jsonb
);

-- Up to when raw usage data has been aggregated by usage_sharing: retention
-- must not purge raw rows that are still due to be aggregated.
CREATE TABLE IF NOT EXISTS aggregation_watermarks (
    source_table      text PRIMARY KEY,
    aggregated_until  timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- Append-only, hash-chained record of what Lethe did (lethe.ledger).
CREATE TABLE IF NOT EXISTS ledger (
    entry_id     bigserial PRIMARY KEY,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    kind         text NOT NULL,
    payload      jsonb NOT NULL,
    prev_hash    text NOT NULL,
    entry_hash   text NOT NULL UNIQUE
);

CREATE OR REPLACE FUNCTION ledger_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only: % is not allowed', TG_OP;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS ledger_append_only ON ledger;
CREATE TRIGGER ledger_append_only BEFORE UPDATE OR DELETE ON ledger
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
