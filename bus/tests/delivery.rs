//! The bus end to end, against real brokers (the embedded SQLite bus, NATS JetStream and an
//! SNS/SQS emulator) and real service databases (SQLite and Postgres): fan-out, competing
//! consumers, kill -9 of consumers and relays, dead letters and replay, rollbacks,
//! redeliveries, shutdown, order.
//!
//! Every scenario runs on every broker (`<scenario>::on_the_embedded_bus`, `::on_nats`,
//! `::on_sns_sqs`).
//! Kills use real child processes: this test binary run again with `DOZEN_BUS_TEST_CHILD` set
//! (see `runs_as_a_child_process_when_a_test_spawns_one`).
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{HashMap, HashSet};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use dozen_bus::backend::{BoxFuture, Queue};
use dozen_bus::contracts::{UserEmailVerified, UserSignedUp};
use dozen_bus::{Broker, BusError, Envelope, Event, Outbox, Relay, Subscriber, Tx, handler};
use dozen_kit::lifecycle::Lifecycle;
use dozen_tests::database::Backend;
use dozen_tests::eventually;
use support::{DEADLINE, Kind, ServiceDb, TestBus, recording, write_effect};
use uuid::Uuid;

macro_rules! on_every_broker {
    ($($scenario:ident),* $(,)?) => {
        $(
            mod $scenario {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_the_embedded_bus() {
                    super::$scenario(super::Kind::Embedded).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_nats() {
                    super::$scenario(super::Kind::Nats).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_sns_sqs() {
                    super::$scenario(super::Kind::SnsSqs).await
                }
            }
        )*
    };
}

on_every_broker!(
    every_subscriber_receives_every_event_and_instances_of_one_split_the_work,
    a_consumer_killed_mid_stream_again_and_again_loses_nothing_and_repeats_nothing,
    a_relay_killed_between_publish_and_mark_sent_leaves_a_duplicate_the_inbox_absorbs,
    an_event_whose_handler_always_fails_is_dead_lettered_while_others_flow_and_replay_delivers_it,
    a_rolled_back_transaction_publishes_nothing,
    an_event_delivered_twice_has_one_effect,
    a_stopping_consumer_finishes_its_event_and_hands_back_the_rest,
    the_readiness_check_answers_while_the_broker_does,
    one_trace_follows_an_event_from_its_publisher_to_its_handler,
    two_relays_on_one_outbox_publish_each_event_once,
    an_event_the_broker_refuses_holds_back_only_its_own_subject,
);

const SIGNED_UP: &str = UserSignedUp::TYPE;

/// What SQS's redrive moves (a consumer kept dying before settling an event) the subscriber
/// takes into its own dead letters, where listing and replay work as for any other.
#[cfg(feature = "sns-sqs")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_sqs_redrive_moved_is_listed_and_replayed_as_a_dead_letter() {
    use aws_sdk_sqs::types::QueueAttributeName;

    let bus = TestBus::new(Kind::SnsSqs).await;
    let publisher = ServiceDb::create(Backend::Sqlite).await;
    let consumer = ServiceDb::create(Backend::Sqlite).await;
    let subscriber = Subscriber::new(
        "verification",
        &[SIGNED_UP],
        recording("verification", "only"),
        consumer.db.clone(),
        bus.connect().await,
        &bus.settings,
    );
    subscriber.open().await.expect("make the queue");
    let lifecycle = Lifecycle::new();
    let outbox = start_relay(&bus, &publisher.db, &lifecycle).await;
    let mut tx = Tx::begin(&publisher.db).await.expect("begin");
    let event = outbox
        .publish(&mut tx, &support::signed_up(1))
        .await
        .expect("publish");
    tx.commit().await.expect("commit");

    // A consumer that dies after each receive, until SQS's redrive gives up on the event.
    let sqs = bus.sns_sqs.as_ref().expect("on SNS/SQS").sqs().await;
    let queue_url = |name: String| {
        let sqs = sqs.clone();
        async move {
            sqs.get_queue_url()
                .queue_name(name)
                .send()
                .await
                .expect("the queue")
                .queue_url
                .expect("its URL")
        }
    };
    let name = format!("{}-verification", bus.settings.bus_namespace);
    let queue = queue_url(name.clone()).await;
    let dead_letters = queue_url(format!("{name}-dead-letters")).await;
    eventually(DEADLINE, "SQS's redrive moves the event", || async {
        sqs.receive_message()
            .queue_url(&queue)
            .visibility_timeout(0)
            .send()
            .await
            .expect("receive");
        let attributes = sqs
            .get_queue_attributes()
            .queue_url(&dead_letters)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .expect("the dead-letter queue's depth");
        attributes
            .attributes
            .and_then(|a| a.get(&QueueAttributeName::ApproximateNumberOfMessages).cloned())
            .is_some_and(|depth| depth == "1")
    })
    .await;

    start(subscriber, &lifecycle).await;
    let letters = eventually(DEADLINE, "the subscriber takes the event in", || async {
        let letters = dozen_bus::dead_letters(&consumer.db, Some("verification"))
            .await
            .expect("list dead letters");
        (letters.len() == 1).then_some(letters)
    })
    .await;
    assert_eq!(letters[0].event_id, event.id);
    assert!(letters[0].error.contains("redrive"), "{}", letters[0].error);
    assert!(!consumer.has_effect("verification", event.id).await);

    dozen_bus::replay(&consumer.db, "verification", None)
        .await
        .expect("replay");
    eventually(DEADLINE, "the replayed event is handled", || async {
        consumer.has_effect("verification", event.id).await
    })
    .await;
    let left = sqs
        .receive_message()
        .queue_url(&dead_letters)
        .send()
        .await
        .expect("receive from the dead-letter queue");
    assert!(left.messages.unwrap_or_default().is_empty(), "taken off SQS");
    stop(&lifecycle).await;
    assert_eq!(consumer.effects("verification").await, (1, 1));
}

/// Whether the SQS queue of `subscriber` is subscribed to the SNS topic of `SIGNED_UP` (a
/// subscription goes with its topic).
#[cfg(feature = "sns-sqs")]
async fn subscribed(bus: &TestBus, subscriber: &str) -> bool {
    let namespace = &bus.settings.bus_namespace;
    let topic = format!(":{namespace}-{}", SIGNED_UP.replace(['.', '_'], "-"));
    let queue = format!(":{namespace}-{subscriber}");
    let sns = bus.sns_sqs.as_ref().expect("on SNS/SQS").sns().await;
    let subscriptions = sns.list_subscriptions().send().await.expect("list subscriptions");
    subscriptions.subscriptions().iter().any(|subscription| {
        subscription.topic_arn().is_some_and(|arn| arn.ends_with(&topic))
            && subscription.endpoint().is_some_and(|arn| arn.ends_with(&queue))
    })
}

/// What an SNS/SQS restarted empty loses (here deleted: the namespace's queues and topics), a
/// running subscriber makes again when its receive finds its queue missing: the queue, its
/// topics, its subscriptions; what is published from then on reaches it.
#[cfg(feature = "sns-sqs")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_whose_queue_vanished_makes_it_and_its_subscriptions_again() {
    let bus = TestBus::new(Kind::SnsSqs).await;
    let publisher = ServiceDb::create(Backend::Sqlite).await;
    let consumer = ServiceDb::create(Backend::Sqlite).await;
    let subscribing = Lifecycle::new();
    let subscriber = Subscriber::new(
        "verification",
        &[SIGNED_UP],
        recording("verification", "only"),
        consumer.db.clone(),
        bus.connect().await,
        &bus.settings,
    );
    start(subscriber, &subscribing).await;
    let relaying = Lifecycle::new();
    let outbox = start_relay(&bus, &publisher.db, &relaying).await;
    let before = support::publish_signups(&publisher.db, &outbox, 1).await;
    eventually(DEADLINE, "the first event is handled", || async {
        consumer.has_effect("verification", before[0]).await
    })
    .await;
    // No relay meanwhile: the topic can only come back through the subscriber.
    stop(&relaying).await;

    bus.sns_sqs.as_ref().expect("on SNS/SQS").lose_everything().await;
    assert!(
        !subscribed(&bus, "verification").await,
        "the subscription is gone"
    );
    eventually(DEADLINE, "the subscriber's queue is subscribed again", || async {
        subscribed(&bus, "verification").await
    })
    .await;

    let relaying = Lifecycle::new();
    let outbox = start_relay(&bus, &publisher.db, &relaying).await;
    let after = support::publish_signups(&publisher.db, &outbox, 1).await;
    eventually(DEADLINE, "the event published after is handled", || async {
        consumer.has_effect("verification", after[0]).await
    })
    .await;
    stop(&relaying).await;
    stop(&subscribing).await;
    assert_eq!(consumer.effects("verification").await, (2, 2));
}

