-- Accounts a newer signup for their address replaced while they were unverified, from the
-- `replaces` of that signup's `user.signed_up`. Kept apart from `accounts` because the
-- replacement may arrive before the replaced account's own event: that one then gets no link.
CREATE TABLE replaced_accounts (
    user_id     BLOB PRIMARY KEY NOT NULL, -- UUID, 16 bytes
    replaced_at INTEGER NOT NULL
);
