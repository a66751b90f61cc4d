-- Profiles: one per user. The email is stored normalised (trimmed, lower-cased) and unique.
CREATE TABLE profiles (
    id           UUID PRIMARY KEY,
    email        TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    interests    JSONB NOT NULL DEFAULT '[]',
    verified     BOOLEAN NOT NULL DEFAULT FALSE,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL
);
