-- The friendship log: append-only events per pair stream, with per-stream versions for
-- optimistic concurrency (a second writer of the same version fails on the primary key).
CREATE TABLE friendship_events (
    stream      TEXT NOT NULL,
    version     INTEGER NOT NULL,
    event_type  TEXT NOT NULL,
    actor       TEXT NOT NULL,
    occurred_at TEXT NOT NULL,
    PRIMARY KEY (stream, version)
);
