-- Legal holds are Lethe's own record, for any subject: keyed by the subject key's value as text,
-- with no foreign key into the platform's tables (a dispute is named by a free `reference`).
ALTER TABLE legal_holds ADD COLUMN IF NOT EXISTS subject_key text;
ALTER TABLE legal_holds ADD COLUMN IF NOT EXISTS reference text;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM information_schema.columns
               WHERE table_schema = current_schema() AND table_name = 'legal_holds' AND column_name = 'user_id') THEN
        UPDATE legal_holds SET subject_key = user_id::text WHERE subject_key IS NULL AND user_id IS NOT NULL;
        UPDATE legal_holds SET reference = 'dispute ' || dispute_id WHERE reference IS NULL AND dispute_id IS NOT NULL;
        ALTER TABLE legal_holds DROP COLUMN user_id;
        ALTER TABLE legal_holds DROP COLUMN dispute_id;
    END IF;
END $$;
DROP INDEX IF EXISTS legal_holds_active_idx;
CREATE INDEX IF NOT EXISTS legal_holds_active_idx ON legal_holds (subject_key) WHERE released_at IS NULL;
