//! The embedded bus: a SQLite file (WAL, `synchronous=FULL`) shared by every process on one
//! host, so that `dozen up` needs no broker.
//!
//! Tables: `messages` (every published envelope, once), `subscriptions` (which subscriber
//! listens to which topic) and `deliveries` (one row per event per subscriber: the
//! subscriber's durable queue). Publishing inserts the message and one delivery per
//! subscription of its topic in one transaction (fan-out). A consumer claims deliveries by
//! writing a lease (owner and expiry) inside `BEGIN IMMEDIATE`, so competing consumers in any
//! process never claim the same row while a lease holds; an acknowledgement deletes the row,
//! a retry clears the lease and sets `not_before`. A consumer that dies leaves its lease to
//! expire (`BUS_ACK_WAIT`), after which another claims the row again.
//!
//! Ordering: a delivery is claimable only while the oldest delivery of its subject in the
//! subscriber's queue is free (neither leased nor waiting for a retry), and claims take the
//! oldest first, so each subscriber sees one subject's events strictly in publish order, even
//! with competing consumers and retries (a failing event holds back later events of its
//! subject until it is handled or dead-lettered; other subjects flow on), and a busy subject's
//! events come a batch at a time.
//!
//! Wake-ups across processes: a doorbell file per subscriber, rung after each commit that
//! gives its consumers something new and watched with inotify by the processes that have
//! consumers of it (see [`doorbells`]). A consumer looks for work only after a ring, when a
//! retry or lease falls due, or on the backstop poll.
//!
//! Durability: publishing commits with `synchronous=FULL` (a published event survives a power
//! cut before the outbox marks it sent); claims and acknowledgements commit without a flush,
//! since losing one only causes a redelivery, which inboxes absorb. No commit runs a WAL
//! checkpoint: the watcher task runs a passive one at most twice a second, after changes.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use dozen_kit::db::write_turn;
use sqlx::Connection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{BoxFuture, Broker, Delivery, Queue, Receipt, Settlement, check_name, millis, now_ms};
use crate::envelope::Envelope;
use crate::error::BusError;
use crate::settings::BusSettings;

mod doorbells;
use doorbells::{Bells, Doorbells};

/// How often delivered messages no queue holds any more are removed.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// How often the write-ahead log is copied into the database file.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);
/// How long a message outlives its last delivery (for inspection while debugging).
const MESSAGE_GRACE: Duration = Duration::from_secs(60);

/// The version of [`SCHEMA`], kept in the bus file's `user_version`: raise it with any change.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     TEXT    NOT NULL,
    topic        TEXT    NOT NULL,
    subject      TEXT    NOT NULL,
    envelope     TEXT    NOT NULL,
    published_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_published ON messages (published_at);
