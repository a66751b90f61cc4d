-- One argon2id credential per user (the PHC string carries its parameters, so old hashes can
-- be recognised and upgraded on login). Login is allowed only once the email is verified.
CREATE TABLE credentials (
    user_id    UUID PRIMARY KEY,
    email      TEXT NOT NULL UNIQUE,
    phc_hash   TEXT NOT NULL,
    verified   BOOLEAN NOT NULL DEFAULT FALSE,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
