-- One row per signup attempt, keyed by its Idempotency-Key; `state` records how far the
-- chained calls got, so a retry resumes and `repair` completes or undoes a signup left
-- half-done. The password is never stored here.
CREATE TABLE signups (
    idempotency_key TEXT PRIMARY KEY,
    request_hash    TEXT NOT NULL,
    user_id         UUID NOT NULL,
    email           TEXT NOT NULL,
    display_name    TEXT NOT NULL,
    interests       JSONB NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('started', 'profile_created', 'credential_created', 'completed', 'conflict', 'undone')),
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL
);
CREATE INDEX signups_unfinished ON signups (updated_at) WHERE state IN ('started', 'profile_created', 'credential_created');
