-- The ledger refuses TRUNCATE too. It fires no row trigger, so a statement-level one refuses it (the
-- function is 001's, which raises naming the operation). Only the table's owner can disable these
-- triggers; docs/deployment.md gives the grants under which Lethe's own role is not that owner.
DROP TRIGGER IF EXISTS ledger_no_truncate ON ledger;
CREATE TRIGGER ledger_no_truncate BEFORE TRUNCATE ON ledger
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();
