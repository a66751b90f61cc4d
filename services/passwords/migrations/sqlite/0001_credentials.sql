-- One argon2id credential per user. The PHC string carries its own parameters, so hashes made
-- at an older cost are recognised and upgraded at the next successful login. Login is allowed
-- only once the email is verified. The email is stored normalised (trimmed, lowercased).
CREATE TABLE credentials (
    user_id    TEXT PRIMARY KEY NOT NULL,
    email      TEXT NOT NULL UNIQUE,
    phc_hash   TEXT NOT NULL,
    verified   INTEGER NOT NULL DEFAULT 0 CHECK (verified IN (0, 1)),
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- Failed logins, per account ('account:<email>') and per client address ('address:<ip>'),
-- shared by every instance. Times are milliseconds since the Unix epoch.
CREATE TABLE login_throttle (
    key               TEXT PRIMARY KEY NOT NULL,
    failures          INTEGER NOT NULL,
    window_started_at INTEGER NOT NULL,
    locked_until      INTEGER NOT NULL DEFAULT 0
);
