-- Pseudonyms of kept rows whose table has no column for one (issue 13 item 5): an erasure that keeps a
-- row (an invoice the law keeps) records here which row of which table belonged to which keyed
-- pseudonym, so the customer's schema needs no new column. `row_key` is the row's primary key as JSON.
CREATE TABLE IF NOT EXISTS kept_pseudonyms (
    table_name         text NOT NULL,
    row_key            jsonb NOT NULL,
    subject_pseudonym  text NOT NULL,
    recorded_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (table_name, row_key)
);
CREATE INDEX IF NOT EXISTS kept_pseudonyms_subject_idx ON kept_pseudonyms (subject_pseudonym);
