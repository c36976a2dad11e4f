-- usage_sharing (lethe.sharing): the releases made to each recipient and the
-- privacy budget they spent. Recipient names, windows and counts only.

CREATE TABLE IF NOT EXISTS sharing_releases (
    release_id        text PRIMARY KEY,
    recipient         text NOT NULL,
    -- pending: budget reserved, objects being written; published: manifest written;
    -- refused: over budget, nothing written; gate_failed: nothing written;
    -- abandoned: a pending release whose run died, its objects removed by the next run.
    status            text NOT NULL CHECK (status IN ('pending', 'published', 'refused', 'gate_failed', 'abandoned')),
    window_start      timestamptz NOT NULL,
    window_end        timestamptz NOT NULL,
    days              integer NOT NULL,
    rows_in           bigint NOT NULL DEFAULT 0,
    cells_total       integer NOT NULL DEFAULT 0,
    cells_published   integer NOT NULL DEFAULT 0,
    cells_suppressed  integer NOT NULL DEFAULT 0,
    mechanism         text NOT NULL,
    epsilon_spent     double precision NOT NULL DEFAULT 0,
    s3_prefix         text,
    gate              jsonb,
    message           text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz,
    CHECK (window_end > window_start)
);
CREATE INDEX IF NOT EXISTS sharing_releases_recipient_idx ON sharing_releases (recipient, window_end);

-- Privacy budget ledger: one row per noisy release, written before any object is.
CREATE TABLE IF NOT EXISTS sharing_budget_spend (
    spend_id    bigserial PRIMARY KEY,
    recipient   text NOT NULL,
    release_id  text NOT NULL REFERENCES sharing_releases (release_id),
    epsilon     double precision NOT NULL CHECK (epsilon >= 0),
    delta       double precision NOT NULL DEFAULT 0 CHECK (delta >= 0),
    days        integer NOT NULL,
    spent_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS sharing_budget_spend_recipient_idx ON sharing_budget_spend (recipient, spent_at);
