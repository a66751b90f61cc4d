//! What the bus's tests share: a real broker per test (the embedded bus in a fresh file, NATS
//! JetStream or an SNS/SQS emulator under a unique namespace that is deleted afterwards), service databases with
//! the bus's tables, an `effects` table handlers write to, and waiting without timing.
#![allow(dead_code, clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use dozen_bus::contracts::UserSignedUp;
use dozen_bus::{Broker, BusSettings, BusUrl, Envelope, Handler, Outbox, Tx, TxConn, handler};
use dozen_kit::db::{DatabaseUrl, Db};
use dozen_tests::database::{Backend, TestDatabase};
use dozen_tests::eventually;
use dozen_tests::sns_sqs::SnsSqsNamespace;
use uuid::Uuid;

/// Which broker a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Embedded,
    Nats,
    SnsSqs,
}

/// How many events a scenario sends: `full` on real brokers, `on_the_emulator` on the SNS/SQS
/// emulator, a Python server (moto) whose calls slow down with the depth of a queue (it scans
/// the queue's messages on every call): tens of events a second, against thousands.
pub fn volume(kind: Kind, full: i64, on_the_emulator: i64) -> i64 {
    match kind {
        Kind::SnsSqs => on_the_emulator,
        Kind::Embedded | Kind::Nats => full,
    }
}

/// Generous: waits end as soon as their condition holds.
pub const DEADLINE: Duration = Duration::from_secs(180);

/// A broker that exists for one test.
#[derive(Debug)]
pub struct TestBus {
    pub kind: Kind,
    pub settings: BusSettings,
    _folder: tempfile::TempDir,
    /// A nats-server this test started because none was reachable.
    nats_server: Option<Child>,
    /// The SNS/SQS namespace, deleted with the bus.
    pub sns_sqs: Option<SnsSqsNamespace>,
}

/// The NATS server tests use: `TEST_NATS_URL`, or the local default.
fn nats_url() -> String {
    std::env::var("TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

async fn nats_reachable(url: &str) -> bool {
    let connecting = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(url);
    matches!(
        tokio::time::timeout(Duration::from_secs(3), connecting).await,
        Ok(Ok(_))
    )
}

impl TestBus {
    /// A bus on a NATS server of its own, which the test may kill and restart.
    pub async fn on_own_nats_server() -> (Self, u16) {
        let mut bus = Self::new(Kind::Embedded).await;
        let (child, url) = start_nats_server(bus._folder.path()).await;
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("a port");
        bus.kind = Kind::Nats;
        bus.nats_server = Some(child);
        bus.settings.bus_url = BusUrl::Nats(url);
        (bus, port)
    }

    /// Kill -9 its own NATS server, and start it again on the same port and store.
    pub async fn restart_nats_server(&mut self, port: u16) {
        let mut child = self.nats_server.take().expect("a NATS server of the test's own");
        child.kill().expect("kill -9 nats-server");
        child.wait().expect("reap nats-server");
        self.nats_server = Some(start_nats_server_on(self._folder.path(), port));
        let url = format!("nats://127.0.0.1:{port}");
        eventually(DEADLINE, "the restarted NATS server answers", || async {
            nats_reachable(&url).await
        })
        .await;
    }

    pub async fn new(kind: Kind) -> Self {
        let folder = tempfile::tempdir().expect("a temporary folder");
        let namespace = format!("t{}", &Uuid::new_v4().simple().to_string()[..12]);
        let mut nats_server = None;
        let mut sns_sqs = None;
        let url = match kind {
            Kind::Embedded => {
                BusUrl::Embedded(format!("sqlite://{}", folder.path().join("bus.db").display()))
            }
            Kind::Nats => {
                let mut url = nats_url();
                if !nats_reachable(&url).await {
                    let (child, started) = start_nats_server(folder.path()).await;
                    nats_server = Some(child);
                    url = started;
                }
                BusUrl::Nats(url)
            }
            Kind::SnsSqs => {
                let emulated = SnsSqsNamespace::new("t").await;
                let url = BusUrl::parse(&emulated.bus_url).expect("an sns+sqs URL");
                sns_sqs = Some(emulated);
                url
            }
        };
        let mut settings = BusSettings::new(url);
        settings.bus_namespace = match &sns_sqs {
            Some(emulated) => emulated.namespace.clone(),
            None => namespace,
        };
        settings.bus_max_attempts = 3;
        settings.bus_retry_backoff = Duration::from_millis(50);
        settings.bus_retry_backoff_max = Duration::from_millis(200);
        // Short, so that work left by a killed process comes back quickly.
        settings.bus_ack_wait = Duration::from_secs(3);
        settings.bus_poll_interval = Duration::from_millis(200);
        Self {
            kind,
            settings,
            _folder: folder,
            nats_server,
            sns_sqs,
        }
    }

    /// A fresh connection to the broker, as a separate process would have.
    pub async fn connect(&self) -> Arc<dyn Broker> {
        dozen_bus::backend::connect(&self.settings)
            .await
            .expect("connect to the test broker")
    }

    /// The environment a child process needs to reach the same broker.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("BUS_URL".into(), self.settings.bus_url.as_str().to_owned()),
            ("BUS_NAMESPACE".into(), self.settings.bus_namespace.clone()),
        ]
    }
}

