//! Consuming: a subscriber's loop from its durable queue to its handler and back.
//!
//! For each delivery the handler runs in the subscriber's own database transaction, together
//! with the event id's insert into the inbox; the delivery is acknowledged only after that
//! transaction commits. An id already in the inbox is acknowledged without running the
//! handler. A failure rolls back and the event is retried after a doubling delay; at
//! `BUS_MAX_ATTEMPTS` it moves to the subscriber's dead-letter queue (`inbox`), and later
//! events keep flowing. On shutdown the loop stops pulling, finishes the handler in flight,
//! and hands back what it holds.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use dozen_kit::db::Db;
use dozen_kit::trace_context::{self, Handling};
use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::backend::{BoxFuture, Broker, Delivery, Queue, Settlement, millis, now_ms};
use crate::envelope::Envelope;
use crate::error::BusError;
use crate::inbox::{self, DeadLetter};
use crate::metrics;
use crate::settings::BusSettings;
use crate::tx::Tx;

/// Deliveries asked for at once.
const BATCH: usize = 32;
/// How often lag and dead-letter gauges are refreshed and the inbox trimmed.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// What a subscriber does with an event, inside its database transaction. It runs in a
/// savepoint of a transaction that may carry other events of the same batch, committed
/// together; an error (or a panic) rolls back this event's work only, and it is retried.
pub type Handler =
    Arc<dyn for<'a> Fn(&'a mut Tx, &'a Envelope) -> BoxFuture<'a, anyhow::Result<()>> + Send + Sync>;

/// Make a [`Handler`] from a closure returning a boxed future:
/// `handler(|tx, event| Box::pin(async move { ... }))`.
pub fn handler<F>(function: F) -> Handler
where
    F: for<'a> Fn(&'a mut Tx, &'a Envelope) -> BoxFuture<'a, anyhow::Result<()>> + Send + Sync + 'static,
{
    Arc::new(function)
}

/// A named subscriber: its durable queue on the broker, its handler, its database.
#[derive(Clone)]
pub struct Subscriber {
    /// The durable queue's name, and the inbox's and dead-letter queue's key.
    name: Arc<str>,
    topics: Vec<String>,
    handler: Handler,
    db: Db,
    broker: Arc<dyn Broker>,
    settings: BusSettings,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("name", &self.name)
            .field("topics", &self.topics)
            .finish()
    }
}

/// Run a savepoint statement on either backend (the same SQL on both).
async fn savepoint(tx: &mut Tx, sql: &'static str) -> Result<(), sqlx::Error> {
    dozen_kit::with_conn!(tx.conn(), conn => sqlx::raw_sql(sql).execute(conn).await.map(drop))
}

/// What became of one event of a batch inside the transaction.
#[derive(Debug)]
enum Step {
    /// Its handler ran and its savepoint was kept.
    Handled,
    /// Already in the inbox: its handler did not run.
    Duplicate,
    /// Its handler failed; its savepoint was rolled back.
    Failed(anyhow::Error),
    /// The whole transaction failed: try again.
    Retry,
    /// Stopping: not started, to be handed back.
    NotRun,
    /// Not started because an earlier event of its subject in the batch failed: handed back,
    /// so that it runs only after that one (the order of a subject's events holds).
    HeldBack,
}

/// How one delivery ended, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Handled,
    Duplicate,
    Retried,
    DeadLettered,
    HandedBack,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Handled => "handled",
            Self::Duplicate => "duplicate",
            Self::Retried => "retried",
            Self::DeadLettered => "dead_lettered",
            Self::HandedBack => "handed_back",
        }
    }
}

/// The broker's own dead-letter queue of a subscriber, opened at the first upkeep.
enum Redriven {
    NotOpened,
    /// The broker keeps none.
    None,
    Open(Box<dyn Queue>),
}

