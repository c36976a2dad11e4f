-- The keyed pseudonyms of the people under an active legal hold, for the audit's SQL (which takes no parameters
-- and cannot compute an HMAC): rows whose subject link retention cut before the hold was placed carry only the
-- pseudonym, and the hold keeps them. The audit rewrites this table (lethe.holds.record_held_pseudonyms) before
-- its suites run; its queries count a row only while its hold is still active. Only for policies that cut links.
CREATE TABLE IF NOT EXISTS held_pseudonyms (
    hold_id            bigint NOT NULL,
    subject_pseudonym  text NOT NULL,
    PRIMARY KEY (hold_id, subject_pseudonym)
);
CREATE INDEX IF NOT EXISTS held_pseudonyms_pseudonym_idx ON held_pseudonyms (subject_pseudonym);
