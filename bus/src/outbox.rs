//! Publishing: the transactional outbox and the relay that empties it.
//!
//! A service publishes by inserting the envelope into its own database's `outbox` table in
//! the same transaction as the state change the event announces ([`Outbox::publish`]): both
//! commit or neither does. The [`Relay`] then claims pending rows, publishes them to the
//! broker, and marks them sent.
//!
//! Claims are leases (`lease_owner`, `lease_until`), taken inside `BEGIN IMMEDIATE` on SQLite
//! and under a transaction-scoped advisory lock on Postgres, so several instances of a service
//! relay side by side without publishing one row twice while its lease holds. A relay that dies
//! between publishing and marking sent leaves its lease to expire; the row is then published
//! again, and the duplicate is absorbed by the broker's deduplication (NATS) or by each
//! subscriber's inbox. A failed publish is retried with exponential backoff (at most
//! ten seconds apart); when a batch fails its events are tried one by one, so that an event
//! the broker refuses holds back only the later events of its own subject.
//!
//! Order: a row is claimed only while its subject's oldest unsent row is free (neither leased
//! nor waiting for a retry), and a claim takes rows oldest first, so one subject's events leave
//! in commit order even when several relays run, and a busy subject's events leave a batch at
//! a time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dozen_kit::db::{Db, write_turn};
use dozen_kit::trace_context::{self, Handling};
use sqlx::postgres::PgConnection;
use sqlx::sqlite::{SqliteConnection, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::backend::{Broker, millis, now_ms};
use crate::contracts::Event;
use crate::envelope::Envelope;
use crate::error::BusError;
use crate::metrics;
use crate::settings::BusSettings;
use crate::tx::{Tx, TxConn};

/// Rows claimed per round trip to the broker.
const BATCH: i64 = 256;
/// The longest wait before a failed publish is tried again: a publish fails because of the
/// broker, not the event, so the retry must not lag far behind the broker's recovery.
const RELAY_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How often the backlog figures are refreshed and old sent rows removed.
const STATS_INTERVAL: Duration = Duration::from_secs(5);

/// Claim up to `$4` due, unleased rows, oldest first, skipping every row whose subject's oldest
/// unsent row is leased or waiting for a retry. One subject's rows are claimed together, in
/// order (a batch holds a subject's oldest rows, and a failure holds back the rest of its
/// subject), and the check looks at one row per subject, found on `outbox_pending_subject`
/// (named, as SQLite's planner may otherwise scan for it), so a claim costs the same however
/// long one subject's backlog is.
const CLAIM_SQLITE: &str = "
UPDATE outbox SET lease_owner = $1, lease_until = $2
WHERE seq IN (
    SELECT o.seq FROM outbox o
    WHERE o.sent_at IS NULL AND o.next_attempt_at <= $3 AND o.lease_until <= $3
      AND (SELECT e.next_attempt_at <= $3 AND e.lease_until <= $3 FROM outbox e INDEXED BY outbox_pending_subject
           WHERE e.sent_at IS NULL AND e.subject = o.subject ORDER BY e.seq LIMIT 1)
    ORDER BY o.seq
    LIMIT $4)
RETURNING seq, envelope, attempts";

/// [`CLAIM_SQLITE`] on Postgres. Claims take turns under [`CLAIM_LOCK`]: two claims at once
/// would each see the other's rows as free, and the second could take a subject's later rows
/// while the first takes its earlier ones.
const CLAIM_POSTGRES: &str = "
UPDATE outbox SET lease_owner = $1, lease_until = $2
WHERE seq IN (
    SELECT o.seq FROM outbox o
    WHERE o.sent_at IS NULL AND o.next_attempt_at <= $3 AND o.lease_until <= $3
      AND (SELECT e.next_attempt_at <= $3 AND e.lease_until <= $3 FROM outbox e
           WHERE e.sent_at IS NULL AND e.subject = o.subject ORDER BY e.seq LIMIT 1)
    ORDER BY o.seq
    LIMIT $4)
RETURNING seq, envelope, attempts";

/// The Postgres advisory lock (per database, so per outbox) that claims hold until they commit.
const CLAIM_LOCK: i64 = 0x646f_7a65_6e5f_6f62; // "dozen_ob"

/// Where a service publishes: its outbox.
#[derive(Debug, Clone)]
pub struct Outbox {
    /// The publishing service, the envelope's `source`.
    source: Arc<str>,
    /// Woken after each commit that wrote to the outbox, so the relay needs no fast polling.
    wake: Arc<Notify>,
}

impl Outbox {
    /// The outbox of service `source`.
    pub fn new(source: &str) -> Self {
        Self {
            source: source.into(),
            wake: Arc::new(Notify::new()),
        }
    }

    /// Publish `event` as part of `tx`: it leaves when (and only if) `tx` commits.
    pub async fn publish<E: Event>(&self, tx: &mut Tx, event: &E) -> Result<Envelope, BusError> {
        let envelope = Envelope::new(&self.source, event)?;
        self.publish_envelope(tx, &envelope).await?;
        Ok(envelope)
    }

    /// Publish a ready-made envelope as part of `tx`.
    pub async fn publish_envelope(&self, tx: &mut Tx, envelope: &Envelope) -> Result<(), BusError> {
        let text = serde_json::to_string(envelope)?;
        let created_at = envelope.time.timestamp_millis();
        match tx.conn() {
            TxConn::Sqlite(conn) => {
                sqlx::query(
                    "INSERT INTO outbox (event_id, topic, subject, envelope, created_at) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(envelope.id.to_string())
                .bind(envelope.topic())
                .bind(&envelope.subject)
                .bind(text)
                .bind(created_at)
                .execute(conn)
                .await?;
            }
            TxConn::Postgres(conn) => {
                sqlx::query(
                    "INSERT INTO outbox (event_id, topic, subject, envelope, created_at) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(envelope.id)
                .bind(envelope.topic())
                .bind(&envelope.subject)
                .bind(text)
                .bind(created_at)
                .execute(conn)
                .await?;
            }
        }
        tx.wake_after_commit(self.wake.clone());
        Ok(())
    }
}

/// Publishes a service's outbox to the broker.
#[derive(Debug)]
pub struct Relay {
    db: Db,
    broker: Arc<dyn Broker>,
    wake: Arc<Notify>,
    /// Names this relay's leases.
    owner: String,
    settings: BusSettings,
    /// Opened on first use, dropped after an error.
    writer: Option<Writer>,
}

/// The relay's own connection for its claims and "sent" marks, whose commits are not flushed
/// to disk: a claim or mark lost in a power cut only means a row is published again, which
/// deduplication absorbs, and skipping the flush takes a millisecond or more off every
/// publish. Never used for the service's own writes.
#[derive(Debug)]
enum Writer {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
}

impl Writer {
    async fn open(db: &Db) -> Result<Self, sqlx::Error> {
        Ok(match db {
            Db::Sqlite(pool) => Self::Sqlite(
                (*pool.connect_options())
                    .clone()
                    .synchronous(SqliteSynchronous::Normal)
                    // Checkpoints (a flush of the whole database) happen on the service's own
                    // commits, not on the publish path.
                    .pragma("wal_autocheckpoint", "0")
                    .connect()
                    .await?,
            ),
            Db::Postgres(pool) => Self::Postgres(
                (*pool.connect_options())
                    .clone()
                    .options([("synchronous_commit", "off")])
                    .connect()
                    .await?,
            ),
        })
    }
}

/// A claimed outbox row.
struct Claimed {
    seq: i64,
    envelope: String,
    attempts: i32,
}

impl Relay {
    /// A relay of `outbox`, stored in `db`, to `broker`.
    pub fn new(db: Db, broker: Arc<dyn Broker>, outbox: &Outbox, settings: &BusSettings) -> Self {
        Self {
            db,
            broker,
            wake: outbox.wake.clone(),
            owner: Uuid::new_v4().to_string(),
            settings: settings.clone(),
            writer: None,
        }
    }

    /// Relay until `stop` is cancelled: after every commit that published, and on the
    /// backstop poll (for retries and for rows left by a relay that died).
    pub async fn run(mut self, stop: CancellationToken) {
        // Upkeep first comes an interval after start, not amid start-up's queries (each query
        // running at the same time as others opens a pooled connection of its own).
        let mut stats_due = Instant::now() + STATS_INTERVAL;
        loop {
            if stop.is_cancelled() {
                return;
            }
            let mut more = false;
            match self.relay_once().await {
                Ok(count) => more = count > 0,
                Err(error) => tracing::warn!(error = %error, "relaying the outbox failed; retrying"),
            }
            if stats_due <= Instant::now() {
                stats_due = Instant::now() + STATS_INTERVAL;
                if let Err(error) = self.upkeep().await {
                    tracing::warn!(error = %error, "outbox upkeep failed");
                }
            }
            if more {
                continue;
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.settings.bus_poll_interval) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    /// Claim one batch of due rows, publish it and mark it sent (or schedule its retry).
    /// Returns how many rows were published.
    pub async fn relay_once(&mut self) -> Result<usize, BusError> {
        let claimed = self.claim().await?;
        if claimed.is_empty() {
            return Ok(0);
        }
        let decoded: Vec<Result<Envelope, String>> = claimed
            .iter()
            .map(|row| serde_json::from_str(&row.envelope).map_err(|e| e.to_string()))
            .collect();
        // Each event leaves in a span of its own, a child of the span that wrote it, and goes
        // on in that span's trace context, so a trace shows the relay between the writer and
        // the handlers. The spans end once the batch is out.
        let (decoded, _publishing): (Vec<_>, Vec<_>) = decoded
            .into_iter()
            .map(|decoded| match decoded {
                Ok(mut envelope) => {
                    let publishing = Handling::start(
                        tracing::info_span!(
                            "bus.publish",
                            event_type = %envelope.event_type,
                            event_id = %envelope.id,
                            backend = self.broker.backend(),
                        ),
                        trace_context::extract_from_map(&envelope.trace),
                    );
                    envelope.trace = publishing.in_scope(trace_context::inject_into_map);
                    (Ok(envelope), Some(publishing))
                }
                Err(error) => (Err(error), None),
            })
            .unzip();
        // The usual case: the whole batch in one round trip.
        if let Ok(envelopes) = decoded.iter().cloned().collect::<Result<Vec<_>, _>>() {
            match self.broker.publish(&envelopes).await {
                Ok(()) => {
                    let seqs: Vec<i64> = claimed.iter().map(|row| row.seq).collect();
                    self.mark_sent(&seqs).await?;
                    envelopes
                        .iter()
                        .for_each(|envelope| metrics::published(envelope.topic()));
                    return Ok(envelopes.len());
                }
                Err(error) => {
                    tracing::debug!(%error, "publishing a batch failed; trying its events one by one")
                }
            }
        }
        // One by one, in order, so that one event the broker refuses (or that does not decode)
        // holds back only the events of its own subject, not the whole outbox.
        let mut sent = Vec::new();
        let mut failure = None;
        for (index, (row, envelope)) in claimed.iter().zip(&decoded).enumerate() {
            let published = match envelope {
                Ok(envelope) => self.broker.publish(std::slice::from_ref(envelope)).await,
                Err(error) => Err(BusError::Broker(format!(
                    "the outbox row does not decode: {error}"
                ))),
            };
            match published {
                Ok(()) => {
                    sent.push(row.seq);
                    if let Ok(envelope) = envelope {
                        metrics::published(envelope.topic());
                    }
                }
                Err(error) => {
                    failure = Some((index, error));
                    break;
                }
            }
        }
        self.mark_sent(&sent).await?;
        let Some((index, error)) = failure else {
            return Ok(sent.len());
        };
        metrics::publish_failed();
        let failed = &claimed[index];
        let attempt = u32::try_from(failed.attempts).unwrap_or(0).saturating_add(1);
        let retry_at = now_ms() + millis(self.settings.backoff(attempt).min(RELAY_BACKOFF_MAX));
        self.mark_failed(&[failed.seq], retry_at, &error.to_string())
            .await?;
        let untried: Vec<i64> = claimed[index + 1..].iter().map(|row| row.seq).collect();
        self.release(&untried).await?;
        tracing::warn!(event_seq = failed.seq, attempt, %error, "publishing an event failed; it will be retried");
        if sent.is_empty() {
            Err(error)
        } else {
            Ok(sent.len())
        }
    }

    /// The writer connection, opened when missing.
    async fn writer(&mut self) -> Result<&mut Writer, BusError> {
        if self.writer.is_none() {
            self.writer = Some(Writer::open(&self.db).await?);
        }
        self.writer
            .as_mut()
            .ok_or_else(|| BusError::Broker("no outbox connection".to_owned()))
    }

    /// Run `work` on the writer; after an error the connection is replaced.
    async fn with_writer<T>(
        &mut self,
        work: impl for<'w> FnOnce(&'w mut Writer) -> crate::BoxFuture<'w, Result<T, BusError>>,
    ) -> Result<T, BusError> {
        // The writer is a connection of its own to the service's file: it takes its turn with
        // the service's transactions.
        let _turn = match &self.db {
            Db::Sqlite(pool) => Some(write_turn(pool).await),
            Db::Postgres(_) => None,
        };
        let outcome = work(self.writer().await?).await;
        if outcome.is_err() {
            self.writer = None;
        }
        outcome
    }

    async fn claim(&mut self) -> Result<Vec<Claimed>, BusError> {
        let now = now_ms();
        let lease_until = now + millis(self.settings.bus_ack_wait);
        let owner = self.owner.clone();
        let rows: Vec<(i64, String, i32)> = self
            .with_writer(|writer| {
                Box::pin(async move {
                    Ok(match writer {
                        Writer::Sqlite(conn) => {
                            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
                            let rows = sqlx::query_as(CLAIM_SQLITE)
                                .bind(&owner)
                                .bind(lease_until)
                                .bind(now)
                                .bind(BATCH)
                                .fetch_all(&mut *tx)
                                .await?;
                            tx.commit().await?;
                            rows
                        }
                        Writer::Postgres(conn) => {
                            let mut tx = conn.begin().await?;
                            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                                .bind(CLAIM_LOCK)
                                .execute(&mut *tx)
                                .await?;
                            let rows = sqlx::query_as(CLAIM_POSTGRES)
                                .bind(&owner)
                                .bind(lease_until)
                                .bind(now)
                                .bind(BATCH)
                                .fetch_all(&mut *tx)
                                .await?;
                            tx.commit().await?;
                            rows
                        }
                    })
                })
            })
            .await?;
        let mut rows: Vec<Claimed> = rows
            .into_iter()
            .map(|(seq, envelope, attempts)| Claimed {
                seq,
                envelope,
                attempts,
            })
            .collect();
        rows.sort_unstable_by_key(|row| row.seq);
        Ok(rows)
    }

    async fn mark_sent(&mut self, seqs: &[i64]) -> Result<(), BusError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let owner = self.owner.clone();
        let seqs_json = serde_json::to_string(seqs)?;
        let seqs = seqs.to_vec();
        self.with_writer(|writer| {
            Box::pin(async move {
                match writer {
                    Writer::Sqlite(conn) => {
                        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
                        sqlx::query(
                            "UPDATE outbox SET sent_at = $1, lease_owner = NULL, lease_until = 0
                             WHERE seq IN (SELECT value FROM json_each($2)) AND lease_owner = $3",
                        )
                        .bind(now)
                        .bind(seqs_json)
                        .bind(&owner)
                        .execute(&mut *tx)
                        .await?;
                        tx.commit().await?;
                    }
                    Writer::Postgres(conn) => {
                        sqlx::query(
                            "UPDATE outbox SET sent_at = $1, lease_owner = NULL, lease_until = 0
                             WHERE seq = ANY($2) AND lease_owner = $3",
                        )
                        .bind(now)
                        .bind(&seqs)
                        .bind(&owner)
                        .execute(conn)
                        .await?;
                    }
                }
                Ok(())
            })
        })
        .await
    }

    async fn mark_failed(&mut self, seqs: &[i64], retry_at: i64, error: &str) -> Result<(), BusError> {
        let error = error.to_owned();
        let owner = self.owner.clone();
        let seqs_json = serde_json::to_string(seqs)?;
        let seqs = seqs.to_vec();
        self.with_writer(|writer| {
            Box::pin(async move {
                match writer {
                    Writer::Sqlite(conn) => {
                        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
                        sqlx::query(
                            "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = $1, last_error = $2,
                                 lease_owner = NULL, lease_until = 0
                             WHERE seq IN (SELECT value FROM json_each($3)) AND lease_owner = $4",
                        )
                        .bind(retry_at)
                        .bind(&error)
                        .bind(seqs_json)
                        .bind(&owner)
                        .execute(&mut *tx)
                        .await?;
                        tx.commit().await?;
                    }
                    Writer::Postgres(conn) => {
                        sqlx::query(
                            "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = $1, last_error = $2,
                                 lease_owner = NULL, lease_until = 0
                             WHERE seq = ANY($3) AND lease_owner = $4",
                        )
                        .bind(retry_at)
                        .bind(&error)
                        .bind(&seqs)
                        .bind(&owner)
                        .execute(conn)
                        .await?;
                    }
                }
                Ok(())
            })
        })
        .await
    }

    /// Give up leases on rows this relay claimed but did not try, so any relay takes them next.
    async fn release(&mut self, seqs: &[i64]) -> Result<(), BusError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let owner = self.owner.clone();
        let seqs_json = serde_json::to_string(seqs)?;
        let seqs = seqs.to_vec();
        self.with_writer(|writer| {
            Box::pin(async move {
                match writer {
                    Writer::Sqlite(conn) => {
                        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
                        sqlx::query(
                            "UPDATE outbox SET lease_owner = NULL, lease_until = 0
                             WHERE seq IN (SELECT value FROM json_each($1)) AND lease_owner = $2",
                        )
                        .bind(seqs_json)
                        .bind(&owner)
                        .execute(&mut *tx)
                        .await?;
                        tx.commit().await?;
                    }
                    Writer::Postgres(conn) => {
                        sqlx::query(
                            "UPDATE outbox SET lease_owner = NULL, lease_until = 0
                             WHERE seq = ANY($1) AND lease_owner = $2",
                        )
                        .bind(&seqs)
                        .bind(&owner)
                        .execute(conn)
                        .await?;
                    }
                }
                Ok(())
            })
        })
        .await
    }

    /// Refresh the backlog gauges and forget rows sent longer ago than the retention (unless
    /// they are archived: then the archive removes them).
    async fn upkeep(&self) -> Result<(), BusError> {
        let now = now_ms();
        let cutoff = now - millis(self.settings.bus_retention);
        let (backlog, oldest) = backlog(&self.db).await?;
        metrics::outbox_backlog(backlog, oldest.map(|created| (now - created).max(0)));
        if self.settings.archive.archiving() {
            return Ok(());
        }
        match &self.db {
            Db::Sqlite(pool) => {
                let _turn = write_turn(pool).await;
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                sqlx::query("DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < $1")
                    .bind(cutoff)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            Db::Postgres(pool) => {
                sqlx::query("DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < $1")
                    .bind(cutoff)
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }
}

/// Unsent rows in a service's outbox, and when the oldest was written (ms since the epoch).
pub async fn backlog(db: &Db) -> Result<(u64, Option<i64>), BusError> {
    const QUERY: &str = "SELECT COUNT(*), MIN(created_at) FROM outbox WHERE sent_at IS NULL";
    let (count, oldest): (i64, Option<i64>) = match db {
        Db::Sqlite(pool) => sqlx::query_as(QUERY).fetch_one(pool).await?,
        Db::Postgres(pool) => sqlx::query_as(QUERY).fetch_one(pool).await?,
    };
    Ok((u64::try_from(count).unwrap_or_default(), oldest))
}
