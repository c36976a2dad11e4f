-- Where each audit run's GX Data Docs live in the evidence bucket (a key prefix; NULL when none
-- were published). The compliance page serves them through its authenticated route.
ALTER TABLE audit_runs ADD COLUMN IF NOT EXISTS data_docs text;
