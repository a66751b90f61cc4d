-- Users whose account a newer signup for its address replaced while it was unverified: their
-- credential is gone, and they are never given one again (their signup may still be on its way).
CREATE TABLE replaced_credentials (
    user_id UUID PRIMARY KEY
);
