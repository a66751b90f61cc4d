-- A replayed dead letter is kept, marked, for the record until the `archive` admin process (or,
-- without an archive, the retention sweep) removes it.
ALTER TABLE dead_letters ADD COLUMN replayed_at INTEGER;
CREATE INDEX dead_letters_replayed ON dead_letters (replayed_at) WHERE replayed_at IS NOT NULL;
