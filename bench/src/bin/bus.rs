//! Bus benchmark: for each broker (the embedded SQLite bus, NATS JetStream), events per
//! second through the outbox relay and through a subscriber, and the publish→handled latency
//! (from the commit of the publishing transaction to the handler running in the subscriber's
//! transaction) at p50 and p99 — next to a raw async-nats JetStream publish→consume loop
//! measured in the same run. The publishing commit itself (the service's own write, which
//! happens with or without the bus) is reported on its own line. It prints figures; it asserts
//! nothing.
//!
//! Run: `cargo run --release -p dozen-bench --bin bus` (optionally `-- <events> <samples>`,
//! default 20000 and 2000). NATS is `BENCH_NATS_URL`, default `nats://127.0.0.1:4222`.
//! Databases are SQLite files in a temporary folder (synchronous=FULL, as in production).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream;
use dozen_bus::backend::{BoxFuture, Queue};
use dozen_bus::contracts::UserSignedUp;
use dozen_bus::{
    Broker, Bus, BusError, BusSettings, BusUrl, Envelope, Event, Relay, Subscriber, Tx, TxConn, handler,
};
use dozen_kit::db::{DatabaseUrl, Db};
use dozen_kit::lifecycle::Lifecycle;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use uuid::Uuid;

/// Latency samples discarded first (connections, statement caches, JIT-free but cold).
const WARMUP: usize = 100;

struct Figures {
    relay_per_second: f64,
    handled_per_second: f64,
    latencies: Vec<Duration>,
    /// How long the publishing transaction's commit took.
    commits: Vec<Duration>,
    /// The latency's first leg: from the commit until the relay hands the event to the broker.
    relay_legs: Vec<Duration>,
}

/// A broker that notes when the relay hands it each event, to split the latency in two.
#[derive(Debug)]
struct Timed {
    inner: Arc<dyn Broker>,
    handed: Arc<Mutex<HashMap<Uuid, Instant>>>,
}

impl Broker for Timed {
    fn publish<'a>(&'a self, events: &'a [Envelope]) -> BoxFuture<'a, Result<(), BusError>> {
        if let Ok(mut handed) = self.handed.lock() {
            let now = Instant::now();
            handed.extend(events.iter().map(|event| (event.id, now)));
        }
        self.inner.publish(events)
    }

    fn open<'a>(
        &'a self,
        subscriber: &'a str,
        topics: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Box<dyn Queue>>, BusError>> {
        self.inner.open(subscriber, topics)
    }

    fn pending<'a>(
        &'a self,
        subscriber: &'a str,
        topics: &'a [String],
    ) -> BoxFuture<'a, Result<u64, BusError>> {
        self.inner.pending(subscriber, topics)
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), BusError>> {
        self.inner.ping()
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
}

/// One async thread, as a service runs by default (`WORKER_THREADS=1`); the raw NATS loop runs
/// on the same runtime.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let events: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(20_000);
    let samples: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(2_000);
    let nats_url = std::env::var("BENCH_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let folder = tempfile::tempdir()?;
    let cores = std::thread::available_parallelism().map_or(0, usize::from);

    println!(
        "event bus: {events} events for throughput, {samples} sequential events for latency; release build, {cores} cores, load average {}",
        load_average()
    );
    println!(
        "{:<16} {:>12} {:>13} {:>8} {:>8} {:>8}",
        "broker", "relay ev/s", "handled ev/s", "p50 ms", "p99 ms", "max ms"
    );
    let embedded = BusUrl::Embedded(format!("sqlite://{}", folder.path().join("bus.db").display()));
    let embedded = measure_bus(embedded, folder.path(), "embedded", events, samples).await?;
    print_row("embedded", &embedded);
    let nats = measure_bus(
        BusUrl::Nats(nats_url.clone()),
        folder.path(),
        "nats",
        events,
        samples,
    )
    .await?;
    print_row("nats", &nats);
    let (raw_rate, raw_latencies) = measure_raw_nats(&nats_url, events, samples).await?;
    print_row(
        "raw jetstream",
        &Figures {
            relay_per_second: raw_rate,
            handled_per_second: f64::NAN,
            latencies: raw_latencies,
            commits: Vec::new(),
            relay_legs: Vec::new(),
        },
    );
    for (name, figures) in [("embedded", &embedded), ("nats", &nats)] {
        let mut relay = figures.relay_legs.clone();
        relay.sort_unstable();
        let mut rest: Vec<Duration> = figures
            .latencies
            .iter()
            .zip(&figures.relay_legs)
            .map(|(total, relay)| total.saturating_sub(*relay))
            .collect();
        rest.sort_unstable();
        println!(
            "{name}: commit to relay handing it to the broker p50 {:.2} ms, p99 {:.2} ms; from there to the handler p50 {:.2} ms, p99 {:.2} ms",
            quantile(&relay, 0.50),
            quantile(&relay, 0.99),
            quantile(&rest, 0.50),
            quantile(&rest, 0.99)
        );
    }
    let mut commits = embedded.commits;
    commits.extend(nats.commits);
    commits.sort_unstable();
    println!(
        "latency: from the publishing commit to the handler; that commit (SQLite, synchronous=FULL) took p50 {:.2} ms, p99 {:.2} ms",
        quantile(&commits, 0.50),
        quantile(&commits, 0.99)
    );
    println!(
        "raw jetstream: publish ev/s with acks awaited in batches of 500; latency = publish, await its ack, pull"
    );
    Ok(())
}

