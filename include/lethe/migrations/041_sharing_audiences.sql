-- usage_sharing: one privacy budget per audience and data day, for life (docs/sharing.md).
-- A data day is released to an audience at most once, whatever the recipient is called:
-- the primary key says so, and the rows can never change or go (append-only, like the ledger).

CREATE TABLE IF NOT EXISTS sharing_audience_days (
    audience     text NOT NULL,
    day          date NOT NULL,
    recipient    text NOT NULL,
    release_id   text NOT NULL REFERENCES sharing_releases (release_id),
    epsilon      double precision NOT NULL CHECK (epsilon >= 0),
    delta        double precision NOT NULL CHECK (delta >= 0),
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (audience, day)
);

-- Each recipient name belongs to one audience for good: moving it to a fresh audience would reset nothing
-- of what it already received.
CREATE TABLE IF NOT EXISTS sharing_recipient_audiences (
    recipient    text PRIMARY KEY,
    audience     text NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);

CREATE OR REPLACE FUNCTION sharing_budget_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the sharing privacy budget (%) is append-only: % is not allowed', TG_TABLE_NAME, TG_OP;
END;
$$ LANGUAGE plpgsql;

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['sharing_audience_days', 'sharing_recipient_audiences', 'sharing_budget_spend'] LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS sharing_budget_append_only ON %I', t);
        EXECUTE format('CREATE TRIGGER sharing_budget_append_only BEFORE UPDATE OR DELETE ON %I'
                       ' FOR EACH ROW EXECUTE FUNCTION sharing_budget_append_only()', t);
        EXECUTE format('DROP TRIGGER IF EXISTS sharing_budget_no_truncate ON %I', t);
        EXECUTE format('CREATE TRIGGER sharing_budget_no_truncate BEFORE TRUNCATE ON %I'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION sharing_budget_append_only()', t);
    END LOOP;
END $$;

-- The cells of every k-anonymous release, published or suppressed (allow-listed dimension values, no counts):
-- the release gate refuses a release from which another recipient's suppressed cell could be derived.
CREATE TABLE IF NOT EXISTS sharing_release_cells (
    release_id      text NOT NULL REFERENCES sharing_releases (release_id),
    day             date NOT NULL,
    source          text NOT NULL,
    feature         text NOT NULL,
    region          text NOT NULL,
    device_type     text NOT NULL,
    browser_family  text NOT NULL,
    published       boolean NOT NULL
);
CREATE INDEX IF NOT EXISTS sharing_release_cells_day_idx ON sharing_release_cells (day);
