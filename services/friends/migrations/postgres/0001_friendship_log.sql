-- The friendship log: append-only events per pair stream (`<low id>:<high id>`), with
-- per-stream versions for optimistic concurrency (a second writer of the same version fails
-- on the primary key). The tables after it are projections, rebuilt from it by `rebuild`.
CREATE TABLE friendship_events (
    stream      TEXT NOT NULL,
    version     BIGINT NOT NULL,
    event_type  TEXT NOT NULL CHECK (event_type IN ('requested', 'accepted', 'removed')),
    actor       UUID NOT NULL,
    occurred_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (stream, version)
);

CREATE TABLE friend_requests (
    requester    UUID NOT NULL,
    addressee    UUID NOT NULL,
    requested_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (requester, addressee)
);
CREATE INDEX friend_requests_addressee ON friend_requests (addressee);

CREATE TABLE friendships (
    user_id   UUID NOT NULL,
    friend_id UUID NOT NULL,
    since     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, friend_id)
);

CREATE TABLE members (
    user_id      UUID PRIMARY KEY,
    display_name TEXT NOT NULL,
    interests    JSONB NOT NULL,
    verified     BOOLEAN NOT NULL
);
