-- Email changes awaiting their link: at most one per user, the latest request (a newer one
-- replaces it, so an older link changes nothing). The new address is stored normalised; it is
-- not reserved (two users may ask for the same one): the first link followed takes it, under
-- the profiles' unique email.
CREATE TABLE email_changes (
    user_id      UUID PRIMARY KEY REFERENCES profiles (id) ON DELETE CASCADE,
    change_id    UUID NOT NULL,
    new_email    TEXT NOT NULL,
    requested_at TIMESTAMPTZ NOT NULL
);
