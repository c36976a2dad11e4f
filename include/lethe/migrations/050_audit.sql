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
