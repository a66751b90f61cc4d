-- Verification tokens, stored only as a SHA-256 hash; single use (used_at) and expiring.
CREATE TABLE verification_tokens (
    token_hash TEXT PRIMARY KEY NOT NULL,
    user_id    TEXT NOT NULL,
    email      TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at    TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX verification_tokens_user ON verification_tokens (user_id);
