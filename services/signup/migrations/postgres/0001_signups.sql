-- One row per signup attempt, keyed by its Idempotency-Key; `state` records how far the
-- chained calls got, so `repair` can complete or undo a signup left half-done.
CREATE TABLE signups (
    idempotency_key TEXT PRIMARY KEY,
    request_hash    TEXT NOT NULL,
    email           TEXT NOT NULL,
    user_id         UUID NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('started', 'profile_created', 'completed', 'conflict', 'undone')),
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL
);
CREATE INDEX signups_unfinished ON signups (state, updated_at) WHERE state IN ('started', 'profile_created');
