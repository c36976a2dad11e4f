-- The erasure request lifecycle (lethe.erasure.lifecycle): one state per step, moved only by
-- guarded UPDATEs (WHERE status = expected), plus what a batch run must honour per request.
-- Additive and idempotent.

ALTER TABLE erasure_requests ADD COLUMN IF NOT EXISTS require_approval boolean NOT NULL DEFAULT false;
-- Who asked (the Airflow user who triggered the run, or the operator of `lethe erasure submit`):
-- that user may not approve the erasure. A member of staff, never the data subject.
ALTER TABLE erasure_requests ADD COLUMN IF NOT EXISTS requested_by text;
ALTER TABLE erasure_requests ADD COLUMN IF NOT EXISTS status_changed_at timestamptz;

ALTER TABLE erasure_requests DROP CONSTRAINT IF EXISTS erasure_requests_status_check;

-- The previous release's states: 'running' was any step; a request it had erased (stage erased)
-- resumes at verification, any other goes back to the queue (its erasure had not committed).
UPDATE erasure_requests SET status = 'erased', claimed_by = NULL
 WHERE status = 'running' AND detail->>'stage' = 'erased';
UPDATE erasure_requests SET status = 'pending', claimed_by = NULL WHERE status = 'running';

-- 'completed' stays valid for requests closed by the previous release (same meaning as 'certified').
ALTER TABLE erasure_requests ADD CONSTRAINT erasure_requests_status_check
    CHECK (status IN ('pending', 'planned', 'awaiting_approval', 'approved', 'rejected', 'erasing', 'erased',
                      'verified', 'certified', 'held', 'failed', 'no_data', 'dry_run', 'awaiting_processors',
                      'completed'));
