-- The unverified accounts a signup's profile replaced for its address (newest first, as users
-- answered): their credentials are dropped before the signup's own is set, and
-- `user.signed_up` names the first.
ALTER TABLE signups ADD COLUMN replaced TEXT NOT NULL DEFAULT '[]'; -- JSON array of UUIDs