CREATE TABLE IF NOT EXISTS subscriptions (
    topic      TEXT    NOT NULL,
    subscriber TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (topic, subscriber)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS deliveries (
    subscriber  TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    subject     TEXT    NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    not_before  INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_until INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (subscriber, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_subject ON deliveries (subscriber, subject, seq);
CREATE INDEX IF NOT EXISTS deliveries_seq ON deliveries (seq);
";

/// Claim up to `max` due, unleased deliveries of one subscriber, oldest first, skipping every
/// delivery whose subject's oldest queued delivery is leased or waiting for a retry. One
/// subject's deliveries are claimed together, in order (a batch holds a subject's oldest, and
/// the subscriber hands back the rest of a subject after a failure), and the check looks at
/// one row per subject, found on `deliveries_subject` (named, as the planner would otherwise
/// walk the subscriber's queue to find it), so a claim costs the same however long one
/// subject's backlog is.
const CLAIM: &str = "
UPDATE deliveries SET attempts = attempts + 1, lease_owner = $1, lease_until = $2
WHERE subscriber = $3 AND seq IN (
    SELECT d.seq FROM deliveries d
    WHERE d.subscriber = $3 AND d.not_before <= $4 AND d.lease_until <= $4
      AND (SELECT e.not_before <= $4 AND e.lease_until <= $4 FROM deliveries e INDEXED BY deliveries_subject
           WHERE e.subscriber = d.subscriber AND e.subject = d.subject ORDER BY e.seq LIMIT 1)
    ORDER BY d.seq
    LIMIT $5)
RETURNING seq, attempts";

/// The embedded broker.
#[derive(Debug, Clone)]
pub struct EmbeddedBus {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// For what must survive a power cut: published messages, subscriptions.
    pool: SqlitePool,
    /// For claims and acknowledgements, whose commits are not flushed to disk: one lost in a
    /// power cut only means a redelivery, which the inbox absorbs, and it saves a flush (a
    /// millisecond or more) per claim and per acknowledgement.
    light: SqlitePool,
    /// Wake-ups across processes.
    doorbells: Arc<Doorbells>,
    /// How long a claim holds.
    ack_wait: Duration,
    /// Look for work at least this often.
    backstop: Duration,
    /// Stops the watcher when the last handle is dropped.
    watcher: tokio::task::AbortHandle,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

impl EmbeddedBus {
    /// Open (creating when missing) the bus file named by a `sqlite://` URL.
    pub async fn open(url: &str, settings: &BusSettings) -> Result<Self, BusError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            // No commit pays for a checkpoint (a flush of the whole file): the watcher task
            // checkpoints in the background instead.
            .pragma("wal_autocheckpoint", "0");
        if let Some(folder) = options.get_filename().parent()
            && !folder.as_os_str().is_empty()
        {
            std::fs::create_dir_all(folder).map_err(|e| BusError::Database(sqlx::Error::Io(e)))?;
        }
        // A local file does not drop connections: no liveness ping before each use.
        let pools = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(10));
        // One connection for what must be durable: every use but the readiness ping is a write,
        // and the file's lock lets one writer in at a time anyway. (A pool takes a connection
        // back only after a round trip, so a larger one opens a connection, a thread and a page
        // cache, whenever two uses follow each other closely.)
        let pool = pools
            .clone()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        // The file is in WAL mode now (switching needs a lock no other connection may hold):
        // the light pool's connection opens, on a thread of its own, while the first checks
        // the schema.
        let light = options.clone().synchronous(SqliteSynchronous::Normal);
        let (light, ()) = tokio::try_join!(
            async { Ok::<_, BusError>(pools.connect_with(light).await?) },
            async { Ok(create_schema(&pool).await?) },
        )?;

        let (doorbells, bells) = Doorbells::open(options.get_filename(), &options).await?;
        let doorbells = Arc::new(doorbells);
        let watcher = tokio::spawn(watch_bus(bells, doorbells.clone(), light.clone())).abort_handle();
        Ok(Self {
            shared: Arc::new(Shared {
                pool,
                light,
                doorbells,
                ack_wait: settings.bus_ack_wait,
                backstop: settings.bus_poll_interval,
                watcher,
            }),
        })
    }

    async fn publish_all(&self, events: &[Envelope]) -> Result<(), BusError> {
        let now = now_ms();
        let mut subscribers = std::collections::BTreeSet::new();
        let _turn = write_turn(&self.shared.pool).await;
        let mut tx = self.shared.pool.begin_with("BEGIN IMMEDIATE").await?;
        for event in events {
            let text = serde_json::to_string(event)?;
            let seq: i64 = sqlx::query_scalar(
                "INSERT INTO messages (event_id, topic, subject, envelope, published_at)
                 VALUES ($1, $2, $3, $4, $5) RETURNING seq",
            )
            .bind(event.id.to_string())
            .bind(event.topic())
            .bind(&event.subject)
            .bind(text)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            let queued: Vec<String> = sqlx::query_scalar(
                "INSERT INTO deliveries (subscriber, seq, subject)
                 SELECT subscriber, $1, $2 FROM subscriptions WHERE topic = $3
                 RETURNING subscriber",
            )
            .bind(seq)
            .bind(&event.subject)
            .bind(event.topic())
            .fetch_all(&mut *tx)
            .await?;
            subscribers.extend(queued);
        }
        tx.commit().await?;
        self.shared.doorbells.ring(subscribers.iter().map(String::as_str));
        Ok(())
    }
}

/// Create the bus's tables, unless this version of them is there already: every process
/// runs this at start, and only the first needs the write lock.
async fn create_schema(pool: &SqlitePool) -> Result<(), sqlx::Error> {
    async fn version(conn: &mut SqliteConnection) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("PRAGMA user_version").fetch_one(conn).await
    }
    let mut conn = pool.acquire().await?;
    if version(&mut conn).await? >= SCHEMA_VERSION {
        return Ok(());
    }
    // IF NOT EXISTS makes it idempotent, and the write lock makes concurrent starts take
    // turns; the version is read again under the lock.
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    if version(&mut tx).await? < SCHEMA_VERSION {
        sqlx::raw_sql(SCHEMA).execute(&mut *tx).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "PRAGMA user_version = {SCHEMA_VERSION}"
        )))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// Wake this process's consumers on their doorbells' rings; checkpoint the write-ahead log
