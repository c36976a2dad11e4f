-- subject_erasure: the request queue's extra states and claims, and the
-- pseudonymised link of a retained legal hold. Additive and idempotent.

-- 'held': an active legal hold keeps the person's rows; the request stays open
-- and the nightly batch retries it. 'dry_run': a preview that changed nothing.
ALTER TABLE erasure_requests DROP CONSTRAINT IF EXISTS erasure_requests_status_check;
ALTER TABLE erasure_requests ADD CONSTRAINT erasure_requests_status_check
    CHECK (status IN ('pending', 'running', 'completed', 'no_data', 'failed', 'held', 'dry_run'));

ALTER TABLE erasure_requests ADD COLUMN IF NOT EXISTS dry_run boolean NOT NULL DEFAULT false;
-- The DAG run that claimed the request: a batch passes no request list through XCom.
ALTER TABLE erasure_requests ADD COLUMN IF NOT EXISTS claimed_by text;
ALTER TABLE erasure_requests ADD COLUMN IF NOT EXISTS claimed_at timestamptz;
CREATE INDEX IF NOT EXISTS erasure_requests_claim_idx ON erasure_requests (claimed_by) WHERE claimed_by IS NOT NULL;

-- A released hold is kept as the record of a legal obligation, but once its
-- person is erased its link becomes the keyed pseudonym (like invoices).
ALTER TABLE legal_holds ADD COLUMN IF NOT EXISTS subject_pseudonym text;

CREATE INDEX IF NOT EXISTS erasure_tombstones_request_idx ON erasure_tombstones (request_id);
CREATE INDEX IF NOT EXISTS erasure_tombstones_identifiers_idx ON erasure_tombstones USING gin (identifier_pseudonyms);