/// The machine's 1-minute load average, as the kernel reports it.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The `q` quantile of sorted durations, in milliseconds.
fn quantile(sorted: &[Duration], q: f64) -> f64 {
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
    sorted.get(index).map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

fn print_row(name: &str, figures: &Figures) {
    let mut sorted = figures.latencies.clone();
    sorted.sort_unstable();
    let at = |q: f64| quantile(&sorted, q);
    let rate = |r: f64| {
        if r.is_nan() {
            "-".to_owned()
        } else {
            format!("{r:.0}")
        }
    };
    println!(
        "{:<16} {:>12} {:>13} {:>8.2} {:>8.2} {:>8.2}",
        name,
        rate(figures.relay_per_second),
        rate(figures.handled_per_second),
        at(0.50),
        at(0.99),
        at(1.0)
    );
}

async fn database(folder: &std::path::Path, name: &str) -> anyhow::Result<Db> {
    let url = DatabaseUrl::parse(&format!(
        "sqlite://{}",
        folder.join(format!("{name}.db")).display()
    ))
    .map_err(anyhow::Error::msg)?;
    let db = Db::connect(&url, 8).await?;
    db.migrate(&[&dozen_bus::MIGRATIONS, &dozen_kit::figures::MIGRATIONS])
        .await?;
    if let Db::Sqlite(pool) = &db {
        sqlx::query("CREATE TABLE IF NOT EXISTS effects (event_id TEXT PRIMARY KEY)")
            .execute(pool)
            .await?;
    }
    Ok(db)
}

fn signup(n: usize) -> UserSignedUp {
    UserSignedUp {
        user_id: Uuid::now_v7(),
        email: format!("bench{n}@example.test"),
        display_name: format!("Bench user {n}"),
        interests: vec!["climbing".to_owned(), "chess".to_owned()],
        replaces: None,
    }
}

async fn measure_bus(
    url: BusUrl,
    folder: &std::path::Path,
    name: &str,
    events: usize,
    samples: usize,
) -> anyhow::Result<Figures> {
    let mut settings = BusSettings::new(url);
    settings.bus_namespace = format!("bench{}", &Uuid::new_v4().simple().to_string()[..8]);
    let publisher = database(folder, &format!("{name}-signup")).await?;
    let consumer = database(folder, &format!("{name}-verification")).await?;
    let bus = Bus::connect(&settings, "signup", publisher.clone()).await?;
    let broker = bus.broker().clone();

    let handled = Arc::new(AtomicUsize::new(0));
    let (sender, mut receiver) = mpsc::unbounded_channel::<(Uuid, Instant)>();
    let on_event = {
        let handled = handled.clone();
        handler(move |tx, event| {
            let (handled, sender) = (handled.clone(), sender.clone());
            Box::pin(async move {
                if let TxConn::Sqlite(conn) = tx.conn() {
                    sqlx::query("INSERT INTO effects (event_id) VALUES ($1)")
                        .bind(event.id.to_string())
                        .execute(conn)
                        .await?;
                }
                handled.fetch_add(1, Ordering::SeqCst);
                let _ = sender.send((event.id, Instant::now()));
                Ok(())
            })
        })
    };
    let lifecycle = Lifecycle::new();
    let subscriber = Subscriber::new(
        "verification",
        &[UserSignedUp::TYPE],
        on_event,
        consumer.clone(),
        broker.clone(),
        &settings,
    );
    for queue in subscriber.open().await? {
        lifecycle.spawn(subscriber.clone().consume(queue, lifecycle.stopping()));
    }
    let outbox = bus.outbox().clone();
    let handed = Arc::new(Mutex::new(HashMap::new()));
    let timed: Arc<dyn Broker> = Arc::new(Timed {
        inner: broker.clone(),
        handed: handed.clone(),
    });
    lifecycle.spawn(Relay::new(publisher.clone(), timed, &outbox, &settings).run(lifecycle.stopping()));

    // Latency: one event at a time, each waited for.
    let mut latencies = Vec::with_capacity(samples);
    let mut commits = Vec::with_capacity(samples);
    let mut relay_legs = Vec::with_capacity(samples);
    for n in 0..WARMUP + samples {
        let mut tx = Tx::begin(&publisher).await?;
        let envelope = outbox.publish(&mut tx, &signup(n)).await?;
        let committing = Instant::now();
        tx.commit().await?;
        let started = Instant::now();
        let arrived = loop {
            let (id, at) = tokio::time::timeout(Duration::from_secs(30), receiver.recv())
                .await
                .context("an event was not handled within 30 s")?
                .context("the handler is gone")?;
            if id == envelope.id {
                break at;
            }
        };
        if n >= WARMUP {
            latencies.push(arrived - started);
            commits.push(started - committing);
            let handed_at = handed
                .lock()
                .ok()
                .and_then(|handed| handed.get(&envelope.id).copied());
            relay_legs.push(handed_at.map_or(Duration::ZERO, |at| at.saturating_duration_since(started)));
        }
        // The next event leaves once this one is committed and acknowledged, so that each
        // sample is one event's path, not a wait behind the previous one's commit.
        while subscriber.pending().await? > 0 {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }

    // Throughput: publish in transactions of 500, time until relayed and until handled.
    let before = handled.load(Ordering::SeqCst);
    let started = Instant::now();
    let mut published = 0;
    while published < events {
        let mut tx = Tx::begin(&publisher).await?;
        for n in published..(published + 500).min(events) {
            outbox.publish(&mut tx, &signup(n)).await?;
        }
        tx.commit().await?;
        published = (published + 500).min(events);
    }
    let mut relayed_after = None;
    let handled_after = loop {
        if relayed_after.is_none() && dozen_bus::outbox::backlog(&publisher).await?.0 == 0 {
            relayed_after = Some(started.elapsed());
        }
        if handled.load(Ordering::SeqCst) - before >= events {
            break started.elapsed();
        }
        while receiver.try_recv().is_ok() {}
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let relayed_after = relayed_after.unwrap_or(handled_after);

    lifecycle.stop();
    lifecycle.tasks_finished().await;
    if let BusUrl::Nats(url) = &settings.bus_url {
        delete_streams(url, &settings.bus_namespace).await?;
    }
    Ok(Figures {
        relay_per_second: events as f64 / relayed_after.as_secs_f64(),
        handled_per_second: events as f64 / handled_after.as_secs_f64(),
        latencies,
        commits,
        relay_legs,
    })
}

async fn delete_streams(url: &str, namespace: &str) -> anyhow::Result<()> {
    let jetstream = jetstream::new(async_nats::connect(url).await?);
    let names: Vec<String> = jetstream
        .stream_names()
        .filter_map(|name| async move { name.ok() })
        .collect()
        .await;
    for name in names
        .iter()
        .filter(|name| name.starts_with(&format!("{namespace}_")))
    {
        jetstream.delete_stream(name).await?;
    }
    Ok(())
}

/// The same work with async-nats alone: a stream, a durable pull consumer, explicit acks.
async fn measure_raw_nats(url: &str, events: usize, samples: usize) -> anyhow::Result<(f64, Vec<Duration>)> {
    let jetstream = jetstream::new(async_nats::connect(url).await?);
    let name = format!("benchraw{}", &Uuid::new_v4().simple().to_string()[..8]);
    let subject = format!("{name}.events");
    let stream = jetstream
        .create_stream(jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            ..Default::default()
        })
        .await?;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("raw".to_owned()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.stream().max_messages_per_batch(32).messages().await?;
    let mut consumer = consumer;
    // A payload the size of a real envelope.
    let payload = envelope_sized_payload()?;

    let mut latencies = Vec::with_capacity(samples);
    for n in 0..WARMUP + samples {
        let started = Instant::now();
        jetstream
            .publish(subject.clone(), payload.clone().into())
            .await?
            .await?;
        let message = messages.next().await.context("the consumer ended")??;
        let arrived = Instant::now();
        message.double_ack().await.map_err(anyhow::Error::msg)?;
        if n >= WARMUP {
            latencies.push(arrived - started);
        }
        // Paced like the bus's samples: the next once this one is acknowledged.
        while consumer.info().await?.num_ack_pending > 0 {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }

    let started = Instant::now();
    for chunk in (0..events).collect::<Vec<_>>().chunks(500) {
        let mut acks = Vec::with_capacity(chunk.len());
        for _ in chunk {
            acks.push(jetstream.publish(subject.clone(), payload.clone().into()).await?);
        }
        for ack in acks {
            ack.await?;
        }
    }
    let rate = events as f64 / started.elapsed().as_secs_f64();
    drop(messages);
    jetstream.delete_stream(&name).await?;
    Ok((rate, latencies))
}

fn envelope_sized_payload() -> anyhow::Result<Vec<u8>> {
    let envelope = dozen_bus::Envelope::new("signup", &signup(0))?;
    Ok(serde_json::to_vec(&envelope)?)
}