/// Settings for a child process from its environment, as in `TestBus::new`.
pub fn settings_from_env() -> BusSettings {
    let url = BusUrl::parse(&std::env::var("BUS_URL").expect("BUS_URL")).expect("a bus URL");
    let mut settings = BusSettings::new(url);
    settings.bus_namespace = std::env::var("BUS_NAMESPACE").expect("BUS_NAMESPACE");
    settings.bus_max_attempts = 3;
    settings.bus_retry_backoff = Duration::from_millis(50);
    settings.bus_retry_backoff_max = Duration::from_millis(200);
    settings.bus_ack_wait = Duration::from_secs(3);
    settings.bus_poll_interval = Duration::from_millis(200);
    settings
}

/// A nats-server of this test's own on a free port, storing under `folder`.
pub async fn start_nats_server(folder: &std::path::Path) -> (Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let child = start_nats_server_on(folder, port);
    let url = format!("nats://127.0.0.1:{port}");
    eventually(
        DEADLINE,
        "the NATS server started by the test answers",
        || async { nats_reachable(&url).await },
    )
    .await;
    (child, url)
}

/// Start nats-server on `port` with its store under `folder` (again, after a kill).
pub fn start_nats_server_on(folder: &std::path::Path, port: u16) -> Child {
    Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(folder.join("nats"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect(
            "no NATS server is reachable and nats-server cannot be started (install it or set TEST_NATS_URL)",
        )
}

impl Drop for TestBus {
    fn drop(&mut self) {
        if let Some(mut child) = self.nats_server.take() {
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        let BusUrl::Nats(url) = self.settings.bus_url.clone() else {
            return;
        };
        let prefix = format!("{}_", self.settings.bus_namespace);
        // Drop may run inside a runtime: delete the test's streams on a thread of its own.
        let cleaned = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                use futures_util::StreamExt;
                let client = async_nats::connect(&url).await.ok()?;
                let jetstream = async_nats::jetstream::new(client);
                let names: Vec<String> = jetstream
                    .stream_names()
                    .filter_map(|name| async move { name.ok() })
                    .collect()
                    .await;
                for name in names.into_iter().filter(|name| name.starts_with(&prefix)) {
                    jetstream.delete_stream(&name).await.ok()?;
                }
                Some(())
            })
        })
        .join();
        if !matches!(cleaned, Ok(Some(()))) {
            eprintln!("warning: could not delete a test's NATS streams");
        }
    }
}

/// A service's database for one test, with the bus's tables and an `effects` table.
#[derive(Debug)]
pub struct ServiceDb {
    pub db: Db,
    pub database: TestDatabase,
}

impl ServiceDb {
    pub async fn create(backend: Backend) -> Self {
        let database = TestDatabase::create(backend).await;
        let db = open(&database.url).await;
        db.migrate(&[&dozen_bus::MIGRATIONS, &dozen_kit::figures::MIGRATIONS])
            .await
            .expect("bus migrations apply");
        let effects = match backend {
            Backend::Sqlite => {
                "CREATE TABLE effects (id INTEGER PRIMARY KEY AUTOINCREMENT, subscriber TEXT NOT NULL,
                 event_id TEXT NOT NULL, subject TEXT NOT NULL, instance TEXT NOT NULL)"
            }
            Backend::Postgres => {
                "CREATE TABLE effects (id BIGSERIAL PRIMARY KEY, subscriber TEXT NOT NULL,
                 event_id TEXT NOT NULL, subject TEXT NOT NULL, instance TEXT NOT NULL)"
            }
        };
        match &db {
            Db::Sqlite(pool) => sqlx::query(effects).execute(pool).await.map(drop),
            Db::Postgres(pool) => sqlx::query(effects).execute(pool).await.map(drop),
        }
        .expect("create the effects table");
        Self { db, database }
    }

    /// Effects `subscriber` had: (all, distinct events).
    pub async fn effects(&self, subscriber: &str) -> (i64, i64) {
        const SQL: &str = "SELECT COUNT(*), COUNT(DISTINCT event_id) FROM effects WHERE subscriber = $1";
        match &self.db {
            Db::Sqlite(pool) => sqlx::query_as(SQL).bind(subscriber).fetch_one(pool).await,
            Db::Postgres(pool) => sqlx::query_as(SQL).bind(subscriber).fetch_one(pool).await,
        }
        .expect("count effects")
    }

    /// Effects `subscriber` had per instance.
    pub async fn effects_by_instance(&self, subscriber: &str) -> Vec<(String, i64)> {
        const SQL: &str = "SELECT instance, COUNT(*) FROM effects WHERE subscriber = $1 GROUP BY instance ORDER BY instance";
        match &self.db {
            Db::Sqlite(pool) => sqlx::query_as(SQL).bind(subscriber).fetch_all(pool).await,
            Db::Postgres(pool) => sqlx::query_as(SQL).bind(subscriber).fetch_all(pool).await,
        }
        .expect("count effects by instance")
    }

    /// The effects' subjects in the order they were written.
    pub async fn subjects_in_order(&self, subscriber: &str) -> Vec<String> {
        const SQL: &str = "SELECT subject FROM effects WHERE subscriber = $1 ORDER BY id";
        match &self.db {
            Db::Sqlite(pool) => sqlx::query_scalar(SQL).bind(subscriber).fetch_all(pool).await,
            Db::Postgres(pool) => sqlx::query_scalar(SQL).bind(subscriber).fetch_all(pool).await,
        }
        .expect("read effects")
    }

    /// Whether `subscriber` had an effect for `event_id`.
    pub async fn has_effect(&self, subscriber: &str, event_id: Uuid) -> bool {
        const SQL: &str = "SELECT COUNT(*) FROM effects WHERE subscriber = $1 AND event_id = $2";
        let count: i64 = match &self.db {
            Db::Sqlite(pool) => {
                sqlx::query_scalar(SQL)
                    .bind(subscriber)
                    .bind(event_id.to_string())
                    .fetch_one(pool)
                    .await
            }
            Db::Postgres(pool) => {
                sqlx::query_scalar(SQL)
                    .bind(subscriber)
                    .bind(event_id.to_string())
                    .fetch_one(pool)
                    .await
            }
        }
        .expect("count effects");
        count > 0
    }
}

