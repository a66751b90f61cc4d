-- The friendship log: append-only events per pair stream, with per-stream versions for
-- optimistic concurrency (a second writer of the same version fails on the primary key).
CREATE TABLE friendship_events (
    stream      TEXT NOT NULL,
    version     BIGINT NOT NULL,
    event_type  TEXT NOT NULL,
    actor       UUID NOT NULL,
    occurred_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (stream, version)
);
