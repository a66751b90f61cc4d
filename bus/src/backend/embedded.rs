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
//! Ordering: a delivery is claimable only when no earlier delivery of the same subject is
//! still in the subscriber's queue, so each subscriber sees one subject's events strictly in
//! publish order, even with competing consumers and retries (a failing event holds back later
//! events of its subject until it is handled or dead-lettered; other subjects flow on).
//!
//! Wake-ups across processes: one task per process reads `PRAGMA data_version` every 2 ms on
//! a connection of its own. The pragma reads a counter in the WAL index (shared memory), takes
//! no lock and changes whenever another connection commits, so a consumer in any process
//! wakes within about 2 ms of a publish. It does so only while the bus is busy: inotify on the
//! bus file's folder reports every write to the write-ahead log, and each starts a quarter
//! second of polling, so an idle bus costs no CPU. (Where inotify is missing or refused, the
//! task polls all the time.) A consumer looks for work only after such a change, when a retry
//! or lease falls due, or on the backstop poll.
//!
//! Durability: publishing commits with `synchronous=FULL` (a published event survives a power
//! cut before the outbox marks it sent); claims and acknowledgements commit without a flush,
//! since losing one only causes a redelivery, which inboxes absorb. No commit runs a WAL
//! checkpoint: the watcher task runs a passive one at most twice a second, after changes.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, SqliteConnection};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{BoxFuture, Broker, Delivery, Queue, Receipt, Settlement, check_name, millis, now_ms};
use crate::envelope::Envelope;
use crate::error::BusError;
use crate::settings::BusSettings;

/// How often each process looks for commits by other processes (while the bus is busy).
const WATCH_INTERVAL: Duration = Duration::from_millis(2);
/// How long after a write to the bus file's log the watcher keeps looking for its commit.
const HOT_SPELL: Duration = Duration::from_millis(250);
/// How often delivered messages no queue holds any more are removed.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// How often the write-ahead log is copied into the database file.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);
/// How long a message outlives its last delivery (for inspection while debugging).
const MESSAGE_GRACE: Duration = Duration::from_secs(60);

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

/// Claim up to `max` due, unleased deliveries of one subscriber, oldest first, skipping any
/// whose subject has an earlier delivery still queued.
const CLAIM: &str = "
UPDATE deliveries SET attempts = attempts + 1, lease_owner = $1, lease_until = $2
WHERE subscriber = $3 AND seq IN (
    SELECT d.seq FROM deliveries d
    WHERE d.subscriber = $3 AND d.not_before <= $4 AND d.lease_until <= $4
      AND NOT EXISTS (
          SELECT 1 FROM deliveries e
          WHERE e.subscriber = d.subscriber AND e.subject = d.subject AND e.seq < d.seq)
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
    /// Bumped by the watcher whenever another connection commits.
    changes: watch::Receiver<u64>,
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
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await?;
        let light = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone().synchronous(SqliteSynchronous::Normal))
            .await?;
        // Every process runs this at start; IF NOT EXISTS makes it idempotent and the write
        // lock makes concurrent starts take turns.
        let mut conn = pool.acquire().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::raw_sql(SCHEMA).execute(&mut *tx).await?;
        tx.commit().await?;
        drop(conn);

        let commits = Commits::watch(&options).await?;
        let (sender, changes) = watch::channel(0);
        let watcher = tokio::spawn(watch_commits(commits, light.clone(), sender)).abort_handle();
        Ok(Self {
            shared: Arc::new(Shared {
                pool,
                light,
                changes,
                ack_wait: settings.bus_ack_wait,
                backstop: settings.bus_poll_interval,
                watcher,
            }),
        })
    }

    async fn publish_all(&self, events: &[Envelope]) -> Result<(), BusError> {
        let now = now_ms();
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
            sqlx::query(
                "INSERT INTO deliveries (subscriber, seq, subject)
                 SELECT subscriber, $1, $2 FROM subscriptions WHERE topic = $3",
            )
            .bind(seq)
            .bind(&event.subject)
            .bind(event.topic())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// `PRAGMA data_version` on a connection of its own: it reads a counter in the WAL index
/// (shared memory), takes no lock, and changes once another connection's commit is visible.
struct DataVersion {
    conn: SqliteConnection,
    last: Option<i64>,
}

impl DataVersion {
    async fn changed(&mut self) -> Result<bool, String> {
        let version = sqlx::query_scalar::<_, i64>("PRAGMA data_version")
            .fetch_one(&mut self.conn)
            .await
            .map_err(|e| e.to_string())?;
        let changed = self.last.is_some_and(|last| last != version);
        self.last = Some(version);
        Ok(changed)
    }
}

/// How the watcher learns that some connection, in any process, committed to the bus file.
enum Commits {
    /// inotify on the bus file's folder. A write to the write-ahead log starts a hot spell of
    /// [`HOT_SPELL`], during which the data version is read every [`WATCH_INTERVAL`]: the
    /// write comes before its commit is visible (a flush and the WAL index update follow it,
    /// with no file event), so the version, not the event, says when to look.
    #[cfg(target_os = "linux")]
    Notified {
        events: inotify::EventStream<Vec<u8>>,
        log: std::ffi::OsString,
        version: DataVersion,
        hot_until: tokio::time::Instant,
    },
    /// The data version, read every [`WATCH_INTERVAL`].
    Polled {
        version: DataVersion,
        tick: tokio::time::Interval,
    },
}

impl Commits {
    /// Watch with inotify where it can be had, or else poll.
    async fn watch(options: &SqliteConnectOptions) -> Result<Self, BusError> {
        let version = DataVersion {
            conn: options.connect().await?,
            last: None,
        };
        #[cfg(target_os = "linux")]
        let version = match Self::notified(options.get_filename(), version) {
            Ok(commits) => return Ok(commits),
            Err((error, version)) => {
                tracing::info!(%error, "no inotify watch on the embedded bus; polling it every 2 ms");
                version
            }
        };
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Self::Polled { version, tick })
    }

    #[cfg(target_os = "linux")]
    fn notified(
        bus_file: &std::path::Path,
        version: DataVersion,
    ) -> Result<Self, (std::io::Error, DataVersion)> {
        let folder = match bus_file.parent() {
            Some(folder) if !folder.as_os_str().is_empty() => folder,
            _ => std::path::Path::new("."),
        };
        let Some(name) = bus_file.file_name() else {
            return Err((std::io::Error::other("the bus file has no name"), version));
        };
        let mut log = name.to_owned();
        log.push("-wal");
        let events = inotify::Inotify::init().and_then(|inotify| {
            // The folder, not the file: SQLite removes and recreates the log.
            inotify.watches().add(folder, inotify::WatchMask::MODIFY)?;
            inotify.into_event_stream(vec![0; 4096])
        });
        match events {
            Ok(events) => Ok(Self::Notified {
                events,
                log,
                version,
                // Hot from the start: commits made before the watch began are looked for.
                hot_until: tokio::time::Instant::now() + HOT_SPELL,
            }),
            Err(error) => Err((error, version)),
        }
    }

    /// Wait until another connection's commit is visible; `Err` when watching fails.
    async fn next(&mut self) -> Result<(), String> {
        match self {
            #[cfg(target_os = "linux")]
            Self::Notified {
                events,
                log,
                version,
                hot_until,
            } => loop {
                use futures_util::{FutureExt, StreamExt};
                let event = if tokio::time::Instant::now() < *hot_until {
                    tokio::select! {
                        event = events.next() => Some(event),
                        () = tokio::time::sleep(WATCH_INTERVAL) => None,
                    }
                } else {
                    Some(events.next().await)
                };
                if let Some(event) = event {
                    let event = event
                        .ok_or("the inotify watch ended")?
                        .map_err(|e| e.to_string())?;
                    // Nameless events (a queue overflow) may hide a write to the log.
                    let mut written = event.name.as_ref().is_none_or(|name| name == log);
                    while let Some(Some(queued)) = events.next().now_or_never() {
                        let queued = queued.map_err(|e| e.to_string())?;
                        written |= queued.name.as_ref().is_none_or(|name| name == log);
                    }
                    if written {
                        *hot_until = tokio::time::Instant::now() + HOT_SPELL;
                    }
                }
                if version.changed().await? {
                    return Ok(());
                }
            },
            Self::Polled { version, tick } => loop {
                tick.tick().await;
                if version.changed().await? {
                    return Ok(());
                }
            },
        }
    }
}

