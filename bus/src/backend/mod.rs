//! Brokers: where published events go and where each subscriber's durable queue lives. Chosen
//! by `BUS_URL` at start-up; services never name one.
//!
//! - [`embedded`]: a SQLite file shared by the processes on one host (the default).
//! - [`nats`]: NATS JetStream.
//! - `sns_sqs`: Amazon SNS topics fanning out to SQS queues (the `sns-sqs` feature).
//!
//! A broker only moves envelopes; retries, dead letters and deduplication are decided above it
//! (`subscriber`), the same for every broker.

pub mod embedded;
pub mod nats;
#[cfg(feature = "sns-sqs")]
pub mod sns_sqs;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::envelope::Envelope;
use crate::error::BusError;
use crate::settings::{BusSettings, BusUrl};

/// A boxed future, so that brokers can sit behind `dyn Broker`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where events are published and queued.
pub trait Broker: Send + Sync + std::fmt::Debug {
    /// Store `events` durably, in order, and fan each out to every subscriber of its topic.
    /// Publishing an event id twice may deliver it twice; inboxes absorb that.
    fn publish<'a>(&'a self, events: &'a [Envelope]) -> BoxFuture<'a, Result<(), BusError>>;

    /// Create (or find) `subscriber`'s durable queue for `topics`, and open it for consuming.
    /// Some brokers keep one queue per topic, hence several.
    fn open<'a>(
        &'a self,
        subscriber: &'a str,
        topics: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Box<dyn Queue>>, BusError>>;

    /// Events in `subscriber`'s queue for `topics` not yet acknowledged (waiting or in flight).
    fn pending<'a>(
        &'a self,
        subscriber: &'a str,
        topics: &'a [String],
    ) -> BoxFuture<'a, Result<u64, BusError>>;

    /// Check, before the service serves, that the topics of `event_types` (those it
    /// publishes) can be published to. Only a broker that looks its topics up rather than
    /// making them (SNS/SQS with `BUS_PROVISION=false`) has anything to check: elsewhere a
    /// topic is made on first use, or needs nothing.
    fn prepare_publishing<'a>(&'a self, event_types: &'a [String]) -> BoxFuture<'a, Result<(), BusError>> {
        let _ = event_types;
        Box::pin(async { Ok(()) })
    }

    /// The queue where the broker itself puts `subscriber`'s events it gave up on (SQS's
    /// redrive: a consumer that kept dying before settling one), opened for draining with
    /// receives that do not wait; `None` where the broker keeps no such queue.
    fn open_redriven<'a>(
        &'a self,
        subscriber: &'a str,
    ) -> BoxFuture<'a, Result<Option<Box<dyn Queue>>, BusError>> {
        let _ = subscriber;
        Box::pin(async { Ok(None) })
    }

    /// A cheap round trip, for readiness.
    fn ping(&self) -> BoxFuture<'_, Result<(), BusError>>;

    /// The backend's name, for logs and metrics.
    fn backend(&self) -> &'static str;
}

/// A subscriber's durable queue, opened by one consumer.
pub trait Queue: Send + std::fmt::Debug {
    /// Wait until at least one event is available (returning up to `max`), or until `stop`
    /// is cancelled (returning none). Each returned event is held by this consumer until
    /// settled, or until the ack wait passes.
    fn receive<'a>(
        &'a mut self,
        max: usize,
        stop: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Vec<Delivery>, BusError>>;

    /// Settle handled events: acknowledge, retry later, or hand back.
    fn settle(&mut self, settled: Vec<(Delivery, Settlement)>) -> BoxFuture<'_, Result<(), BusError>>;

    /// Hand back everything received but not yet handed out (on shutdown).
    fn close(&mut self) -> BoxFuture<'_, ()>;

    /// What this queue carries, for metrics (a topic, or `*` for all the subscriber's).
    fn label(&self) -> &str;

    /// Whether this queue hands out each subject's events in publish order, several to a batch
    /// (the embedded bus): the consumer then runs none of a batch after one of its subject
    /// failed, and hands them back, so that they follow the failed one's retry.
    fn keeps_subject_order(&self) -> bool {
        false
    }
}

/// One event delivered to a consumer.
#[derive(Debug)]
pub struct Delivery {
    /// The envelope as published: JSON, decoded by the consumer (a payload that does not
    /// decode is dead-lettered rather than lost).
    pub payload: String,
    /// Which delivery of this event to this subscriber this is, from 1.
    pub attempt: u32,
    /// What the broker needs to settle it.
    pub(crate) receipt: Receipt,
}

/// A broker's handle on a delivery.
pub(crate) enum Receipt {
    /// The row in the embedded bus, and the lease under which it was claimed.
    Embedded { seq: i64, lease: Arc<str> },
    /// The JetStream message (its reply subject acknowledges it).
    Nats(Box<async_nats::jetstream::Message>),
    /// The SQS receipt handle.
    #[cfg(feature = "sns-sqs")]
    Sqs(String),
}

impl std::fmt::Debug for Receipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Embedded { seq, .. } => write!(f, "Embedded({seq})"),
            Self::Nats(message) => write!(f, "Nats({})", message.subject),
            #[cfg(feature = "sns-sqs")]
            Self::Sqs(_) => write!(f, "Sqs"),
        }
    }
}

/// What becomes of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Done (handled, a duplicate, or dead-lettered): remove it from the queue.
    Ack,
    /// Failed: deliver it again after this delay.
    Retry(Duration),
    /// Not handled (shutting down): hand it back at once, the attempt not counted where the
    /// broker allows it.
    Release,
}

/// Connect the broker named by `settings.bus_url`.
pub async fn connect(settings: &BusSettings) -> Result<Arc<dyn Broker>, BusError> {
    // Only the SNS/SQS backend can run without making what it uses: refuse the setting
    // elsewhere rather than let it promise what it does not do.
    if !settings.bus_provision && !matches!(settings.bus_url, BusUrl::SnsSqs(_)) {
        return Err(BusError::Broker(format!(
            "BUS_PROVISION=false is for an sns+sqs:// BUS_URL only (this one is {}): unset it",
            settings.bus_url.backend()
        )));
    }
    Ok(match &settings.bus_url {
        BusUrl::Embedded(url) => Arc::new(embedded::EmbeddedBus::open(url, settings).await?),
        BusUrl::Nats(url) => Arc::new(nats::NatsBus::connect(url, settings).await?),
        #[cfg(feature = "sns-sqs")]
        BusUrl::SnsSqs(url) => Arc::new(sns_sqs::SnsSqsBus::connect(url, settings).await?),
        #[cfg(not(feature = "sns-sqs"))]
        BusUrl::SnsSqs(_) => {
            return Err(BusError::Broker(
                "this build has no SNS/SQS backend (the dozen-bus/sns-sqs feature)".to_owned(),
            ));
        }
    })
}

/// Names the bus uses on brokers (queues, consumers) must be plain.
pub(crate) fn check_name(kind: &str, name: &str) -> Result<(), BusError> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if valid {
        Ok(())
    } else {
        Err(BusError::Broker(format!(
            "invalid {kind} name {name:?}: use 1 to 64 letters, digits, '_' or '-'"
        )))
    }
}

/// Milliseconds since the Unix epoch: the bus's clock, in every table.
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub(crate) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}
