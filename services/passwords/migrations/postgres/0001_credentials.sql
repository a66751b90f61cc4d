-- One argon2id credential per user. The PHC string carries its own parameters, so hashes made
-- at an older cost are recognised and upgraded at the next successful login. Login is allowed
-- only once the email is verified. The email is stored normalised (trimmed, lowercased).
CREATE TABLE credentials (
    user_id    UUID PRIMARY KEY,
    email      TEXT NOT NULL UNIQUE,
    phc_hash   TEXT NOT NULL,
    verified   BOOLEAN NOT NULL DEFAULT FALSE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Failed logins, per account ('account:<email>') and per client address ('address:<ip>'),
-- shared by every instance. Times are milliseconds since the Unix epoch.
CREATE TABLE login_throttle (
    key               TEXT PRIMARY KEY,
    failures          BIGINT NOT NULL,
    window_started_at BIGINT NOT NULL,
    locked_until      BIGINT NOT NULL DEFAULT 0
);
