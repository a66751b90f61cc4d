-- One row per signup attempt, keyed by its Idempotency-Key; `state` records how far the
-- chained calls got, so a retry resumes and `repair` completes or undoes a signup left
-- half-done. The password is never stored here.
CREATE TABLE signups (
    idempotency_key TEXT PRIMARY KEY NOT NULL,
    request_hash    TEXT NOT NULL,
    user_id         BLOB NOT NULL, -- UUID, 16 bytes
    email           TEXT NOT NULL,
    display_name    TEXT NOT NULL,
    interests       TEXT NOT NULL, -- JSON array of strings
    state           TEXT NOT NULL CHECK (state IN ('started', 'profile_created', 'credential_created', 'completed', 'conflict', 'undone')),
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
CREATE INDEX signups_unfinished ON signups (updated_at) WHERE state IN ('started', 'profile_created', 'credential_created');