/// A relay whose topic vanished (SNS/SQS restarted empty) makes it again and publishes on.
/// What it publishes before a queue is subscribed again SNS keeps for no one: the loss an
/// emptied broker causes, besides the messages it held.
#[cfg(feature = "sns-sqs")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_whose_topic_vanished_makes_it_again() {
    let bus = TestBus::new(Kind::SnsSqs).await;
    let emulator = bus.sns_sqs.as_ref().expect("on SNS/SQS");
    let publisher = ServiceDb::create(Backend::Sqlite).await;
    let dozen_kit::db::Db::Sqlite(outbox_pool) = &publisher.db else {
        unreachable!("a SQLite database")
    };
    let sent = |id: Uuid| async move {
        sqlx::query_scalar::<_, bool>("SELECT sent_at IS NOT NULL FROM outbox WHERE event_id = $1")
            .bind(id.to_string())
            .fetch_one(outbox_pool)
            .await
            .expect("the outbox row")
    };
    let topic = format!(
        ":{}-{}",
        bus.settings.bus_namespace,
        SIGNED_UP.replace(['.', '_'], "-")
    );
    let sns = emulator.sns().await;
    let topic_exists = || async {
        let topics = sns.list_topics().send().await.expect("list topics");
        topics
            .topics()
            .iter()
            .any(|listed| listed.topic_arn().is_some_and(|arn| arn.ends_with(&topic)))
    };
    let relaying = Lifecycle::new();
    let outbox = start_relay(&bus, &publisher.db, &relaying).await;
    let before = support::publish_signups(&publisher.db, &outbox, 1).await;
    eventually(DEADLINE, "the first event is published", || async {
        sent(before[0]).await
    })
    .await;

    emulator.lose_everything().await;
    assert!(!topic_exists().await, "the topic is gone");
    let after = support::publish_signups(&publisher.db, &outbox, 1).await;
    eventually(DEADLINE, "the event published after is sent", || async {
        sent(after[0]).await
    })
    .await;
    assert!(topic_exists().await, "the relay made the topic again");
    stop(&relaying).await;
}

/// Start `subscriber`'s consumers (one per queue) under `lifecycle`.
async fn start(subscriber: Subscriber, lifecycle: &Lifecycle) {
    for queue in subscriber.open().await.expect("open the subscriber's queues") {
        lifecycle.spawn(subscriber.clone().consume(queue, lifecycle.stopping()));
    }
    lifecycle.spawn(subscriber.maintain(lifecycle.stopping()));
}