impl Subscriber {
    /// A subscriber `name` to `topics`, handling events with `handler` in `db`.
    pub fn new(
        name: &str,
        topics: &[&str],
        handler: Handler,
        db: Db,
        broker: Arc<dyn Broker>,
        settings: &BusSettings,
    ) -> Self {
        Self {
            name: name.into(),
            topics: topics.iter().map(|topic| (*topic).to_owned()).collect(),
            handler,
            db,
            broker,
            settings: settings.clone(),
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its topics.
    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    /// Create (or find) the durable queues; after this, events published are kept for it.
    pub async fn open(&self) -> Result<Vec<Box<dyn Queue>>, BusError> {
        self.broker.open(&self.name, &self.topics).await
    }

    /// Events in its queues not yet acknowledged.
    pub async fn pending(&self) -> Result<u64, BusError> {
        self.broker.pending(&self.name, &self.topics).await
    }

    /// Consume `queue` until `stop` is cancelled, then hand back what is held.
    pub async fn consume(self, mut queue: Box<dyn Queue>, stop: CancellationToken) {
        while !stop.is_cancelled() {
            let deliveries = match queue.receive(BATCH, &stop).await {
                Ok(deliveries) => deliveries,
                Err(error) => {
                    tracing::warn!(subscriber = %self.name, %error, "receiving from the bus failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                        () = stop.cancelled() => {}
                    }
                    continue;
                }
            };
            if deliveries.is_empty() {
                continue;
            }
            let settled = self
                .handle_batch(deliveries, &stop, queue.label(), queue.keeps_subject_order())
                .await;
            if let Err(error) = queue.settle(settled).await {
                // Unsettled deliveries come back after the ack wait; the inbox absorbs them.
                tracing::warn!(subscriber = %self.name, %error, "settling deliveries failed");
            }
        }
        queue.close().await;
    }

    /// Decide a batch of deliveries. Those that decode and are within their attempts are
    /// handled in one transaction of the subscriber's database, each in a savepoint of its
    /// own: one disk flush per batch, and a failing event rolls back only its own work.
    async fn handle_batch(
        &self,
        deliveries: Vec<Delivery>,
        stop: &CancellationToken,
        label: &str,
        keep_subject_order: bool,
    ) -> Vec<(Delivery, Settlement)> {
        let max = self.settings.bus_max_attempts;
        let mut settled = Vec::with_capacity(deliveries.len());
        let mut batch: Vec<(Delivery, Envelope, Handling)> = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            if stop.is_cancelled() {
                metrics::handled(
                    &self.name,
                    label,
                    Outcome::HandedBack.label(),
                    Duration::ZERO,
                    None,
                );
                settled.push((delivery, Settlement::Release));
                continue;
            }
            let envelope = match serde_json::from_str::<Envelope>(&delivery.payload) {
                Ok(envelope) => envelope,
                Err(error) => {
                    let letter =
                        self.letter_read_loosely(&delivery, format!("undecodable envelope: {error}"));
                    metrics::handled(
                        &self.name,
                        &letter.event_type,
                        Outcome::DeadLettered.label(),
                        Duration::ZERO,
                        None,
                    );
                    settled.push((delivery, self.bury(letter).await));
                    continue;
                }
            };
            if delivery.attempt > 1 {
                metrics::redelivered(&self.name);
            }
            // One trace follows the event from its publisher to here.
            let handling = Handling::start(
                tracing::info_span!(
                    "bus.handle",
                    subscriber = %self.name,
                    event_type = %envelope.event_type,
                    event_id = %envelope.id,
                    attempt = delivery.attempt,
                ),
                trace_context::extract_from_map(&envelope.trace),
            );
            if delivery.attempt > max {
                // Delivered past the limit without an outcome: its consumer kept dying on it.
                let error = format!(
                    "delivered {} times without an outcome (its consumer may crash on it)",
                    delivery.attempt
                );
                handling.in_scope(|| tracing::error!(%error, "dead-lettered"));
                let letter = self.letter(&envelope, &delivery, error);
                metrics::handled(
                    &self.name,
                    &envelope.event_type,
                    Outcome::DeadLettered.label(),
                    Duration::ZERO,
                    None,
                );
                settled.push((delivery, self.bury(letter).await));
                continue;
            }
            batch.push((delivery, envelope, handling));
        }
        if batch.is_empty() {
            return settled;
        }

        let steps = match self.run_handlers(&batch, stop, keep_subject_order).await {
            Ok(steps) => steps,
            Err(error) => {
                // Nothing of the batch was committed: all of it is retried.
                tracing::warn!(subscriber = %self.name, error = format!("{error:#}"), "the handlers' transaction failed; retrying");
                batch.iter().map(|_| (Step::Retry, Duration::ZERO)).collect()
            }
        };
        for ((delivery, envelope, handling), (step, took)) in batch.into_iter().zip(steps) {
            let (settlement, outcome) = match step {
                Step::Handled => (Settlement::Ack, Outcome::Handled),
                Step::Duplicate => {
                    handling
                        .in_scope(|| tracing::debug!("already in the inbox: acknowledged without handling"));
                    (Settlement::Ack, Outcome::Duplicate)
                }
                Step::NotRun | Step::HeldBack => (Settlement::Release, Outcome::HandedBack),
                Step::Retry => (
                    Settlement::Retry(self.settings.backoff(delivery.attempt)),
                    Outcome::Retried,
                ),
                Step::Failed(error) if delivery.attempt >= max => {
                    handling.in_scope(|| {
                        tracing::error!(
                            error = format!("{error:#}"),
                            "handler failed for the last time: dead-lettered"
                        )
                    });
                    let letter = self.letter(&envelope, &delivery, format!("{error:#}"));
                    (self.bury(letter).await, Outcome::DeadLettered)
                }
                Step::Failed(error) => {
                    let delay = self.settings.backoff(delivery.attempt);
                    handling.in_scope(|| {
                        tracing::warn!(
                            error = format!("{error:#}"),
                            retry_in_ms = delay.as_millis() as u64,
                            "handler failed; will retry"
                        )
                    });
                    (Settlement::Retry(delay), Outcome::Retried)
                }
            };
            metrics::handled(
                &self.name,
                &envelope.event_type,
                outcome.label(),
                took,
                Some(&handling),
            );
            settled.push((delivery, settlement));
        }
        settled
    }

    /// Run the handlers of a batch in one transaction; an error means nothing was committed.
    /// With `keep_subject_order`, events after a failed one of their subject are held back.
    async fn run_handlers(
        &self,
        batch: &[(Delivery, Envelope, Handling)],
        stop: &CancellationToken,
        keep_subject_order: bool,
    ) -> anyhow::Result<Vec<(Step, Duration)>> {
        let mut tx = Tx::begin(&self.db).await?;
        // A lone event needs no savepoint: if it fails, the transaction is rolled back whole.
        let alone = batch.len() == 1;
        let mut steps = Vec::with_capacity(batch.len());
        // Subjects with a failed event in this batch: their later events wait for its retry.
        let mut failed_subjects: Vec<&str> = Vec::new();
        for (_, envelope, handling) in batch {
            // Stop means: finish the handler in flight, start no other.
            if stop.is_cancelled() {
                steps.push((Step::NotRun, Duration::ZERO));
                continue;
            }
            if failed_subjects.contains(&envelope.subject.as_str()) {
                steps.push((Step::HeldBack, Duration::ZERO));
                continue;
            }
            let started = Instant::now();
            let step = handling.run(self.run_one(&mut tx, envelope, !alone)).await?;
            if keep_subject_order && matches!(step, Step::Failed(_)) {
                failed_subjects.push(&envelope.subject);
            }
            steps.push((step, started.elapsed()));
        }
        if alone && matches!(steps.first(), Some((Step::Failed(_), _))) {
            tx.rollback().await?;
        } else {
            tx.commit().await?;
        }
        Ok(steps)
    }

    /// One event, in its own savepoint when `isolated`: the inbox insert, then the handler.
    /// An error returned here is the transaction's (the batch fails); the handler's is in the
    /// step. Without isolation, a failed handler leaves the transaction to be rolled back.
    async fn run_one(&self, tx: &mut Tx, envelope: &Envelope, isolated: bool) -> anyhow::Result<Step> {
        if isolated {
            savepoint(tx, "SAVEPOINT bus_event").await?;
        }
        if !inbox::take(tx, &self.name, envelope.id).await? {
            if isolated {
                savepoint(tx, "RELEASE SAVEPOINT bus_event").await?;
            }
            return Ok(Step::Duplicate);
        }
        let outcome = AssertUnwindSafe((self.handler)(tx, envelope))
            .catch_unwind()
            .await;
        match outcome {
            Ok(Ok(())) => {
                if isolated {
                    savepoint(tx, "RELEASE SAVEPOINT bus_event").await?;
                }
                Ok(Step::Handled)
            }
            failed => {
                if isolated {
                    savepoint(tx, "ROLLBACK TO SAVEPOINT bus_event").await?;
                    savepoint(tx, "RELEASE SAVEPOINT bus_event").await?;
                }
                let error = match failed {
                    Ok(Err(error)) => error,
                    _ => anyhow!("the handler panicked"),
                };
                Ok(Step::Failed(error))
            }
        }
    }

    fn letter(&self, envelope: &Envelope, delivery: &Delivery, error: String) -> DeadLetter {
        DeadLetter {
            subscriber: self.name.to_string(),
            event_id: envelope.id,
            event_type: envelope.event_type.clone(),
            envelope: delivery.payload.clone(),
            attempts: delivery.attempt,
            error,
            failed_at: chrono::Utc::now(),
            replay_requested: false,
        }
    }

    /// A dead letter for a delivery that may not decode, its id and type read where they are.
    fn letter_read_loosely(&self, delivery: &Delivery, error: String) -> DeadLetter {
        // Keep the id when there is one, so that redeliveries find the same dead letter.
        let loose: serde_json::Value = serde_json::from_str(&delivery.payload).unwrap_or_default();
        let event_id = loose
            .get("id")
            .and_then(|id| id.as_str())
            .and_then(|id| Uuid::parse_str(id).ok())
            .unwrap_or_else(Uuid::new_v4);
        let event_type = loose
            .get("type")
            .and_then(|t| t.as_str())
            .unwrap_or("unknown")
            .to_owned();
        DeadLetter {
            subscriber: self.name.to_string(),
            event_id,
            event_type,
            envelope: delivery.payload.clone(),
            attempts: delivery.attempt,
            error,
            failed_at: chrono::Utc::now(),
            replay_requested: false,
        }
    }

    /// Store a dead letter, then acknowledge; if it cannot be stored, retry the delivery.
    async fn bury(&self, letter: DeadLetter) -> Settlement {
        match inbox::bury(&self.db, &letter).await {
            Ok(()) => {
                metrics::dead_lettered(&self.name);
                Settlement::Ack
            }
            Err(error) => {
                tracing::error!(%error, "cannot store a dead letter; the event will be retried");
                Settlement::Retry(self.settings.backoff(letter.attempts))
            }
        }
    }

    /// Replay dead letters marked by [`crate::replay`], refresh gauges, trim the inbox and take
    /// in what the broker's own redrive gave up on, until `stop` is cancelled.
    pub async fn maintain(self, stop: CancellationToken) {
        // The first round comes a poll interval after start, not amid start-up's queries
        // (each query running at the same time as others opens a pooled connection of its own).
        let mut upkeep_due = Instant::now() + UPKEEP_INTERVAL;
        let mut redriven = Redriven::NotOpened;
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.settings.bus_poll_interval) => {}
                () = stop.cancelled() => return,
            }
            if let Err(error) = self.replay_marked().await {
                tracing::warn!(subscriber = %self.name, %error, "replaying dead letters failed");
            }
            if upkeep_due <= Instant::now() {
                upkeep_due = Instant::now() + UPKEEP_INTERVAL;
                if let Err(error) = self.take_in_redriven(&mut redriven, &stop).await {
                    tracing::warn!(subscriber = %self.name, %error, "taking in the broker's dead letters failed");
                }
                if let Err(error) = self.upkeep().await {
                    tracing::warn!(subscriber = %self.name, %error, "subscriber upkeep failed");
                }
            }
        }
    }

    /// Run the handler once more for each dead letter marked for replay; the dead letter is
    /// removed in the handler's transaction, or stays (attempts counted) when it fails again.
    pub async fn replay_marked(&self) -> Result<usize, BusError> {
        let mut replayed = 0;
        for letter in inbox::replay_requested(&self.db, &self.name).await? {
            let outcome = async {
                let envelope: Envelope = serde_json::from_str(&letter.envelope)?;
                let mut tx = Tx::begin(&self.db).await?;
                if !inbox::unbury(&mut tx, &self.name, letter.event_id).await? {
                    return anyhow::Ok(false);
                }
                let handling = Handling::start(
                    tracing::info_span!(
                        "bus.replay",
                        subscriber = %self.name,
                        event_type = %envelope.event_type,
                        event_id = %envelope.id,
                    ),
                    trace_context::extract_from_map(&envelope.trace),
                );
                handling
                    .run(AssertUnwindSafe((self.handler)(&mut tx, &envelope)).catch_unwind())
                    .await
                    .map_err(|_| anyhow!("the handler panicked"))??;
                tx.commit().await?;
                Ok(true)
            }
            .await;
            match outcome {
                Ok(true) => {
                    replayed += 1;
                    metrics::handled(&self.name, &letter.event_type, "replayed", Duration::ZERO, None);
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(event_id = %letter.event_id, error = format!("{error:#}"), "replay failed; the event stays dead-lettered");
                    let again = DeadLetter {
                        attempts: letter.attempts + 1,
                        error: format!("{error:#}"),
                        failed_at: chrono::Utc::now(),
                        ..letter
                    };
                    inbox::bury(&self.db, &again).await?;
                }
            }
        }
        Ok(replayed)
    }

    /// Move what the broker's redrive put aside (see [`Broker::open_redriven`]) into this
    /// subscriber's dead letters, where `dead-letters` lists it and `replay` delivers it; each
    /// is removed from the broker only once stored. An event the inbox shows handled is only
    /// removed.
    async fn take_in_redriven(
        &self,
        redriven: &mut Redriven,
        stop: &CancellationToken,
    ) -> Result<(), BusError> {
        if matches!(redriven, Redriven::NotOpened) {
            *redriven = match self.broker.open_redriven(&self.name).await? {
                Some(queue) => Redriven::Open(queue),
                None => Redriven::None,
            };
        }
        let Redriven::Open(queue) = redriven else {
            return Ok(());
        };
        loop {
            let deliveries = queue.receive(BATCH, stop).await?;
            let drained = deliveries.len() < BATCH;
            let mut settled = Vec::with_capacity(deliveries.len());
            for delivery in deliveries {
                let letter = self.letter_read_loosely(
                    &delivery,
                    format!(
                        "the broker's redrive gave up on it after {} receives (its consumer stopped before settling it)",
                        delivery.attempt
                    ),
                );
                let settlement = self.bury(letter).await;
                settled.push((delivery, settlement));
            }
            queue.settle(settled).await?;
            if drained || stop.is_cancelled() {
                return Ok(());
            }
        }
    }

    async fn upkeep(&self) -> Result<(), BusError> {
        metrics::dead_letters_waiting(&self.name, inbox::count(&self.db, &self.name).await?);
        metrics::consumer_lag(&self.name, self.pending().await?);
        if self.settings.archive.archiving() {
            return Ok(());
        }
        inbox::forget(
            &self.db,
            &self.name,
            now_ms() - millis(self.settings.bus_retention),
        )
        .await
    }
}
