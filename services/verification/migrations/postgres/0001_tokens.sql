-- Verification tokens, stored only as a SHA-256 hash; single use (used_at) and expiring.
CREATE TABLE verification_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id    UUID NOT NULL,
    email      TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    used_at    TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX verification_tokens_user ON verification_tokens (user_id);