pub async fn open(url: &str) -> Db {
    let url = DatabaseUrl::parse(url).expect("a database URL");
    Db::connect(&url, 8).await.expect("open the test database")
}

/// Write the effect of `event` for `subscriber` in `tx`, as a real handler would.
pub async fn write_effect(
    tx: &mut Tx,
    subscriber: &str,
    instance: &str,
    event: &Envelope,
) -> anyhow::Result<()> {
    const SQL: &str = "INSERT INTO effects (subscriber, event_id, subject, instance) VALUES ($1, $2, $3, $4)";
    match tx.conn() {
        TxConn::Sqlite(conn) => {
            sqlx::query(SQL)
                .bind(subscriber)
                .bind(event.id.to_string())
                .bind(&event.subject)
                .bind(instance)
                .execute(conn)
                .await?;
        }
        TxConn::Postgres(conn) => {
            sqlx::query(SQL)
                .bind(subscriber)
                .bind(event.id.to_string())
                .bind(&event.subject)
                .bind(instance)
                .execute(conn)
                .await?;
        }
    }
    Ok(())
}

/// A handler that records one effect per event.
pub fn recording(subscriber: &str, instance: &str) -> Handler {
    let subscriber: Arc<str> = subscriber.into();
    let instance: Arc<str> = instance.into();
    handler(move |tx, event| {
        let subscriber = subscriber.clone();
        let instance = instance.clone();
        Box::pin(async move { write_effect(tx, &subscriber, &instance, event).await })
    })
}

/// A signup event for a new random user.
pub fn signed_up(n: usize) -> UserSignedUp {
    UserSignedUp {
        user_id: Uuid::now_v7(),
        email: format!("user{n}@example.test"),
        display_name: format!("User {n}"),
        interests: vec!["climbing".into()],
        replaces: None,
    }
}

/// Publish `count` signups through `outbox` in `db`, committing in batches; their ids.
pub async fn publish_signups(db: &Db, outbox: &Outbox, count: usize) -> Vec<Uuid> {
    let mut ids = Vec::with_capacity(count);
    let mut n = 0;
    while n < count {
        let mut tx = Tx::begin(db).await.expect("begin");
        for _ in 0..500.min(count - n) {
            let envelope = outbox.publish(&mut tx, &signed_up(n)).await.expect("publish");
            ids.push(envelope.id);
            n += 1;
        }
        tx.commit().await.expect("commit");
    }
    ids
}

/// Logs and traces for this test process, set up once and kept to its end (several tests
/// of one process share the global subscriber; an early shutdown would end everyone's traces).
pub fn telemetry() {
    static GUARD: std::sync::OnceLock<dozen_kit::telemetry::TelemetryGuard> = std::sync::OnceLock::new();
    GUARD.get_or_init(|| {
        dozen_kit::telemetry::init(
            "bus-test",
            &dozen_kit::config::TelemetrySettings {
                log_format: dozen_kit::config::LogFormat::Json,
                log_level: Some("warn,dozen_bus=info,delivery=info".to_owned()),
                otlp_endpoint: None,
            },
        )
        .expect("telemetry")
    });
}
