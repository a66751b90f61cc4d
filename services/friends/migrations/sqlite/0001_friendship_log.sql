-- The friendship log: append-only events per pair stream (`<low id>:<high id>`), with
-- per-stream versions for optimistic concurrency (a second writer of the same version fails
-- on the primary key). The tables after it are projections, rebuilt from it by `rebuild`.
CREATE TABLE friendship_events (
    stream      TEXT NOT NULL,
    version     INTEGER NOT NULL,
    event_type  TEXT NOT NULL CHECK (event_type IN ('requested', 'accepted', 'removed')),
    actor       BLOB NOT NULL, -- UUID of who did it
    occurred_at TEXT NOT NULL,
    PRIMARY KEY (stream, version)
);

-- Pending requests, by who asked whom.
CREATE TABLE friend_requests (
    requester    BLOB NOT NULL,
    addressee    BLOB NOT NULL,
    requested_at TEXT NOT NULL,
    PRIMARY KEY (requester, addressee)
);
CREATE INDEX friend_requests_addressee ON friend_requests (addressee);

-- Friendships, one row per direction, so "my friends" is one index range.
CREATE TABLE friendships (
    user_id   BLOB NOT NULL,
    friend_id BLOB NOT NULL,
    since     TEXT NOT NULL,
    PRIMARY KEY (user_id, friend_id)
);

-- What friends knows of every user, from the users' events: who may be suggested, and why.
CREATE TABLE members (
    user_id      BLOB PRIMARY KEY NOT NULL,
    display_name TEXT NOT NULL,
    interests    TEXT NOT NULL, -- JSON array of strings
    verified     BOOLEAN NOT NULL
);
