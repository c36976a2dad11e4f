-- compliance_audit's weekly restore drill (lethe.audit.drill): one row per drill that ran, with the
-- counts it checked (names and numbers only). The audit skips the drill while the last one that
-- passed is younger than the interval.
CREATE TABLE IF NOT EXISTS restore_drills (
    drill_id bigserial PRIMARY KEY,
    run_id text NOT NULL,
    region text NOT NULL,
    snapshots text[] NOT NULL DEFAULT '{}',
    started_at timestamptz NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT now(),
    success boolean NOT NULL,
    counts jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS restore_drills_finished_idx ON restore_drills (finished_at DESC);
