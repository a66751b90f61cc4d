//! Every service on NATS logs in as itself, with the rights `dozen nats-authorization` gives it
//! (the server configuration generated from the event contracts, as deploy/nats ships it): the
//! whole platform's bus starts and its events flow, and one service's login can neither forge
//! another's events, nor read another's queue, nor read the replies meant for another.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dozen_bus::backend::nats::server_authorization;
use dozen_bus::contracts::{self, UserSignedUp};
use dozen_bus::{Bus, BusSettings, BusUrl, Event};
use dozen_kit::lifecycle::Lifecycle;
use dozen_tests::database::Backend;
use dozen_tests::eventually;
use dozen_tests::process::ReservedPort;
use support::{DEADLINE, ServiceDb, recording};

/// A nats-server of the test's own, configured with the generated authorization block.
struct NatsWithLogins {
    child: Child,
    port: ReservedPort,
    namespace: String,
    _folder: tempfile::TempDir,
}

fn password(service: &str) -> String {
    format!("{service}-nats-s3cret")
}

impl NatsWithLogins {
    async fn start() -> Self {
        let folder = tempfile::tempdir().unwrap();
        let namespace = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let config = folder.path().join("authorization.conf");
        std::fs::write(&config, server_authorization(&namespace)).unwrap();
        let port = ReservedPort::new();
        let mut command = Command::new("nats-server");
        command
            .arg("-c")
            .arg(&config)
            .args(["-a", "127.0.0.1", "-p", &port.port.to_string(), "-js", "-sd"])
            .arg(folder.path().join("store"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for service in services() {
            command.env(
                format!("{}_NATS_PASSWORD", service.to_uppercase()),
                password(service),
            );
        }
        let child = command
            .spawn()
            .expect("nats-server (scripts/backing-services installs it)");
        let nats = Self {
            child,
            port,
            namespace,
            _folder: folder,
        };
        eventually(DEADLINE, "the NATS server with logins answers", || async {
            async_nats::ConnectOptions::with_user_and_password("signup".into(), password("signup"))
                .connect(nats.address())
                .await
                .is_ok()
        })
        .await;
        nats
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port.port)
    }

    fn url_of(&self, service: &str) -> String {
        format!("nats://{service}:{}@{}", password(service), self.address())
    }

    fn settings_of(&self, service: &str) -> BusSettings {
        let mut settings = BusSettings::new(BusUrl::Nats(self.url_of(service)));
        settings.bus_namespace.clone_from(&self.namespace);
        settings
    }

    /// A plain client logged in as `service`, whose server errors (permission violations)
    /// are collected.
    async fn client_of(&self, service: &str) -> (async_nats::Client, Arc<Mutex<Vec<String>>>) {
        let errors = Arc::new(Mutex::new(Vec::new()));
        let collected = errors.clone();
        let client =
            async_nats::ConnectOptions::with_user_and_password(service.to_owned(), password(service))
                .custom_inbox_prefix(format!("_INBOX.{}.{service}", self.namespace))
                .event_callback(move |event| {
                    let collected = collected.clone();
                    async move {
                        if let async_nats::Event::ServerError(error) = event {
                            collected.lock().unwrap().push(error.to_string());
                        }
                    }
                })
                .connect(self.address())
                .await
                .unwrap();
        (client, errors)
    }
}

impl Drop for NatsWithLogins {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every service on the bus, from the contracts.
fn services() -> Vec<&'static str> {
    let mut services: Vec<&str> = contracts::all()
        .iter()
        .flat_map(|c| std::iter::once(c.publisher).chain(c.subscribers.iter().copied()))
        .collect();
    services.sort_unstable();
    services.dedup();
    services
}

/// The event types `service` receives.
fn received_by(service: &str) -> Vec<&'static str> {
    contracts::all()
        .into_iter()
        .filter(|c| c.subscribers.contains(&service))
        .map(|c| c.event_type)
        .collect()
}