/// A relay for `db` under `lifecycle`; the outbox to publish through.
async fn start_relay(bus: &TestBus, db: &dozen_kit::db::Db, lifecycle: &Lifecycle) -> Outbox {
    let outbox = Outbox::new("signup");
    let relay = Relay::new(db.clone(), bus.connect().await, &outbox, &bus.settings);
    lifecycle.spawn(relay.run(lifecycle.stopping()));
    outbox
}

async fn stop(lifecycle: &Lifecycle) {
    lifecycle.stop();
    lifecycle.tasks_finished().await;
}

async fn pending(broker: &Arc<dyn Broker>, subscriber: &str, topics: &[&str]) -> u64 {
    let topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
    broker
        .pending(subscriber, &topics)
        .await
        .expect("read the queue's depth")
}

async fn every_subscriber_receives_every_event_and_instances_of_one_split_the_work(kind: Kind) {
    let events = support::volume(kind, 10_000, 1_000);
    let bus = TestBus::new(kind).await;
    let publisher = ServiceDb::create(Backend::Sqlite).await;
    let friends = ServiceDb::create(Backend::Postgres).await;
    let verification = ServiceDb::create(Backend::Sqlite).await;
    let audit = ServiceDb::create(Backend::Sqlite).await;
    let lifecycle = Lifecycle::new();

    // Queues keep events from their creation on: subscribe before publishing. Each instance
    // has its own broker connection, as a separate process would.
    let instances = [
        ("friends", "first", &friends),
        ("friends", "second", &friends),
        ("verification", "only", &verification),
        ("audit", "only", &audit),
    ];
    for (name, instance, db) in instances {
        let subscriber = Subscriber::new(
            name,
            &[SIGNED_UP],
            recording(name, instance),
            db.db.clone(),
            bus.connect().await,
            &bus.settings,
        );
        start(subscriber, &lifecycle).await;
    }
    let outbox = start_relay(&bus, &publisher.db, &lifecycle).await;
    support::publish_signups(&publisher.db, &outbox, events as usize).await;

    let broker = bus.connect().await;
    for (name, db) in [
        ("friends", &friends),
        ("verification", &verification),
        ("audit", &audit),
    ] {
        eventually(DEADLINE, &format!("{name} has handled every event"), || async {
            db.effects(name).await.1 == events && pending(&broker, name, &[SIGNED_UP]).await == 0
        })
        .await;
    }
    stop(&lifecycle).await;

    for (name, db) in [
        ("friends", &friends),
        ("verification", &verification),
        ("audit", &audit),
    ] {
        assert_eq!(
            db.effects(name).await,
            (events, events),
            "{name}: every event, each once"
        );
    }
    let split = friends.effects_by_instance("friends").await;
    assert_eq!(
        split.len(),
        2,
        "both instances of friends took a share: {split:?}"
    );
    assert!(split.iter().all(|(_, count)| *count > 0), "{split:?}");
}

/// Run this test binary again as a child process in `role`.
fn spawn_child(role: &str, bus: &TestBus, database_url: &str, subscriber: &str) -> Child {
    let mut command = Command::new(std::env::current_exe().expect("the test binary"));
    command
        .args([
            "runs_as_a_child_process_when_a_test_spawns_one",
            "--exact",
            "--nocapture",
        ])
        .env("DOZEN_BUS_TEST_CHILD", role)
        .env("DATABASE_URL", database_url)
        .env("SUBSCRIBER", subscriber)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (name, value) in bus.env() {
        command.env(name, value);
    }
    command.spawn().expect("spawn a child process")
}

fn kill_9(child: &mut Child) {
    // SIGKILL: no handler runs, nothing is flushed or handed back.
    child.kill().expect("kill -9 the child");
    child.wait().expect("reap the child");
}

fn assert_running(child: &mut Child) -> bool {
    if let Ok(Some(status)) = child.try_wait() {
        panic!("the child process exited early: {status}");
    }
    true
}

async fn a_consumer_killed_mid_stream_again_and_again_loses_nothing_and_repeats_nothing(kind: Kind) {
    let events = support::volume(kind, 3_000, 1_000);
    const KILLS: usize = 4;
    let bus = TestBus::new(kind).await;
    let publisher = ServiceDb::create(Backend::Sqlite).await;
    let consumer = ServiceDb::create(match kind {
        Kind::Embedded => Backend::Sqlite,
        Kind::Nats | Kind::SnsSqs => Backend::Postgres,
    })
    .await;
    let broker = bus.connect().await;
    broker
        .open("verification", &[SIGNED_UP.to_owned()])
        .await
        .expect("create the queue before publishing");
    let lifecycle = Lifecycle::new();
    let outbox = start_relay(&bus, &publisher.db, &lifecycle).await;
    support::publish_signups(&publisher.db, &outbox, events as usize).await;

    for _ in 0..KILLS {
        let before = consumer.effects("verification").await.1;
        let mut child = spawn_child("consumer", &bus, &consumer.database.url, "verification");
        // Kill it once it is well into the stream, whatever the machine's speed.
        eventually(DEADLINE, "the child consumer makes progress", || {
            let running = assert_running(&mut child);
            let consumer = &consumer;
            async move { running && consumer.effects("verification").await.1 >= (before + 150).min(events) }
        })
        .await;
        kill_9(&mut child);
    }
    assert!(
        consumer.effects("verification").await.1 < events,
        "the kills should land mid-stream: publish more events"
    );
    let mut child = spawn_child("consumer", &bus, &consumer.database.url, "verification");
    eventually(DEADLINE, "a restarted consumer has handled every event", || {
        let running = assert_running(&mut child);
        let (consumer, broker) = (&consumer, &broker);
        async move {
            running
                && consumer.effects("verification").await.1 == events
                && pending(broker, "verification", &[SIGNED_UP]).await == 0
        }
    })
    .await;
    kill_9(&mut child);
    stop(&lifecycle).await;
    assert_eq!(
        consumer.effects("verification").await,
        (events, events),
        "every event had exactly one effect"
    );
}