/// Announce commits to this process's consumers; checkpoint the write-ahead log after
/// changes; now and then remove messages that no queue holds any more.
async fn watch_commits(mut commits: Commits, pool: SqlitePool, sender: watch::Sender<u64>) {
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    let mut checkpoint = tokio::time::interval(CHECKPOINT_INTERVAL);
    checkpoint.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut changed_since_checkpoint = true;
    loop {
        tokio::select! {
            _ = checkpoint.tick(), if changed_since_checkpoint => {
                changed_since_checkpoint = false;
                // Passive: never waits for, nor blocks, readers and writers.
                if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&pool).await {
                    tracing::warn!(%error, "checkpointing the embedded bus failed");
                }
            }
            commit = commits.next() => {
                // On an error, wake everyone all the same (they will look for themselves).
                changed_since_checkpoint = true;
                sender.send_modify(|count| *count += 1);
                if let Err(error) = commit {
                    tracing::warn!(%error, "the embedded bus watcher cannot follow the bus file");
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

async fn sweep_messages(pool: &SqlitePool) -> Result<(), sqlx::Error> {
    let cutoff = now_ms() - millis(MESSAGE_GRACE);
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    sqlx::query(
        "DELETE FROM messages WHERE seq IN (
             SELECT m.seq FROM messages m
             WHERE m.published_at < $1
               AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.seq = m.seq)
             LIMIT 10000)",
    )
    .bind(cutoff)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
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
            let mut tx = self.shared.pool.begin_with("BEGIN IMMEDIATE").await?;
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
            let queue: Box<dyn Queue> = Box::new(EmbeddedQueue {
                shared: self.shared.clone(),
                changes: self.shared.changes.clone(),
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

    async fn settle_all(&self, settled: Vec<(Delivery, Settlement)>) -> Result<(), BusError> {
        if settled.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let mut tx = self.shared.light.begin_with("BEGIN IMMEDIATE").await?;
        for (delivery, settlement) in settled {
            let Receipt::Embedded { seq, lease } = delivery.receipt else {
                continue;
            };
            let (sql, not_before) = match settlement {
                Settlement::Ack => (
                    "DELETE FROM deliveries WHERE subscriber = $1 AND seq = $2 AND lease_owner = $3",
                    None,
                ),
                Settlement::Retry(delay) => (
                    "UPDATE deliveries SET lease_owner = NULL, lease_until = 0, not_before = $4
                     WHERE subscriber = $1 AND seq = $2 AND lease_owner = $3",
                    Some(now + millis(delay)),
                ),
                Settlement::Release => (
                    "UPDATE deliveries SET lease_owner = NULL, lease_until = 0, attempts = MAX(attempts - 1, 0)
                     WHERE subscriber = $1 AND seq = $2 AND lease_owner = $3",
                    None,
                ),
            };
            let mut query = sqlx::query(sql).bind(&self.subscriber).bind(seq).bind(&*lease);
            if let Some(not_before) = not_before {
                query = query.bind(not_before);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
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
}
