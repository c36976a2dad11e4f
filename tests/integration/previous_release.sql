-- The layout of the release before Lethe had a schema of its own (commit af54acb): the re:Skill platform
-- and Lethe's state together in the public schema, with public.schema_migrations. Test fixture for the upgrade.

-- ==== 001_platform.sql
-- The re:Skill platform's primary database: every data category the privacy
-- policy names, plus Lethe's own bookkeeping (requests, tombstones, ledger).
-- Idempotent: every statement can run again on a migrated database.

CREATE TABLE IF NOT EXISTS accounts (
    user_id         bigint PRIMARY KEY,
    name            text NOT NULL,
    username        text NOT NULL UNIQUE,
    email           text NOT NULL UNIQUE,
    phone           text,
    password_hash   text NOT NULL,
    age             smallint,
    address         text,
    city            text,
    interests       text[],
    created_at      timestamptz NOT NULL,
    last_active_at  timestamptz,
    closed_at       timestamptz
);
CREATE INDEX IF NOT EXISTS accounts_closed_at_idx ON accounts (closed_at) WHERE closed_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS ssh_keys (
    key_id      bigint PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES accounts (user_id),
    public_key  text NOT NULL,
    added_at    timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS ssh_keys_user_idx ON ssh_keys (user_id);

CREATE TABLE IF NOT EXISTS subscriptions (
    subscription_id bigint PRIMARY KEY,
    user_id         bigint NOT NULL REFERENCES accounts (user_id),
    plan            text NOT NULL,
    started_at      timestamptz NOT NULL,
    ended_at        timestamptz
);
CREATE INDEX IF NOT EXISTS subscriptions_user_idx ON subscriptions (user_id);

-- Invoices and payments are tax records: kept for the statutory period. On
-- erasure the link to the person is replaced by a keyed pseudonym.
CREATE TABLE IF NOT EXISTS invoices (
    invoice_id        bigint PRIMARY KEY,
    user_id           bigint REFERENCES accounts (user_id),
    subject_pseudonym text,
    billing_name      text,
    billing_address   text,
    tax_id            text,
    amount_cents      bigint NOT NULL,
    currency          text NOT NULL,
    issued_at         timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS invoices_user_idx ON invoices (user_id);

CREATE TABLE IF NOT EXISTS payments (
    payment_id        bigint PRIMARY KEY,
    invoice_id        bigint NOT NULL REFERENCES invoices (invoice_id),
    user_id           bigint REFERENCES accounts (user_id),
    subject_pseudonym text,
    amount_cents      bigint NOT NULL,
    method            text NOT NULL,
    card_last4        text,
    paid_at           timestamptz NOT NULL,
    refunded_at       timestamptz
);
CREATE INDEX IF NOT EXISTS payments_user_idx ON payments (user_id);
CREATE INDEX IF NOT EXISTS payments_invoice_idx ON payments (invoice_id);

-- One row per purpose a person was asked about. An objection or a withdrawal
-- ends the processing for that purpose from the next run on.
CREATE TABLE IF NOT EXISTS consents (
    consent_id    bigint PRIMARY KEY,
    user_id       bigint NOT NULL REFERENCES accounts (user_id),
    purpose       text NOT NULL CHECK (purpose IN ('updates', 'third_party', 'analytics', 'marketing', 'quotes')),
    granted_at    timestamptz NOT NULL,
    withdrawn_at  timestamptz,
    objected_at   timestamptz,
    UNIQUE (user_id, purpose)
);

CREATE TABLE IF NOT EXISTS marketing_contacts (
    contact_id     bigint PRIMARY KEY,
    user_id        bigint NOT NULL REFERENCES accounts (user_id),
    email          text NOT NULL,
    name           text,
    list_name      text NOT NULL,
    subscribed_at  timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS marketing_contacts_user_idx ON marketing_contacts (user_id);

-- Temporary cookies end with the browser session; persistent ones at expires_at.
CREATE TABLE IF NOT EXISTS sessions (
    session_id   bigint PRIMARY KEY,
    user_id      bigint REFERENCES accounts (user_id),
    cookie_id    text NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('temporary', 'persistent')),
    ip_address   inet,
    created_at   timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_user_idx ON sessions (user_id);
CREATE INDEX IF NOT EXISTS sessions_expires_idx ON sessions (expires_at);

-- High-volume event tables are range-partitioned by month (lethe.partitions).
CREATE TABLE IF NOT EXISTS usage_events (
    event_id       bigint NOT NULL,
    user_id        bigint NOT NULL REFERENCES accounts (user_id),
    occurred_at    timestamptz NOT NULL,
    feature        text NOT NULL,
    duration_ms    integer NOT NULL,
    storage_bytes  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (event_id, occurred_at)
) PARTITION BY RANGE (occurred_at);
CREATE INDEX IF NOT EXISTS usage_events_user_idx ON usage_events (user_id);

CREATE TABLE IF NOT EXISTS visitor_logs (
    log_id         bigint NOT NULL,
    user_id        bigint REFERENCES accounts (user_id),
    visitor_id     text NOT NULL,
    occurred_at    timestamptz NOT NULL,
    ip_address     inet,
    device_type    text,
    browser        text,
    user_agent     text,
    language       text,
    file_accessed  text,
    referrer       text,
    error          text,
    os             text,
    time_zone      text,
    PRIMARY KEY (log_id, occurred_at)
) PARTITION BY RANGE (occurred_at);
CREATE INDEX IF NOT EXISTS visitor_logs_user_idx ON visitor_logs (user_id);

CREATE TABLE IF NOT EXISTS comments (
    comment_id  bigint PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES accounts (user_id),
    body        text NOT NULL,
    created_at  timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS comments_user_idx ON comments (user_id);

CREATE TABLE IF NOT EXISTS feedback (
    feedback_id       bigint PRIMARY KEY,
    user_id           bigint NOT NULL REFERENCES accounts (user_id),
    body              text NOT NULL,
    rating            smallint,
    consent_to_quote  boolean NOT NULL DEFAULT false,
    created_at        timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_user_idx ON feedback (user_id);

CREATE TABLE IF NOT EXISTS survey_responses (
    response_id  bigint PRIMARY KEY,
    user_id      bigint NOT NULL REFERENCES accounts (user_id),
    survey       text NOT NULL,
    answers      jsonb NOT NULL,
    created_at   timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS survey_responses_user_idx ON survey_responses (user_id);

CREATE TABLE IF NOT EXISTS app_data (
    app_data_id  bigint PRIMARY KEY,
    user_id      bigint NOT NULL REFERENCES accounts (user_id),
    app          text NOT NULL,
    payload      jsonb NOT NULL,
    updated_at   timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS app_data_user_idx ON app_data (user_id);

CREATE TABLE IF NOT EXISTS issue_reports (
    report_id    bigint PRIMARY KEY,
    user_id      bigint NOT NULL REFERENCES accounts (user_id),
    title        text NOT NULL,
    body         text NOT NULL,
    created_at   timestamptz NOT NULL,
    resolved_at  timestamptz
);
CREATE INDEX IF NOT EXISTS issue_reports_user_idx ON issue_reports (user_id);

CREATE TABLE IF NOT EXISTS security_evidence (
    evidence_id  bigint PRIMARY KEY,
    user_id      bigint REFERENCES accounts (user_id),
    ip_address   inet,
    kind         text NOT NULL,
    detail       text,
    observed_at  timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS security_evidence_user_idx ON security_evidence (user_id);

CREATE TABLE IF NOT EXISTS communications (
    message_id  bigint PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES accounts (user_id),
    channel     text NOT NULL,
    direction   text NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    subject     text,
    body        text NOT NULL,
    sent_at     timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS communications_user_idx ON communications (user_id);

CREATE TABLE IF NOT EXISTS disputes (
    dispute_id  bigint PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES accounts (user_id),
    summary     text NOT NULL,
    opened_at   timestamptz NOT NULL,
    closed_at   timestamptz
);
CREATE INDEX IF NOT EXISTS disputes_user_idx ON disputes (user_id);

-- A hold keeps every row of the person, whatever its retention, until released.
CREATE TABLE IF NOT EXISTS legal_holds (
    hold_id      bigint PRIMARY KEY,
    user_id      bigint NOT NULL REFERENCES accounts (user_id),
    dispute_id   bigint REFERENCES disputes (dispute_id),
    reason       text NOT NULL,
    placed_at    timestamptz NOT NULL,
    released_at  timestamptz
);
CREATE INDEX IF NOT EXISTS legal_holds_active_idx ON legal_holds (user_id) WHERE released_at IS NULL;

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

-- ==== 010_retention.sql
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

-- ==== 020_erasure.sql
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
ALTER TABLE legal_holds ALTER COLUMN user_id DROP NOT NULL;

CREATE INDEX IF NOT EXISTS erasure_tombstones_request_idx ON erasure_tombstones (request_id);
CREATE INDEX IF NOT EXISTS erasure_tombstones_identifiers_idx ON erasure_tombstones USING gin (identifier_pseudonyms);

-- ==== 030_backup.sql
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

-- ==== 040_sharing.sql
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

-- ==== 050_audit.sql
-- compliance_audit's results: one row per audit run (the verdict, the failed
-- checks by name and the Great Expectations results as plain data), and the
-- alerts Lethe raised. Neither holds personal data: check names and counts only.

CREATE TABLE IF NOT EXISTS audit_runs (
    run_id         text PRIMARY KEY,
    dag_id         text NOT NULL,
    audited_at     timestamptz NOT NULL DEFAULT now(),
    success        boolean NOT NULL,
    checks_total   integer NOT NULL,
    checks_failed  integer NOT NULL,
    failed         text[] NOT NULL DEFAULT '{}',
    results        jsonb NOT NULL,
    held_rows      jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX IF NOT EXISTS audit_runs_audited_at_idx ON audit_runs (audited_at DESC);

CREATE TABLE IF NOT EXISTS audit_alerts (
    alert_id   bigserial PRIMARY KEY,
    raised_at  timestamptz NOT NULL DEFAULT now(),
    kind       text NOT NULL,
    dag_id     text,
    run_id     text,
    message    text NOT NULL,
    delivered  boolean NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS audit_alerts_raised_at_idx ON audit_alerts (raised_at DESC);

-- ==== 060_ledger_truncate.sql
-- The ledger refuses TRUNCATE too. It fires no row trigger, so a statement-level one refuses it (the
-- function is 001's, which raises naming the operation). Only the table's owner can disable these
-- triggers; docs/deployment.md gives the grants under which Lethe's own role is not that owner.
DROP TRIGGER IF EXISTS ledger_no_truncate ON ledger;
CREATE TRIGGER ledger_no_truncate BEFORE TRUNCATE ON ledger
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();

CREATE TABLE schema_migrations (name text PRIMARY KEY, applied_at timestamptz DEFAULT now());
INSERT INTO schema_migrations (name) VALUES ('001_platform.sql'), ('010_retention.sql'), ('020_erasure.sql'),
    ('030_backup.sql'), ('040_sharing.sql'), ('050_audit.sql'), ('060_ledger_truncate.sql');
