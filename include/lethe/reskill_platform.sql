-- The demo's platform: re:Skill's primary database, every data category its privacy
-- policy names. Not Lethe's: `lethe seed` and the test template create it in the public
-- schema, as a stand-in for the database a company points Lethe at. Idempotent.

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
    purpose       text NOT NULL,
    granted_at    timestamptz NOT NULL,
    withdrawn_at  timestamptz,
    objected_at   timestamptz,
    UNIQUE (user_id, purpose)
);
-- Purposes i) to v) of the privacy policy and quotes (part of v); an earlier fixture allowed no
-- objection to iv (security), so the check is replaced where it exists.
ALTER TABLE consents DROP CONSTRAINT IF EXISTS consents_purpose_check;
ALTER TABLE consents ADD CONSTRAINT consents_purpose_check
    CHECK (purpose IN ('updates', 'third_party', 'analytics', 'security', 'marketing', 'quotes'));

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
    -- NULL once the event is older than the policy's window: subject_pseudonym then says whose it was
    user_id        bigint REFERENCES accounts (user_id),
    occurred_at    timestamptz NOT NULL,
    feature        text NOT NULL,
    duration_ms    integer NOT NULL,
    storage_bytes  bigint NOT NULL DEFAULT 0,
    subject_pseudonym text,  -- the person's keyed pseudonym (HMAC), written when user_id is cut
    PRIMARY KEY (event_id, occurred_at)
) PARTITION BY RANGE (occurred_at);
CREATE INDEX IF NOT EXISTS usage_events_user_idx ON usage_events (user_id);
CREATE INDEX IF NOT EXISTS usage_events_pseudonym_idx ON usage_events (subject_pseudonym);

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
    subject_pseudonym text,  -- the person's keyed pseudonym (HMAC), written when user_id is cut
    PRIMARY KEY (log_id, occurred_at)
) PARTITION BY RANGE (occurred_at);
CREATE INDEX IF NOT EXISTS visitor_logs_user_idx ON visitor_logs (user_id);
CREATE INDEX IF NOT EXISTS visitor_logs_pseudonym_idx ON visitor_logs (subject_pseudonym);

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