/// A broker that kills its own process right after a publish succeeds: a relay dying
/// between publishing and marking its rows sent.
#[derive(Debug)]
struct DiesAfterPublish(Arc<dyn Broker>);

impl Broker for DiesAfterPublish {
    fn publish<'a>(&'a self, events: &'a [Envelope]) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            self.0.publish(events).await?;
            let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
            std::future::pending().await
        })
    }

    fn open<'a>(
        &'a self,
        subscriber: &'a str,
        topics: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Box<dyn Queue>>, BusError>> {
        self.0.open(subscriber, topics)
    }

    fn pending<'a>(
        &'a self,
        subscriber: &'a str,
        topics: &'a [String],
    ) -> BoxFuture<'a, Result<u64, BusError>> {
        self.0.pending(subscriber, topics)
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), BusError>> {
        self.0.ping()
    }

    fn backend(&self) -> &'static str {
        self.0.backend()
    }
}

fn duplicates_counted(subscriber: &str) -> f64 {
    let text = dozen_kit::metrics::render(dozen_kit::metrics::Format::Prometheus);
    text.lines()
        .filter(|line| {
            line.starts_with("bus_handled_total")
                && line.contains(&format!("subscriber=\"{subscriber}\""))
                && line.contains("outcome=\"duplicate\"")
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn a_relay_killed_between_publish_and_mark_sent_leaves_a_duplicate_the_inbox_absorbs(kind: Kind) {
    const EVENTS: i64 = 100;
    let _recorder = dozen_kit::metrics::recorder();
    let bus = TestBus::new(kind).await;
    let publisher = ServiceDb::create(match kind {
        Kind::Embedded => Backend::Sqlite,
        Kind::Nats | Kind::SnsSqs => Backend::Postgres,
    })
    .await;
    let consumer = ServiceDb::create(Backend::Sqlite).await;
    let subscriber = format!("mailer_{}", &Uuid::new_v4().simple().to_string()[..8]);
    let lifecycle = Lifecycle::new();
    let sub = Subscriber::new(
        &subscriber,
        &[SIGNED_UP],
        recording(&subscriber, "only"),
        consumer.db.clone(),
        bus.connect().await,
        &bus.settings,
    );
    start(sub, &lifecycle).await;

    // Written while no relay runs; then a relay that dies right after publishing them.
    support::publish_signups(&publisher.db, &Outbox::new("signup"), EVENTS as usize).await;
    let mut child = spawn_child("relay-dies-after-publish", &bus, &publisher.database.url, "");
    let status = child.wait().expect("the child relay ends");
    assert_eq!(status.signal(), Some(9), "the relay died by SIGKILL: {status}");
    let (backlog, _) = dozen_bus::outbox::backlog(&publisher.db)
        .await
        .expect("read the outbox");
    assert_eq!(backlog, EVENTS as u64, "published, but never marked sent");
    eventually(DEADLINE, "the published events are handled", || async {
        consumer.effects(&subscriber).await.1 == EVENTS
    })
    .await;

    // Another relay publishes them again once the dead relay's lease expires.
    let _outbox = start_relay(&bus, &publisher.db, &lifecycle).await;
    let broker = bus.connect().await;
    eventually(DEADLINE, "the outbox is empty and the queue drained", || async {
        dozen_bus::outbox::backlog(&publisher.db)
            .await
            .expect("read the outbox")
            .0
            == 0
            && pending(&broker, &subscriber, &[SIGNED_UP]).await == 0
    })
    .await;
    stop(&lifecycle).await;
    assert_eq!(
        consumer.effects(&subscriber).await,
        (EVENTS, EVENTS),
        "no event had two effects"
    );
    if kind != Kind::Nats {
        // NATS drops the second publish itself (Nats-Msg-Id); the embedded bus and SNS
        // deliver it.
        // At least the republished ones (a slow machine may add redeliveries of its own).
        assert!(
            duplicates_counted(&subscriber) >= EVENTS as f64,
            "the inbox absorbed every duplicate"
        );
    }
}

async fn an_event_whose_handler_always_fails_is_dead_lettered_while_others_flow_and_replay_delivers_it(
    kind: Kind,
) {
    const GOOD: i64 = 50;
    let bus = TestBus::new(kind).await;
    let publisher = ServiceDb::create(Backend::Sqlite).await;
    let consumer = ServiceDb::create(match kind {
        Kind::Embedded => Backend::Postgres,
        Kind::Nats | Kind::SnsSqs => Backend::Sqlite,
    })
    .await;
    let poison = Uuid::now_v7();
    let broken = Arc::new(AtomicBool::new(true));
    let poison_attempts = Arc::new(AtomicUsize::new(0));
    let fails_on_poison = {
        let (broken, poison_attempts) = (broken.clone(), poison_attempts.clone());
        handler(move |tx, event| {
            let (broken, poison_attempts) = (broken.clone(), poison_attempts.clone());
            Box::pin(async move {
                let signed_up: UserSignedUp = event.decode()?;
                if signed_up.user_id == poison {
                    poison_attempts.fetch_add(1, Ordering::SeqCst);
                    if broken.load(Ordering::SeqCst) {
                        anyhow::bail!("this handler cannot cope with {}", signed_up.email);
                    }
                }
                write_effect(tx, "verification", "only", event).await
            })
        })
    };
    let lifecycle = Lifecycle::new();
    let subscriber = Subscriber::new(
        "verification",
        &[SIGNED_UP],
        fails_on_poison,
        consumer.db.clone(),
        bus.connect().await,
        &bus.settings,
    );
    start(subscriber, &lifecycle).await;
    let outbox = start_relay(&bus, &publisher.db, &lifecycle).await;

    let mut tx = Tx::begin(&publisher.db).await.expect("begin");
    let mut poisoned = support::signed_up(0);
    poisoned.user_id = poison;
    let poison_event = outbox.publish(&mut tx, &poisoned).await.expect("publish");
    tx.commit().await.expect("commit");
    support::publish_signups(&publisher.db, &outbox, GOOD as usize).await;

    eventually(
        DEADLINE,
        "the poison event is dead-lettered and the others handled",
        || async {
            let letters = dozen_bus::dead_letters(&consumer.db, Some("verification"))
                .await
                .expect("list dead letters");
            letters.len() == 1 && consumer.effects("verification").await.1 == GOOD
        },
    )
    .await;
    let letters = dozen_bus::dead_letters(&consumer.db, None)
        .await
        .expect("list dead letters");
    assert_eq!(letters[0].event_id, poison_event.id);
    assert_eq!(letters[0].attempts, bus.settings.bus_max_attempts);
    assert!(letters[0].error.contains("cannot cope"), "{}", letters[0].error);
    assert!(!consumer.has_effect("verification", poison_event.id).await);
    assert_eq!(
        poison_attempts.load(Ordering::SeqCst),
        bus.settings.bus_max_attempts as usize
    );

    // Fixed: replay delivers it again, to this subscriber only.
    broken.store(false, Ordering::SeqCst);
    let marked = dozen_bus::replay(&consumer.db, "verification", None)
        .await
        .expect("replay");
    assert_eq!(marked, 1);
    eventually(DEADLINE, "the replayed event is handled", || async {
        consumer.has_effect("verification", poison_event.id).await
    })
    .await;
    stop(&lifecycle).await;
    assert!(
        dozen_bus::dead_letters(&consumer.db, None)
            .await
            .expect("list")
            .is_empty()
    );
    assert_eq!(consumer.effects("verification").await, (GOOD + 1, GOOD + 1));
}

async fn a_rolled_back_transaction_publishes_nothing(kind: Kind) {
    let bus = TestBus::new(kind).await;
    let publisher = ServiceDb::create(match kind {
        Kind::Embedded => Backend::Postgres,
        Kind::Nats | Kind::SnsSqs => Backend::Sqlite,
    })
    .await;
    let consumer = ServiceDb::create(Backend::Sqlite).await;
    let lifecycle = Lifecycle::new();
    let subscriber = Subscriber::new(
        "verification",
        &[SIGNED_UP],
        recording("verification", "only"),
        consumer.db.clone(),
        bus.connect().await,
        &bus.settings,
    );
    start(subscriber, &lifecycle).await;
    let outbox = start_relay(&bus, &publisher.db, &lifecycle).await;

    let mut tx = Tx::begin(&publisher.db).await.expect("begin");
    let rolled_back = outbox
        .publish(&mut tx, &support::signed_up(1))
        .await
        .expect("publish");
    tx.rollback().await.expect("roll back");
    let mut tx = Tx::begin(&publisher.db).await.expect("begin");
    let dropped = outbox
        .publish(&mut tx, &support::signed_up(2))
        .await
        .expect("publish");
    drop(tx);
    // A committed event after them: once it is handled, anything before it would have been.
    let mut tx = Tx::begin(&publisher.db).await.expect("begin");
    let committed = outbox
        .publish(&mut tx, &support::signed_up(3))
        .await
        .expect("publish");
    tx.commit().await.expect("commit");

    eventually(DEADLINE, "the committed event is handled", || async {
        consumer.has_effect("verification", committed.id).await
    })
    .await;
    let broker = bus.connect().await;
    eventually(DEADLINE, "the queue is drained", || async {
        pending(&broker, "verification", &[SIGNED_UP]).await == 0
    })
    .await;
    stop(&lifecycle).await;
    assert!(!consumer.has_effect("verification", rolled_back.id).await);
    assert!(!consumer.has_effect("verification", dropped.id).await);
    assert_eq!(consumer.effects("verification").await, (1, 1));
    assert_eq!(
        dozen_bus::outbox::backlog(&publisher.db)
            .await
            .expect("backlog")
            .0,
        0
    );
}

async fn an_event_delivered_twice_has_one_effect(kind: Kind) {
    let bus = TestBus::new(kind).await;
    let consumer = ServiceDb::create(Backend::Postgres).await;
    let lifecycle = Lifecycle::new();
    let broker = bus.connect().await;
    let subscriber = Subscriber::new(
        "friends",
        &[SIGNED_UP, UserEmailVerified::TYPE],
        recording("friends", "only"),
        consumer.db.clone(),
        broker.clone(),
        &bus.settings,
    );
    start(subscriber, &lifecycle).await;

    let signed_up = Envelope::new("signup", &support::signed_up(1)).expect("envelope");
    let verified = Envelope::new(
        "verification",
        &UserEmailVerified {
            user_id: Uuid::now_v7(),
            email: "someone@example.test".into(),
            verified_at: chrono::Utc::now(),
        },
    )
    .expect("envelope");
    // Straight to the broker, twice, as a relay that re-sends would.
    for _ in 0..2 {
        broker
            .publish(&[signed_up.clone(), verified.clone()])
            .await
            .expect("publish");
    }
    eventually(
        DEADLINE,
        "both events are handled and the queues drained",
        || async {
            consumer.effects("friends").await.1 == 2
                && pending(&broker, "friends", &[SIGNED_UP, UserEmailVerified::TYPE]).await == 0
        },
    )
    .await;
    stop(&lifecycle).await;
    assert_eq!(consumer.effects("friends").await, (2, 2));
}

async fn a_stopping_consumer_finishes_its_event_and_hands_back_the_rest(kind: Kind) {
    const EVENTS: i64 = 200;
    let bus = TestBus::new(kind).await;
    let publisher = ServiceDb::create(Backend::Sqlite).await;
    let consumer = ServiceDb::create(Backend::Sqlite).await;
    let relaying = Lifecycle::new();
    let outbox = start_relay(&bus, &publisher.db, &relaying).await;
    let slow = handler(|tx, event| {
        Box::pin(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            write_effect(tx, "verification", "slow", event).await
        })
    });
    let first = Lifecycle::new();
    let subscriber = Subscriber::new(
        "verification",
        &[SIGNED_UP],
        slow,
        consumer.db.clone(),
        bus.connect().await,
        &bus.settings,
    );
    start(subscriber, &first).await;
    support::publish_signups(&publisher.db, &outbox, EVENTS as usize).await;
    eventually(DEADLINE, "the first consumer is under way", || async {
        consumer.effects("verification").await.1 >= 20
    })
    .await;
    stop(&first).await;
    let after_stop = consumer.effects("verification").await.1;
    assert!(after_stop < EVENTS, "stopped mid-stream");

    // What it held was handed back: a new consumer gets everything else.
    let second = Lifecycle::new();
    let subscriber = Subscriber::new(
        "verification",
        &[SIGNED_UP],
        recording("verification", "second"),
        consumer.db.clone(),
        bus.connect().await,
        &bus.settings,
    );
    start(subscriber, &second).await;
    let broker = bus.connect().await;
    eventually(DEADLINE, "the second consumer has the rest", || async {
        consumer.effects("verification").await.1 == EVENTS
            && pending(&broker, "verification", &[SIGNED_UP]).await == 0
    })
    .await;
    stop(&second).await;
    stop(&relaying).await;
    assert_eq!(consumer.effects("verification").await, (EVENTS, EVENTS));
    assert_eq!(consumer.effects("verification").await.1 - after_stop, {
        let by_instance: HashMap<String, i64> = consumer
            .effects_by_instance("verification")
            .await
            .into_iter()
            .collect();
        by_instance.get("second").copied().unwrap_or_default()
    });
}

async fn the_readiness_check_answers_while_the_broker_does(kind: Kind) {
    let bus = TestBus::new(kind).await;
    let db = ServiceDb::create(Backend::Sqlite).await;
    let connected = dozen_bus::Bus::connect(&bus.settings, "signup", db.db.clone())
        .await
        .expect("connect");
    let check = connected.readiness_check();
    assert_eq!(check().await, Ok(()));
    let mut readiness = dozen_kit::http::server::Readiness::default();
    readiness.add("bus", connected.readiness_check());
}

/// A broker that refuses events about one subject while `refusing` holds.
#[derive(Debug)]
struct RefusesSubject {
    inner: Arc<dyn Broker>,
    subject: String,
    refusing: Arc<AtomicBool>,
}

impl Broker for RefusesSubject {
    fn publish<'a>(&'a self, events: &'a [Envelope]) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            if self.refusing.load(Ordering::SeqCst) && events.iter().any(|e| e.subject == self.subject) {
                return Err(BusError::Broker("refused for the test".to_owned()));
            }
            self.inner.publish(events).await
        })
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

