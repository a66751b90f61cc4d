//! The bus under sustained writes: a busy subject (one user's profile written again and again)
//! flows as fast as many quiet ones, and every table the bus writes to stays bounded by the
//! retention.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use dozen_bus::contracts::UserSignedUp;
use dozen_bus::{Event, Outbox, Relay, Subscriber, Tx};
use dozen_kit::db::Db;
use dozen_kit::lifecycle::Lifecycle;
use dozen_tests::database::Backend;
use dozen_tests::{PATIENCE, eventually};
use support::{Kind, ServiceDb, TestBus, recording};
use uuid::Uuid;

/// Events in each backlog: enough that a relay or consumer taking one event of a subject per
/// round trip (and scanning the backlog on each) takes many times longer than batches do.
const EVENTS: usize = 1_000;

/// How a backlog of [`EVENTS`], all of one subject or each of its own, went from the outbox to
/// the subscriber's database.
struct Drained {
    took: Duration,
    /// The events' subjects in the order they were published, and handled.
    published: Vec<String>,
    handled: Vec<String>,
    /// How many publishes to the bus the relay made: the events of one carry one timestamp.
    publishes: i64,
}

async fn drain(one_subject: bool) -> Drained {
    let bus = TestBus::new(Kind::Embedded).await;
    let producer = ServiceDb::create(Backend::Sqlite).await;
    let consumer = ServiceDb::create(Backend::Sqlite).await;
    let lifecycle = Lifecycle::new();
    let subscriber = Subscriber::new(
        "friends",
        &[UserSignedUp::TYPE],
        recording("friends", "only"),
        consumer.db.clone(),
        bus.connect().await,
        &bus.settings,
    );
    // The queue exists before anything is published, so it receives every event.
    for queue in subscriber.open().await.expect("open the queue") {
        lifecycle.spawn(subscriber.clone().consume(queue, lifecycle.stopping()));
    }

    let outbox = Outbox::new("signup");
    let user = Uuid::now_v7();
    let mut published = Vec::with_capacity(EVENTS);
    let mut tx = Tx::begin(&producer.db).await.expect("begin");
    for n in 0..EVENTS {
        let mut event = support::signed_up(n);
        if one_subject {
            event.user_id = user;
        }
        let envelope = outbox.publish(&mut tx, &event).await.expect("publish");
        published.push(envelope.subject);
    }
    tx.commit().await.expect("commit");

    let started = Instant::now();
    let relay = Relay::new(producer.db.clone(), bus.connect().await, &outbox, &bus.settings);
    lifecycle.spawn(relay.run(lifecycle.stopping()));
    eventually(PATIENCE, "the backlog reaches the subscriber", || async {
        let (effects, _) = consumer.effects("friends").await;
        (effects == EVENTS as i64).then_some(())
    })
    .await;
    let took = started.elapsed();
    lifecycle.stop();
    lifecycle.tasks_finished().await;
    let bus_file = sqlx::SqlitePool::connect(bus.settings.bus_url.as_str())
        .await
        .expect("open the bus file");
    let publishes = sqlx::query_scalar("SELECT COUNT(DISTINCT published_at) FROM messages")
        .fetch_one(&bus_file)
        .await
        .expect("count publishes");
    Drained {
        took,
        published,
        handled: consumer.subjects_in_order("friends").await,
        publishes,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_subjects_backlog_drains_about_as_fast_as_one_of_many_subjects_and_in_order() {
    let many = drain(false).await;
    let one = drain(true).await;
    eprintln!(
        "{EVENTS} events of one subject: {:?} in {} publishes; of {EVENTS} subjects: {:?} in {} publishes",
        one.took, one.publishes, many.took, many.publishes
    );
    assert_eq!(
        one.handled, one.published,
        "one subject's events are handled in order"
    );
    assert!(
        one.publishes <= (EVENTS / 10) as i64,
        "the relay publishes one subject's backlog in batches: {} publishes",
        one.publishes
    );
    // Batches make both about equal; one event per round trip made the busy subject take
    // tens of times longer. The slack absorbs a loaded machine.
    assert!(
        one.took < many.took * 4 + Duration::from_secs(2),
        "{EVENTS} events of one subject took {:?}, of {EVENTS} subjects {:?}",
        one.took,
        many.took
    );
}

/// Rows of `table` in `db`.
async fn count(db: &Db, table: &str) -> i64 {
    let sql = sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}"));
    dozen_kit::with_pool!(db, pool => sqlx::query_scalar(sql).fetch_one(pool).await).expect("count")
}

/// Run `sql` with `$1` bound to a time older than the retention, and `$2` to `ids` (JSON).
async fn backdate(db: &Db, sql: &str, before: i64, ids: &[String]) {
    let ids = serde_json::to_string(ids).unwrap();
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    match db {
        Db::Sqlite(pool) => sqlx::query(sql)
            .bind(before)
            .bind(ids)
            .execute(pool)
            .await
            .map(drop),
        Db::Postgres(pool) => sqlx::query(sqlx::AssertSqlSafe(
            sql.0
                .replace("json_each($2)", "jsonb_array_elements_text($2::jsonb)"),
        ))
        .bind(before)
        .bind(ids)
        .execute(pool)
        .await
        .map(drop),
    }
    .expect("backdate rows");
}

async fn sent_outbox_rows_and_inbox_entries_older_than_the_retention_go_and_newer_stay(backend: Backend) {
    let mut bus = TestBus::new(Kind::Embedded).await;
    bus.settings.bus_retention = Duration::from_secs(3600);
    let producer = ServiceDb::create(backend).await;
    let consumer = ServiceDb::create(backend).await;
    let lifecycle = Lifecycle::new();
    let subscriber = Subscriber::new(
        "friends",
        &[UserSignedUp::TYPE],
        recording("friends", "only"),
        consumer.db.clone(),
        bus.connect().await,
        &bus.settings,
    );
    for queue in subscriber.open().await.expect("open the queue") {
        lifecycle.spawn(subscriber.clone().consume(queue, lifecycle.stopping()));
    }
    lifecycle.spawn(subscriber.maintain(lifecycle.stopping()));
    let outbox = Outbox::new("signup");
    let relay = Relay::new(producer.db.clone(), bus.connect().await, &outbox, &bus.settings);
    lifecycle.spawn(relay.run(lifecycle.stopping()));

    let ids: Vec<String> = support::publish_signups(&producer.db, &outbox, 20)
        .await
        .iter()
        .map(Uuid::to_string)
        .collect();
    eventually(PATIENCE, "every event is handled", || async {
        (consumer.effects("friends").await.0 == 20).then_some(())
    })
    .await;
    eventually(PATIENCE, "every event is marked sent", || async {
        (dozen_bus::outbox::backlog(&producer.db).await.expect("backlog").0 == 0).then_some(())
    })
    .await;

    // Half of them as if sent and handled two hours ago.
    let two_hours_ago = chrono::Utc::now().timestamp_millis() - 2 * 3600 * 1000;
    let (old, new) = ids.split_at(10);
    backdate(
        &producer.db,
        "UPDATE outbox SET sent_at = $1 WHERE CAST(event_id AS TEXT) IN (SELECT value FROM json_each($2))",
        two_hours_ago,
        old,
    )
    .await;
    backdate(
        &consumer.db,
        "UPDATE inbox SET received_at = $1 WHERE CAST(event_id AS TEXT) IN (SELECT value FROM json_each($2))",
        two_hours_ago,
        old,
    )
    .await;

    eventually(
        PATIENCE,
        "the old outbox rows and inbox entries are removed",
        || async {
            (count(&producer.db, "outbox").await == 10 && count(&consumer.db, "inbox").await == 10)
                .then_some(())
        },
    )
    .await;
    let kept: Vec<String> = dozen_kit::with_pool!(&producer.db, pool => {
        sqlx::query_scalar("SELECT CAST(event_id AS TEXT) FROM outbox ORDER BY seq").fetch_all(pool).await
    })
    .expect("read the outbox");
    assert_eq!(kept, new, "the newer outbox rows stay");
    let kept: Vec<String> = dozen_kit::with_pool!(&consumer.db, pool => {
        sqlx::query_scalar("SELECT CAST(event_id AS TEXT) FROM inbox ORDER BY received_at, event_id").fetch_all(pool).await
    })
    .expect("read the inbox");
    let mut expected = new.to_vec();
    expected.sort();
    let mut kept = kept;
    kept.sort();
    assert_eq!(kept, expected, "the newer inbox entries stay");
    lifecycle.stop();
    lifecycle.tasks_finished().await;
}

dozen_tests::on_both_backends!(sent_outbox_rows_and_inbox_entries_older_than_the_retention_go_and_newer_stay);
