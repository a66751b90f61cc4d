-- Email change tokens, stored only as the SHA-256 of the token text, like verification tokens:
-- mailed to the new address, single use (used_at), expiring (expires_at, TOKEN_TTL after
-- issue), and revoked when the user asks for another change (revoked_at). Each names the
-- change it proves (change_id, new_email), which users applies only while it is the user's
-- latest. A change in progress holds its token as used; users out of reach gives it back.
CREATE TABLE email_change_tokens (
    token_hash BYTEA PRIMARY KEY,
    user_id    UUID NOT NULL,
    change_id  UUID NOT NULL,
    new_email  TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT,
    revoked_at BIGINT
);
CREATE INDEX email_change_tokens_user ON email_change_tokens (user_id);
CREATE INDEX email_change_tokens_expiry ON email_change_tokens (expires_at);
