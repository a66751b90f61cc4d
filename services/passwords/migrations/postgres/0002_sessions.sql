-- Refresh sessions: one per login, ended by logout, by a password change or reset, by the reuse
-- of a rotated refresh token, or by its absolute lifetime. Ids are hyphenated UUID text and times
-- milliseconds since the Unix epoch, alike on every backend.
CREATE TABLE sessions (
    id             TEXT PRIMARY KEY NOT NULL,
    user_id        TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    last_used_at   BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    client_address TEXT NOT NULL,
    user_agent     TEXT NOT NULL,
    -- SHA-256 (hex) of the one refresh token that may be used next.
    current_token  TEXT NOT NULL
);
CREATE INDEX sessions_by_user ON sessions (user_id, last_used_at);
CREATE INDEX sessions_by_expiry ON sessions (expires_at);

-- Every refresh token a session has been given (SHA-256, hex), the rotated ones too: presenting
-- one that is no longer the session's current token is a reuse, and ends the session.
CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY NOT NULL,
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE
);
CREATE INDEX refresh_tokens_by_session ON refresh_tokens (session_id);
