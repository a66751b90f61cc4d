//! The event bus: how dozen's services tell each other what happened, without losing an
//! event and without any event having two effects.
//!
//! Read top-down:
//! - [`envelope`]: the CloudEvents-style envelope every event travels in.
//! - [`contracts`]: every event type, its payload, version and topic, in one place; the
//!   AsyncAPI document is generated from it.
//! - [`tx`]: the transaction on the service's own database both sides write in (the kit's
//!   `Tx`, re-exported).
//! - [`outbox`]: publishing inside that transaction, and the relay to the broker.
//! - [`inbox`]: the subscriber's inbox and dead-letter queue, with listing and replay.
//! - [`erasure`]: forgetting a deleted user's events in those tables.
//! - [`handlers`]: a subscriber's typed handlers, one function per event type.
//! - [`subscriber`]: the consume loop: inbox, handler, ack after commit, retries with
//!   backoff, dead letters, graceful hand-back.
//! - [`backend`]: the brokers, chosen by `BUS_URL`: [`backend::embedded`] (a SQLite file
//!   shared by the processes on one host), [`backend::nats`] (JetStream) and `backend::sns_sqs`
//!   (SNS topics fanning out to SQS queues; the `sns-sqs` feature).
//! - [`settings`] and [`metrics`].
//!
//! A service uses it through [`Bus`]:
//! ```ignore
//! // in the service's events.rs, one named function per event type:
//! async fn on_signed_up(tx: &mut Tx, event: UserSignedUp) -> anyhow::Result<()> {
//!     /* write to tx.conn() */
//!     Ok(())
//! }
//! pub fn handlers() -> EventHandlers<()> { EventHandlers::new(()).on(on_signed_up) }
//! // in its start:
//! let mut bus = Bus::connect(&settings.bus, "verification", db.clone()).await?;
//! bus.handle("verification", events::handlers());
//! let outbox = bus.outbox().clone();
//! bus.serve(&context.lifecycle, &mut context.readiness).await?; // start, and check in /readyz
//! // later, in a request:
//! let mut tx = Tx::begin(&db).await?;
//! /* the state change, on tx.conn() */
//! outbox.publish(&mut tx, &UserEmailVerified { .. }).await?;
//! tx.commit().await?;
//! ```
//! The bus's tables live in the service's database: list [`MIGRATIONS`] next to the
//! service's own and the kit's `figures::MIGRATIONS` (a new dead letter counts in the day's
//! figures).
//!
//! Guarantees, on every backend:
//! - an event is published if and only if the transaction that wrote it commits;
//! - every subscriber gets every event published after its queue was created (fan-out), and
//!   its instances share that queue (competing consumers);
//! - delivery is at least once, and the inbox makes the effect exactly once: a handler's
//!   writes and the event id commit together, and a redelivery finds the id;
//! - a failing event is retried with doubling delays, then moved to the subscriber's
//!   dead-letter queue in its own database, from where [`replay`] sends it to that subscriber
//!   again; other events keep flowing meanwhile;
//! - one subject's events reach each subscriber in publish order on the embedded bus; on NATS
//!   only without retries or competing instances (see [`backend::nats`]); on SNS/SQS in any
//!   order (standard queues).

pub mod admin;
pub mod archive;
pub mod backend;
pub mod contracts;
pub mod envelope;
pub mod erasure;
pub mod error;
pub mod handlers;
pub mod inbox;
pub mod metrics;
pub mod outbox;
pub mod settings;
pub mod subscriber;
pub mod tx;

use std::borrow::Cow;
use std::sync::Arc;

use dozen_kit::db::{Db, Migrations};
use dozen_kit::http::server::Readiness;
use dozen_kit::lifecycle::Lifecycle;
use sqlx::migrate::Migrator;

pub use backend::{BoxFuture, Broker};
pub use contracts::Event;
pub use envelope::Envelope;
pub use error::BusError;
pub use handlers::EventHandlers;
pub use inbox::{DeadLetter, dead_letters, replay};
pub use outbox::{Outbox, Relay};
pub use settings::{BusSettings, BusUrl};
pub use subscriber::{Handler, Subscriber, handler};
pub use tx::{Tx, TxConn};

