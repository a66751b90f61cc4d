-- The verification service's tables (SQLite). Times are milliseconds since the Unix epoch,
-- the same on both backends, so that expiry, throttling and leases compare plain integers.

-- Each signed-up user's address, and when it was verified. Resends are throttled per user
-- here: at most one mail per RESEND_INTERVAL and RESEND_DAILY_LIMIT in a sliding day.
CREATE TABLE accounts (
    user_id           BLOB PRIMARY KEY NOT NULL, -- UUID, 16 bytes
    email             TEXT NOT NULL,
    signed_up_at      INTEGER NOT NULL,
    verified_at       INTEGER,
    last_mail_at      INTEGER NOT NULL,
    window_started_at INTEGER NOT NULL,
    mails_in_window   INTEGER NOT NULL
);
CREATE INDEX accounts_email ON accounts (email, signed_up_at);

-- Verification tokens, stored only as the SHA-256 of the token text: single use (used_at),
-- expiring (expires_at), and revoked when a newer one is issued (revoked_at).
CREATE TABLE verification_tokens (
    token_hash BLOB PRIMARY KEY NOT NULL,
    user_id    BLOB NOT NULL REFERENCES accounts (user_id),
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER,
    revoked_at INTEGER
);
CREATE INDEX verification_tokens_user ON verification_tokens (user_id);
CREATE INDEX verification_tokens_expiry ON verification_tokens (expires_at);

-- Outgoing mail, written in the same transaction as the token it carries; the mail sender
-- claims pending rows with a lease, sends them and marks them sent. The id is the mailbox file
-- name and the Message-ID. The body may hold a live token: it is cleared once the mail is sent.
CREATE TABLE mails (
    id              BLOB PRIMARY KEY NOT NULL,
    kind            TEXT NOT NULL,
    recipient       TEXT NOT NULL,
    subject         TEXT NOT NULL,
    body            TEXT,
    created_at      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL DEFAULT 0,
    lease_owner     TEXT,
    lease_until     INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    sent_at         INTEGER,
    failed_at       INTEGER
);
CREATE INDEX mails_pending ON mails (created_at) WHERE sent_at IS NULL AND failed_at IS NULL;
CREATE INDEX mails_recipient ON mails (recipient, kind, created_at);