async fn an_event_the_broker_refuses_holds_back_only_its_own_subject(kind: Kind) {
    const OTHERS: i64 = 50;
    let bus = TestBus::new(kind).await;
    let publisher = ServiceDb::create(Backend::Sqlite).await;
    let consumer = ServiceDb::create(Backend::Sqlite).await;
    let lifecycle = Lifecycle::new();
    let subscriber = Subscriber::new(
        "verification",
        &[SIGNED_UP],
        recording("verification", "only"),
        consumer.db.clone(),
        bus.connect().await,
        &bus.settings,
    );
    start(subscriber, &lifecycle).await;
    let stuck_user = Uuid::now_v7();
    let refusing = Arc::new(AtomicBool::new(true));
    let broker: Arc<dyn Broker> = Arc::new(RefusesSubject {
        inner: bus.connect().await,
        subject: stuck_user.to_string(),
        refusing: refusing.clone(),
    });
    let outbox = Outbox::new("signup");
    lifecycle
        .spawn(Relay::new(publisher.db.clone(), broker, &outbox, &bus.settings).run(lifecycle.stopping()));

    // Two events about the refused subject, with the others around them in one transaction.
    let mut tx = Tx::begin(&publisher.db).await.expect("begin");
    let mut stuck = Vec::new();
    for n in 0..OTHERS {
        let mut event = support::signed_up(n as usize);
        if n == 10 || n == 20 {
            event.user_id = stuck_user;
            stuck.push(outbox.publish(&mut tx, &event).await.expect("publish").id);
        } else {
            outbox.publish(&mut tx, &event).await.expect("publish");
        }
    }
    tx.commit().await.expect("commit");
    eventually(DEADLINE, "every other event is handled", || async {
        consumer.effects("verification").await.1 == OTHERS - 2
    })
    .await;
    for id in &stuck {
        assert!(!consumer.has_effect("verification", *id).await);
    }

    refusing.store(false, Ordering::SeqCst);
    eventually(
        DEADLINE,
        "the held-back events follow once the broker takes them",
        || async { consumer.effects("verification").await.1 == OTHERS },
    )
    .await;
    stop(&lifecycle).await;
    assert_eq!(consumer.effects("verification").await, (OTHERS, OTHERS));
    let (backlog, _) = dozen_bus::outbox::backlog(&publisher.db).await.expect("backlog");
    assert_eq!(backlog, 0);
}

