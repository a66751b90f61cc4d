-- One argon2id credential per user (the PHC string carries its parameters, so old hashes can
-- be recognised and upgraded on login). Login is allowed only once the email is verified.
CREATE TABLE credentials (
    user_id    TEXT PRIMARY KEY NOT NULL,
    email      TEXT NOT NULL UNIQUE,
    phc_hash   TEXT NOT NULL,
    verified   INTEGER NOT NULL DEFAULT 0 CHECK (verified IN (0, 1)),
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