/// The bus's tables in a service's database (outbox, inbox, dead letters), tracked in
/// `_bus_migrations`, apart from the service's own.
pub static MIGRATIONS: Migrations = Migrations {
    sqlite: Migrator {
        table_name: Cow::Borrowed("_bus_migrations"),
        ..sqlx::migrate!("migrations/sqlite")
    },
    postgres: Migrator {
        table_name: Cow::Borrowed("_bus_migrations"),
        ..sqlx::migrate!("migrations/postgres")
    },
};

/// One service's connection to the bus: its outbox and relay, and its subscribers.
#[derive(Debug)]
pub struct Bus {
    broker: Arc<dyn Broker>,
    db: Db,
    outbox: Outbox,
    settings: BusSettings,
    subscribers: Vec<Subscriber>,
    /// The service, to find the event types it publishes.
    service: String,
}

impl Bus {
    /// Connect service `service` (whose database is `db`) to the broker named by `BUS_URL`.
    pub async fn connect(settings: &BusSettings, service: &str, db: Db) -> Result<Self, BusError> {
        let broker = backend::connect(settings).await?;
        tracing::info!(backend = broker.backend(), "connected to the bus");
        Ok(Self::with_broker(broker, settings, service, db))
    }

    /// The same, with a broker already connected.
    pub fn with_broker(broker: Arc<dyn Broker>, settings: &BusSettings, service: &str, db: Db) -> Self {
        metrics::describe();
        Self {
            broker,
            db,
            outbox: Outbox::new(service),
            settings: settings.clone(),
            subscribers: Vec::new(),
            service: service.to_owned(),
        }
    }

    /// Where the service publishes.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// The broker.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    /// Handle `topics` as subscriber `name` (its durable queue), from [`Bus::start`] on.
    pub fn subscribe(&mut self, name: &str, topics: &[&str], handler: Handler) -> &Subscriber {
        let subscriber = Subscriber::new(
            name,
            topics,
            handler,
            self.db.clone(),
            self.broker.clone(),
            &self.settings,
        );
        self.subscribers.push(subscriber);
        let last = self.subscribers.len() - 1;
        &self.subscribers[last]
    }

    /// Handle the events `handlers` has functions for, as subscriber `name` (its durable
    /// queue), from [`Bus::start`] on.
    pub fn handle<S: Send + Sync + 'static>(
        &mut self,
        name: &str,
        handlers: EventHandlers<S>,
    ) -> &Subscriber {
        let topics = handlers.topics();
        self.subscribe(name, &topics, handlers.into_handler())
    }

    /// Check the topics the service publishes (a look-up-only broker stops here on a
    /// missing one), open every subscriber's queues (failing fast if the broker refuses), then
    /// run the relay, the consumers and their upkeep as background tasks of `lifecycle`: they
    /// stop when it stops, handing back unfinished events.
    pub async fn start(&mut self, lifecycle: &Lifecycle) -> Result<(), BusError> {
        let published: Vec<String> = contracts::all()
            .into_iter()
            .filter(|contract| contract.publisher == self.service)
            .map(|contract| contract.event_type.to_owned())
            .collect();
        self.broker.prepare_publishing(&published).await?;
        let relay = Relay::new(self.db.clone(), self.broker.clone(), &self.outbox, &self.settings);
        lifecycle.spawn(relay.run(lifecycle.stopping()));
        for subscriber in self.subscribers.drain(..) {
            for queue in subscriber.open().await? {
                lifecycle.spawn(subscriber.clone().consume(queue, lifecycle.stopping()));
            }
            lifecycle.spawn(subscriber.maintain(lifecycle.stopping()));
        }
        Ok(())
    }

    /// What every serving service does: [`Bus::start`], and make `/readyz` check that the
    /// broker answers.
    pub async fn serve(&mut self, lifecycle: &Lifecycle, readiness: &mut Readiness) -> Result<(), BusError> {
        self.start(lifecycle).await?;
        readiness.add("bus", self.readiness_check());
        Ok(())
    }

    /// A readiness check for `Readiness::add("bus", …)`: the broker answers.
    pub fn readiness_check(
        &self,
    ) -> impl Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync + 'static + use<> {
        let broker = self.broker.clone();
        move || {
            let broker = broker.clone();
            Box::pin(async move { broker.ping().await.map_err(|e| e.to_string()) })
        }
    }
}
