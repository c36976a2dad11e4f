-- retention_nightly's checkpoints: one row per (plan, rule, step). Each batch
-- updates its row in the same transaction as its DELETE/UPDATE, so a killed
-- run resumes after the last committed batch and its counts stay exact.
-- Steps: 'batches' (primary-key range batches), 'partition:<name>' (one
-- expired partition detached and dropped), 'ledger' (the rule's ledger entry).
CREATE TABLE IF NOT EXISTS retention_progress (
    plan_id     text NOT NULL,
    rule        text NOT NULL,
    step        text NOT NULL,
    rows_done   bigint NOT NULL DEFAULT 0,
    batches     integer NOT NULL DEFAULT 0,
    last_key    text,
    finished    boolean NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (plan_id, rule, step)
);
