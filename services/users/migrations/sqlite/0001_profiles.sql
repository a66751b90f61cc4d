-- Profiles: one per user. The email is stored normalised (trimmed, lower-cased) and unique.
CREATE TABLE profiles (
    id           TEXT PRIMARY KEY NOT NULL,
    email        TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    interests    TEXT NOT NULL DEFAULT '[]', -- JSON array of strings
    verified     INTEGER NOT NULL DEFAULT 0 CHECK (verified IN (0, 1)),
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);