/// after activity; now and then remove messages that no queue holds any more.
async fn watch_bus(mut bells: Bells, doorbells: Arc<Doorbells>, pool: SqlitePool) {
    // The first sweep and checkpoint come an interval after start, not amid start-up's
    // queries (each query running at the same time as others opens a pooled connection).
    let now = tokio::time::Instant::now();
    let mut sweep = tokio::time::interval_at(now + SWEEP_INTERVAL, SWEEP_INTERVAL);
    let mut checkpoint = tokio::time::interval_at(now + CHECKPOINT_INTERVAL, CHECKPOINT_INTERVAL);
    checkpoint.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut active_since_checkpoint = true;
    loop {
        tokio::select! {
            _ = checkpoint.tick(), if active_since_checkpoint => {
                active_since_checkpoint = false;
                // Passive: never waits for, nor blocks, readers and writers.
                if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&pool).await {
                    tracing::warn!(%error, "checkpointing the embedded bus failed");
                }
            }
            rung = doorbells.next(&mut bells) => {
                active_since_checkpoint = true;
                if let Err(error) = rung {
                    // Everyone looks for themselves, then again on the backstop poll.
                    tracing::warn!(%error, "the embedded bus watcher cannot follow the doorbells");
                    doorbells.wake_all();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            _ = sweep.tick() => {
                if let Err(error) = sweep_messages(&pool).await {
                    tracing::warn!(%error, "sweeping delivered messages failed");
                }
            }
        }
    }
}

/// Remove messages published before the grace period that no queue holds any more, a batch
/// per transaction (so publishers and consumers get the lock in between) until none is left:
/// a sweep keeps up with any publishing rate.
async fn sweep_messages(pool: &SqlitePool) -> Result<(), sqlx::Error> {
    const SWEEP_BATCH: i64 = 10_000;
    let cutoff = now_ms() - millis(MESSAGE_GRACE);
    loop {
        let _turn = write_turn(pool).await;
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        let removed = sqlx::query(
            "DELETE FROM messages WHERE seq IN (
                 SELECT m.seq FROM messages m
                 WHERE m.published_at < $1
                   AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.seq = m.seq)
                 LIMIT $2)",
        )
        .bind(cutoff)
        .bind(SWEEP_BATCH)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        if removed < SWEEP_BATCH.unsigned_abs() {
            return Ok(());
        }
    }
}

