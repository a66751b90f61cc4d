-- Profiles: one per user. The email is stored normalised (trimmed, lower-cased) and unique.
CREATE TABLE profiles (
    id           BLOB PRIMARY KEY NOT NULL, -- UUID, 16 bytes
    email        TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    interests    TEXT NOT NULL DEFAULT '[]', -- JSON array of strings
    verified     BOOLEAN NOT NULL DEFAULT FALSE,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);
