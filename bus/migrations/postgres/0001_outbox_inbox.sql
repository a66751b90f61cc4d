-- The bus's tables in a service's own database (Postgres). Times are milliseconds since the
-- Unix epoch, the same on both backends, so that the relay and consumers share their logic.

-- Events written in the same transaction as the state change they announce; the relay
-- publishes pending rows (sent_at IS NULL) and marks them sent.
CREATE TABLE outbox (
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        UUID   NOT NULL UNIQUE,
    topic           TEXT   NOT NULL,
    subject         TEXT   NOT NULL,
    envelope        TEXT   NOT NULL,
    created_at      BIGINT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL DEFAULT 0,
    lease_owner     TEXT,
    lease_until     BIGINT NOT NULL DEFAULT 0,
    last_error      TEXT,
    sent_at         BIGINT
);
CREATE INDEX outbox_pending ON outbox (seq) WHERE sent_at IS NULL;
CREATE INDEX outbox_pending_subject ON outbox (subject, seq) WHERE sent_at IS NULL;
CREATE INDEX outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL;

-- The events each subscriber has taken responsibility for (handled, or dead-lettered): a
-- redelivered event finds its id here and has no second effect.
CREATE TABLE inbox (
    subscriber  TEXT   NOT NULL,
    event_id    UUID   NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (subscriber, event_id)
);
CREATE INDEX inbox_received ON inbox (received_at);

-- Events whose handler kept failing: kept until replayed (replay_requested_at set by an
-- admin, picked up by the running subscriber).
CREATE TABLE dead_letters (
    subscriber          TEXT    NOT NULL,
    event_id            UUID    NOT NULL,
    event_type          TEXT    NOT NULL,
    envelope            TEXT    NOT NULL,
    attempts            INTEGER NOT NULL,
    error               TEXT    NOT NULL,
    failed_at           BIGINT  NOT NULL,
    replay_requested_at BIGINT,
    PRIMARY KEY (subscriber, event_id)
);
