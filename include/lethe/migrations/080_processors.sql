-- Processors (lethe.processors): each call's receipt, and what an erasure request keeps
-- for them until every processor has confirmed. Additive and idempotent.

-- 'awaiting_processors': erased here, but a processor has not confirmed yet; the request
-- stays open (identifier kept) and the nightly batch calls that processor again.
ALTER TABLE erasure_requests DROP CONSTRAINT IF EXISTS erasure_requests_status_check;
ALTER TABLE erasure_requests ADD CONSTRAINT erasure_requests_status_check
    CHECK (status IN ('pending', 'running', 'completed', 'no_data', 'failed', 'held', 'dry_run',
                      'awaiting_processors'));

-- The identifiers processors know the person by (email, user id), captured in the erasure's
-- transaction; nulled with `identifier` when the request completes.
ALTER TABLE erasure_requests ADD COLUMN IF NOT EXISTS processor_identifiers jsonb;

-- One row per (cause, erasure request or consent row, processor): the latest receipt and the
-- number of calls. Every call is also in the ledger. No identifier.
CREATE TABLE IF NOT EXISTS processor_receipts (
    cause        text NOT NULL CHECK (cause IN ('erasure', 'objection')),
    subject_ref  text NOT NULL,
    processor    text NOT NULL,
    status       text NOT NULL CHECK (status IN ('confirmed', 'accepted', 'pending', 'skipped')),
    attempts     integer NOT NULL DEFAULT 1,
    job_id       text,
    error        text,
    detail       jsonb NOT NULL DEFAULT '{}'::jsonb,
    first_at     timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (cause, subject_ref, processor)
);
CREATE INDEX IF NOT EXISTS processor_receipts_open_idx ON processor_receipts (processor) WHERE status = 'pending';
