-- Keyed prefilter terms of each tombstone (lethe.residue.Prefilter.keyed_terms): the words, phone tails and
-- addresses its identifiers can be written with, as keyed pseudonyms. Backups and audits skip the texts that
-- hold none of them instead of matching every spelling. NULL: written before, or nothing safe to look for;
-- then every text is matched in full.
ALTER TABLE erasure_tombstones ADD COLUMN IF NOT EXISTS prefilter_pseudonyms text[];