impl Broker for EmbeddedBus {
    fn publish<'a>(&'a self, events: &'a [Envelope]) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(self.publish_all(events))
    }

    fn open<'a>(
        &'a self,
        subscriber: &'a str,
        topics: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Box<dyn Queue>>, BusError>> {
        Box::pin(async move {
            check_name("subscriber", subscriber)?;
            // Subscriptions are never removed: the write lock is taken only for missing ones,
            // on the first start of a subscriber or when it gains a topic.
            let mut conn = self.shared.pool.acquire().await?;
            let existing: Vec<String> =
                sqlx::query_scalar("SELECT topic FROM subscriptions WHERE subscriber = $1")
                    .bind(subscriber)
                    .fetch_all(&mut *conn)
                    .await?;
            if topics.iter().any(|topic| !existing.contains(topic)) {
                let _turn = write_turn(&self.shared.pool).await;
                let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
                for topic in topics {
                    sqlx::query(
                        "INSERT INTO subscriptions (topic, subscriber, created_at) VALUES ($1, $2, $3)
                         ON CONFLICT DO NOTHING",
                    )
                    .bind(topic)
                    .bind(subscriber)
                    .bind(now_ms())
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
            }
            let queue: Box<dyn Queue> = Box::new(EmbeddedQueue {
                shared: self.shared.clone(),
                changes: self.shared.doorbells.listen(subscriber)?,
                subscriber: subscriber.to_owned(),
            });
            Ok(vec![queue])
        })
    }

    fn pending<'a>(
        &'a self,
        subscriber: &'a str,
        _topics: &'a [String],
    ) -> BoxFuture<'a, Result<u64, BusError>> {
        Box::pin(async move {
            let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deliveries WHERE subscriber = $1")
                .bind(subscriber)
                .fetch_one(&self.shared.light)
                .await?;
            Ok(u64::try_from(count).unwrap_or_default())
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            sqlx::query("SELECT 1").execute(&self.shared.pool).await?;
            Ok(())
        })
    }

    fn backend(&self) -> &'static str {
        "embedded"
    }
}

/// One consumer's view of a subscriber's queue (all its topics in one).
#[derive(Debug)]
struct EmbeddedQueue {
    shared: Arc<Shared>,
    changes: watch::Receiver<u64>,
    subscriber: String,
}

impl EmbeddedQueue {
    /// A lock-free look: is anything claimable now? Saves every idle consumer of every
    /// process from taking the write lock on every commit.
    async fn anything_due(&self, now: i64) -> Result<bool, BusError> {
        let due: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM deliveries WHERE subscriber = $1 AND not_before <= $2 AND lease_until <= $2 LIMIT 1",
        )
        .bind(&self.subscriber)
        .bind(now)
        .fetch_optional(&self.shared.light)
        .await?;
        Ok(due.is_some())
    }

    /// When the next delayed retry or lease falls due, if one is pending. Deliveries held back
    /// only by an earlier one of their subject wait for that one's acknowledgement, a commit
    /// that wakes the queue anyway.
    async fn next_due(&self, now: i64) -> Result<Option<i64>, BusError> {
        let due: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(MAX(not_before, lease_until)) FROM deliveries
             WHERE subscriber = $1 AND MAX(not_before, lease_until) > $2",
        )
        .bind(&self.subscriber)
        .bind(now)
        .fetch_one(&self.shared.light)
        .await?;
        Ok(due)
    }

    async fn claim(&self, max: usize) -> Result<Vec<Delivery>, BusError> {
        let now = now_ms();
        if !self.anything_due(now).await? {
            return Ok(Vec::new());
        }
        let lease: Arc<str> = uuid::Uuid::now_v7().to_string().into();
        let _turn = write_turn(&self.shared.light).await;
        let mut tx = self.shared.light.begin_with("BEGIN IMMEDIATE").await?;
        let mut claimed: Vec<(i64, i64)> = sqlx::query_as(CLAIM)
            .bind(&*lease)
            .bind(now + millis(self.shared.ack_wait))
            .bind(&self.subscriber)
            .bind(now)
            .bind(i64::try_from(max).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await?;
        if claimed.is_empty() {
            tx.rollback().await?;
            return Ok(Vec::new());
        }
        claimed.sort_unstable();
        let seqs: Vec<i64> = claimed.iter().map(|(seq, _)| *seq).collect();
        let payloads: Vec<(i64, String)> = sqlx::query_as(
            "SELECT seq, envelope FROM messages WHERE seq IN (SELECT value FROM json_each($1)) ORDER BY seq",
        )
        .bind(serde_json::to_string(&seqs)?)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut payloads = payloads.into_iter().peekable();
        let mut deliveries = Vec::with_capacity(claimed.len());
        for (seq, attempts) in claimed {
            // A delivery always has its message (the sweep only removes messages without
            // deliveries); skip defensively rather than fail the batch.
            while payloads.next_if(|(s, _)| *s < seq).is_some() {}
            let Some((_, payload)) = payloads.next_if(|(s, _)| *s == seq) else {
                tracing::error!(seq, "a delivery without its message");
                continue;
            };
            deliveries.push(Delivery {
                payload,
                attempt: u32::try_from(attempts).unwrap_or(u32::MAX),
                receipt: Receipt::Embedded {
                    seq,
                    lease: lease.clone(),
                },
            });
        }
        Ok(deliveries)
    }

    /// Settle deliveries in one transaction, then ring the subscriber's doorbell if that gave
    /// its consumers something to claim: a retry or a hand-back, or an acknowledgement of an
    /// event that held back a later one of its subject.
    async fn settle_all(&self, settled: Vec<(Delivery, Settlement)>) -> Result<(), BusError> {
        if settled.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let mut released = false;
        let _turn = write_turn(&self.shared.light).await;
        let mut tx = self.shared.light.begin_with("BEGIN IMMEDIATE").await?;
        for (delivery, settlement) in settled {
            let Receipt::Embedded { seq, lease } = delivery.receipt else {
                continue;
            };
            match settlement {
                Settlement::Ack => {
                    let later_of_subject: Option<i64> = sqlx::query_scalar(
                        "DELETE FROM deliveries WHERE subscriber = $1 AND seq = $2 AND lease_owner = $3
                         RETURNING (SELECT 1 FROM deliveries e
                                    WHERE e.subscriber = deliveries.subscriber
                                      AND e.subject = deliveries.subject AND e.seq > deliveries.seq)",
                    )
                    .bind(&self.subscriber)
                    .bind(seq)
                    .bind(&*lease)
                    .fetch_optional(&mut *tx)
                    .await?
                    .flatten();
                    released |= later_of_subject.is_some();
                }
                Settlement::Retry(delay) => {
                    sqlx::query(
                        "UPDATE deliveries SET lease_owner = NULL, lease_until = 0, not_before = $4
                         WHERE subscriber = $1 AND seq = $2 AND lease_owner = $3",
                    )
                    .bind(&self.subscriber)
                    .bind(seq)
                    .bind(&*lease)
                    .bind(now + millis(delay))
                    .execute(&mut *tx)
                    .await?;
                    released = true;
                }
                Settlement::Release => {
                    sqlx::query(
                        "UPDATE deliveries SET lease_owner = NULL, lease_until = 0, attempts = MAX(attempts - 1, 0)
                         WHERE subscriber = $1 AND seq = $2 AND lease_owner = $3",
                    )
                    .bind(&self.subscriber)
                    .bind(seq)
                    .bind(&*lease)
                    .execute(&mut *tx)
                    .await?;
                    released = true;
                }
            }
        }
        tx.commit().await?;
        if released {
            self.shared.doorbells.ring([self.subscriber.as_str()]);
        }
        Ok(())
    }
}