async fn two_relays_on_one_outbox_publish_each_event_once(kind: Kind) {
    let events = support::volume(kind, 2_000, 300);
    let _recorder = dozen_kit::metrics::recorder();
    let mut bus = TestBus::new(kind).await;
    // Leases far longer than anything here takes, so any duplicate would be the relays' doing.
    bus.settings.bus_ack_wait = std::time::Duration::from_secs(60);
    let publisher = ServiceDb::create(match kind {
        Kind::Embedded => Backend::Postgres,
        Kind::Nats | Kind::SnsSqs => Backend::Sqlite,
    })
    .await;
    let consumer = ServiceDb::create(Backend::Sqlite).await;
    let subscriber = format!("audit_{}", &Uuid::new_v4().simple().to_string()[..8]);
    let lifecycle = Lifecycle::new();
    let sub = Subscriber::new(
        &subscriber,
        &[SIGNED_UP],
        recording(&subscriber, "only"),
        consumer.db.clone(),
        bus.connect().await,
        &bus.settings,
    );
    start(sub, &lifecycle).await;
    // Two instances of the publishing service, each with its relay on the same outbox.
    let outbox = start_relay(&bus, &publisher.db, &lifecycle).await;
    let second_instance = support::open(&publisher.database.url).await;
    let _ = start_relay(&bus, &second_instance, &lifecycle).await;
    support::publish_signups(&publisher.db, &outbox, events as usize).await;

    let broker = bus.connect().await;
    eventually(
        DEADLINE,
        "every event is handled and the outbox empty",
        || async {
            consumer.effects(&subscriber).await.1 == events
                && dozen_bus::outbox::backlog(&publisher.db)
                    .await
                    .expect("backlog")
                    .0
                    == 0
                && pending(&broker, &subscriber, &[SIGNED_UP]).await == 0
        },
    )
    .await;
    stop(&lifecycle).await;
    assert_eq!(consumer.effects(&subscriber).await, (events, events));
    if kind != Kind::Nats {
        // The embedded bus and SNS do not deduplicate: none arrived twice, so no row left twice.
        assert_eq!(
            duplicates_counted(&subscriber),
            0.0,
            "no event was published twice"
        );
    }
}

