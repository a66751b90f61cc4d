-- Accounts a newer signup for their address replaced while they were unverified, from the
-- `replaces` of that signup's `user.signed_up`. Kept apart from `accounts` because the
-- replacement may arrive before the replaced account's own event: that one then gets no link.
CREATE TABLE replaced_accounts (
    user_id     UUID PRIMARY KEY,
    replaced_at BIGINT NOT NULL
);
