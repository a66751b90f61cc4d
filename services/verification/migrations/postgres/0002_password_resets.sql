-- Password reset tokens, stored only as the SHA-256 of the token text, like verification
-- tokens: single use (used_at), expiring (expires_at, RESET_TOKEN_TTL after issue), and revoked
-- when a newer one is issued or the password changes (revoked_at). A reset in progress holds
-- its token as used; a refused new password gives it back.
CREATE TABLE password_reset_tokens (
    token_hash BYTEA PRIMARY KEY,
    user_id    UUID NOT NULL REFERENCES accounts (user_id),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT,
    revoked_at BIGINT
);
CREATE INDEX password_reset_tokens_user ON password_reset_tokens (user_id);
CREATE INDEX password_reset_tokens_expiry ON password_reset_tokens (expires_at);

-- A reset request looks up the verified account of an address (throttled by counting the
-- address's recent reset mails, on the mails table's index).
CREATE INDEX accounts_verified_email ON accounts (email) WHERE verified_at IS NOT NULL;