impl Queue for EmbeddedQueue {
    fn receive<'a>(
        &'a mut self,
        max: usize,
        stop: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Vec<Delivery>, BusError>> {
        Box::pin(async move {
            loop {
                // Mark the current change as seen before looking, so a commit made while
                // looking still wakes the wait below.
                self.changes.borrow_and_update();
                let claimed = self.claim(max).await?;
                if !claimed.is_empty() {
                    return Ok(claimed);
                }
                let mut wait = self.shared.backstop;
                let now = now_ms();
                if let Some(due) = self.next_due(now).await? {
                    let until_due = u64::try_from(due - now).unwrap_or(0);
                    wait = wait.min(Duration::from_millis(until_due.max(1)));
                }
                tokio::select! {
                    changed = self.changes.changed() => {
                        if changed.is_err() {
                            // The watcher is gone (shutting down): fall back to polling.
                            tokio::time::sleep(wait).await;
                        }
                    }
                    () = tokio::time::sleep(wait) => {}
                    () = stop.cancelled() => return Ok(Vec::new()),
                }
            }
        })
    }

    fn settle(&mut self, settled: Vec<(Delivery, Settlement)>) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(self.settle_all(settled))
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        // Nothing is buffered: every claimed delivery was handed out.
        Box::pin(async {})
    }

    fn label(&self) -> &str {
        "*"
    }

    fn keeps_subject_order(&self) -> bool {
        true
    }
}