async fn wait_for_violation(errors: &Mutex<Vec<String>>, what: &str) {
    eventually(Duration::from_secs(30), what, || async {
        errors
            .lock()
            .unwrap()
            .iter()
            .any(|error| error.to_lowercase().contains("permissions violation"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v13_2_2_every_service_runs_on_its_own_nats_login_and_the_events_flow() {
    let nats = NatsWithLogins::start().await;
    let lifecycle = Lifecycle::new();
    let mut running = Vec::new();
    // Each service's bus, as the service starts it: the streams of the events it publishes,
    // and its consumers of those it receives, made and read with its own login only.
    for service in services() {
        let settings = nats.settings_of(service);
        let db = ServiceDb::create(Backend::Sqlite).await;
        let broker = dozen_bus::backend::connect(&settings)
            .await
            .unwrap_or_else(|e| panic!("{service} logs in: {e}"));
        let mut bus = Bus::with_broker(broker, &settings, service, db.db.clone());
        let topics = received_by(service);
        if !topics.is_empty() {
            bus.subscribe(service, &topics, recording(service, "only"));
        }
        bus.start(&lifecycle)
            .await
            .unwrap_or_else(|e| panic!("{service}'s bus starts on its own login: {e}"));
        running.push((service, bus, db));
    }

    // Signup publishes; both subscribers of user.signed_up receive every event, once.
    const EVENTS: i64 = 10;
    let (_, signup, signup_db) = running.iter().find(|(s, ..)| *s == "signup").unwrap();
    support::publish_signups(&signup_db.db, signup.outbox(), EVENTS as usize).await;
    for (service, _, db) in &running {
        if received_by(service).contains(&UserSignedUp::TYPE) {
            // Handled, and acknowledged: nothing left pending on its own consumer.
            let broker = dozen_bus::backend::connect(&nats.settings_of(service))
                .await
                .unwrap();
            let topic = [UserSignedUp::TYPE.to_owned()];
            eventually(DEADLINE, &format!("{service} handled every signup"), || async {
                db.effects(service).await == (EVENTS, EVENTS)
                    && broker
                        .pending(service, &topic)
                        .await
                        .is_ok_and(|pending| pending == 0)
            })
            .await;
        }
    }
    lifecycle.stop();
    lifecycle.tasks_finished().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v13_2_2_a_services_nats_login_cannot_forge_steal_or_eavesdrop() {
    let nats = NatsWithLogins::start().await;
    let namespace = nats.namespace.clone();
    let signed_up_stream = format!("{namespace}_user_signed_up");

    // Verification makes its consumer of user.signed_up, as it does at start.
    let settings = nats.settings_of("verification");
    let db = ServiceDb::create(Backend::Sqlite).await;
    let lifecycle = Lifecycle::new();
    let mut verification = Bus::with_broker(
        dozen_bus::backend::connect(&settings).await.unwrap(),
        &settings,
        "verification",
        db.db.clone(),
    );
    verification.subscribe(
        "verification",
        &received_by("verification"),
        recording("verification", "only"),
    );
    verification.start(&lifecycle).await.unwrap();

    // Friends may not publish an event verification publishes: a forged user.email_verified
    // would open a stranger's login.
    let (friends, errors) = nats.client_of("friends").await;
    let jetstream = async_nats::jetstream::new(friends.clone());
    let forged = async {
        jetstream
            .publish(format!("{namespace}.user.email_verified"), "{}".into())
            .await?
            .await
    };
    let forged = tokio::time::timeout(Duration::from_secs(20), forged).await;
    assert!(
        !matches!(forged, Ok(Ok(_))),
        "friends published user.email_verified"
    );
    wait_for_violation(&errors, "the server refuses friends' forged event").await;

    // Nor read verification's queue: its consumer is not friends' to look at or pull from.
    errors.lock().unwrap().clear();
    let stream = jetstream
        .get_stream(&signed_up_stream)
        .await
        .expect("friends receives user.signed_up too, so it may look at the stream");
    let stolen = tokio::time::timeout(
        Duration::from_secs(20),
        stream.get_consumer::<async_nats::jetstream::consumer::pull::Config>("verification"),
    )
    .await;
    assert!(
        !matches!(stolen, Ok(Ok(_))),
        "friends read verification's consumer"
    );
    wait_for_violation(
        &errors,
        "the server refuses friends a look at verification's queue",
    )
    .await;

    // Nor the replies meant for verification's connections.
    errors.lock().unwrap().clear();
    let _eavesdrop = friends
        .subscribe(format!("_INBOX.{namespace}.verification.>"))
        .await
        .unwrap();
    friends.flush().await.unwrap();
    wait_for_violation(&errors, "the server refuses friends verification's inbox").await;

    // And no connection without a login at all.
    assert!(
        async_nats::connect(nats.address()).await.is_err(),
        "a connection without a login was accepted"
    );
    lifecycle.stop();
    lifecycle.tasks_finished().await;
}

#[test]
fn the_shipped_nats_authorization_matches_the_contracts() {
    // Regenerate with `cargo run -p dozen -- nats-authorization > deploy/nats/authorization.conf`.
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nats/authorization.conf");
    let on_disk = std::fs::read_to_string(&shipped).unwrap_or_default();
    assert!(
        on_disk == server_authorization("dozen"),
        "deploy/nats/authorization.conf differs from the event contracts: regenerate it with \
         `cargo run -p dozen -- nats-authorization > deploy/nats/authorization.conf`"
    );
}