async fn one_trace_follows_an_event_from_its_publisher_to_its_handler(kind: Kind) {
    use dozen_kit::trace_context::Handling;
    support::telemetry();
    let bus = TestBus::new(kind).await;
    let publisher = ServiceDb::create(Backend::Sqlite).await;
    let consumer = ServiceDb::create(Backend::Sqlite).await;
    let seen: Arc<Mutex<Option<String>>> = Arc::default();
    let records_trace = {
        let seen = seen.clone();
        handler(move |_tx, _event| {
            let seen = seen.clone();
            Box::pin(async move {
                *seen.lock().expect("lock") = dozen_kit::trace_context::current_trace_id();
                Ok(())
            })
        })
    };
    let lifecycle = Lifecycle::new();
    let subscriber = Subscriber::new(
        "friends",
        &[SIGNED_UP],
        records_trace,
        consumer.db.clone(),
        bus.connect().await,
        &bus.settings,
    );
    start(subscriber, &lifecycle).await;
    let outbox = start_relay(&bus, &publisher.db, &lifecycle).await;

    // As a request handled by a service: a new trace, since nobody called with one.
    let request = Handling::start(tracing::info_span!("signup request"), Default::default());
    let (envelope, trace_id) = request
        .run(async {
            let trace_id = dozen_kit::trace_context::current_trace_id().expect("a trace is active");
            let mut tx = Tx::begin(&publisher.db).await.expect("begin");
            let envelope = outbox
                .publish(&mut tx, &support::signed_up(1))
                .await
                .expect("publish");
            tx.commit().await.expect("commit");
            (envelope, trace_id)
        })
        .await;
    let traceparent = envelope
        .trace
        .get("traceparent")
        .expect("the envelope carries a traceparent");
    assert!(
        traceparent.contains(&trace_id),
        "{traceparent} continues {trace_id}"
    );

    eventually(DEADLINE, "the handler ran", || async {
        seen.lock().expect("lock").is_some()
    })
    .await;
    stop(&lifecycle).await;
    assert_eq!(
        seen.lock().expect("lock").clone(),
        Some(trace_id),
        "the handler runs in the publisher's trace"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_killed_and_restarted_under_load_loses_and_repeats_nothing() {
    const EVENTS: i64 = 1_000;
    let (mut bus, port) = TestBus::on_own_nats_server().await;
    let publisher = ServiceDb::create(Backend::Sqlite).await;
    let consumer = ServiceDb::create(Backend::Sqlite).await;
    let lifecycle = Lifecycle::new();
    let subscriber = Subscriber::new(
        "verification",
        &[SIGNED_UP],
        recording("verification", "only"),
        consumer.db.clone(),
        bus.connect().await,
        &bus.settings,
    );
    start(subscriber, &lifecycle).await;
    let outbox = start_relay(&bus, &publisher.db, &lifecycle).await;
    support::publish_signups(&publisher.db, &outbox, EVENTS as usize / 2).await;
    eventually(DEADLINE, "some events are handled", || async {
        consumer.effects("verification").await.1 > 0
    })
    .await;

    bus.restart_nats_server(port).await;
    // Published while the clients reconnect: the outbox keeps them until the broker takes them.
    support::publish_signups(&publisher.db, &outbox, EVENTS as usize / 2).await;
    let broker = bus.connect().await;
    eventually(DEADLINE, "every event is handled after the restart", || async {
        consumer.effects("verification").await.1 == EVENTS
            && dozen_bus::outbox::backlog(&publisher.db)
                .await
                .expect("backlog")
                .0
                == 0
            && pending(&broker, "verification", &[SIGNED_UP]).await == 0
    })
    .await;
    stop(&lifecycle).await;
    assert_eq!(consumer.effects("verification").await, (EVENTS, EVENTS));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_subjects_events_are_handled_in_order_on_the_embedded_bus_despite_competition_and_retries() {
    const SUBJECTS: usize = 10;
    const PER_SUBJECT: usize = 30;
    let bus = TestBus::new(Kind::Embedded).await;
    let consumer = ServiceDb::create(Backend::Sqlite).await;
    let lifecycle = Lifecycle::new();
    // The first delivery of every fifth event fails, to force retries.
    let failed_once = Arc::new(Mutex::new(HashSet::new()));
    for instance in ["first", "second"] {
        let failed_once = failed_once.clone();
        let flaky = handler(move |tx, event| {
            let failed_once = failed_once.clone();
            Box::pin(async move {
                let n: usize = event.data["display_name"]
                    .as_str()
                    .and_then(|name| name.rsplit(' ').next()?.parse().ok())
                    .unwrap_or_default();
                if n.is_multiple_of(5) && failed_once.lock().expect("lock").insert(event.id) {
                    anyhow::bail!("failing the first delivery of event {n}");
                }
                write_effect(tx, "friends", instance, event).await
            })
        });
        let subscriber = Subscriber::new(
            "friends",
            &[SIGNED_UP],
            flaky,
            consumer.db.clone(),
            bus.connect().await,
            &bus.settings,
        );
        start(subscriber, &lifecycle).await;
    }
    let broker = bus.connect().await;
    let users: Vec<Uuid> = (0..SUBJECTS).map(|_| Uuid::now_v7()).collect();
    let mut expected: HashMap<String, Vec<Uuid>> = HashMap::new();
    let mut n = 0;
    for _ in 0..PER_SUBJECT {
        let mut batch = Vec::new();
        for user in &users {
            let mut event = support::signed_up(n);
            event.user_id = *user;
            let envelope = Envelope::new("signup", &event).expect("envelope");
            expected
                .entry(envelope.subject.clone())
                .or_default()
                .push(envelope.id);
            batch.push(envelope);
            n += 1;
        }
        broker.publish(&batch).await.expect("publish");
    }
    eventually(DEADLINE, "every event is handled", || async {
        consumer.effects("friends").await.1 == (SUBJECTS * PER_SUBJECT) as i64
    })
    .await;
    stop(&lifecycle).await;
    let order = consumer.subjects_in_order("friends").await;
    let ids = effects_ids_in_order(&consumer).await;
    let mut seen: HashMap<String, Vec<Uuid>> = HashMap::new();
    for (subject, id) in order.into_iter().zip(ids) {
        seen.entry(subject).or_default().push(id);
    }
    assert_eq!(
        seen, expected,
        "each subject's events were handled in publish order"
    );
}

async fn effects_ids_in_order(consumer: &ServiceDb) -> Vec<Uuid> {
    let ids: Vec<String> = match &consumer.db {
        dozen_kit::db::Db::Sqlite(pool) => {
            sqlx::query_scalar("SELECT event_id FROM effects ORDER BY id")
                .fetch_all(pool)
                .await
        }
        dozen_kit::db::Db::Postgres(pool) => {
            sqlx::query_scalar("SELECT event_id FROM effects ORDER BY id")
                .fetch_all(pool)
                .await
        }
    }
    .expect("read effects");
    ids.iter()
        .map(|id| Uuid::parse_str(id).expect("a uuid"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_tables_migrate_and_pass_the_schema_check_on_both_databases() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let database = dozen_tests::database::TestDatabase::create(backend).await;
        let db = support::open(&database.url).await;
        assert!(db.check_schema(&[&dozen_bus::MIGRATIONS]).await.is_err());
        db.migrate(&[&dozen_bus::MIGRATIONS]).await.expect("migrate");
        db.migrate(&[&dozen_bus::MIGRATIONS])
            .await
            .expect("migrating twice changes nothing");
        db.check_schema(&[&dozen_bus::MIGRATIONS])
            .await
            .expect("schema is current");
        db.close().await;
    }
}

/// Not a test of its own: the entry point of the child processes the kill tests start (this
/// binary, run again with `DOZEN_BUS_TEST_CHILD` naming the role). In a normal run it returns
/// at once.
#[test]
fn runs_as_a_child_process_when_a_test_spawns_one() {
    let Ok(role) = std::env::var("DOZEN_BUS_TEST_CHILD") else {
        return;
    };
    // Die with the test that spawned it, even when that test fails before killing it.
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).expect("a parent-death signal");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let settings = support::settings_from_env();
        let db = support::open(&std::env::var("DATABASE_URL").expect("DATABASE_URL")).await;
        let broker = dozen_bus::backend::connect(&settings)
            .await
            .expect("connect to the broker");
        let forever = tokio_util::sync::CancellationToken::new();
        match role.as_str() {
            "consumer" => {
                let name = std::env::var("SUBSCRIBER").expect("SUBSCRIBER");
                let instance = format!("pid{}", std::process::id());
                let subscriber = Subscriber::new(
                    &name,
                    &[SIGNED_UP],
                    recording(&name, &instance),
                    db,
                    broker,
                    &settings,
                );
                let mut consumers = tokio::task::JoinSet::new();
                for queue in subscriber.open().await.expect("open the queue") {
                    consumers.spawn(subscriber.clone().consume(queue, forever.clone()));
                }
                consumers.join_all().await;
            }
            "relay-dies-after-publish" => {
                let broker: Arc<dyn Broker> = Arc::new(DiesAfterPublish(broker));
                Relay::new(db, broker, &Outbox::new("signup"), &settings)
                    .run(forever)
                    .await;
            }
            other => panic!("unknown child role {other}"),
        }
    });
}
