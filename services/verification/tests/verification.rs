//! The verification service through its real binary, on SQLite and on Postgres, with the
//! embedded bus: events go in as the signup service would publish them, mail comes out in the
//! file mailbox (or at a real SMTP server), and `user.email_verified` is read back off the bus
//! by a subscriber standing in for the users service.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use dozen_bus::contracts::{UserEmailVerified, UserPasswordChanged, UserSignedUp, UserSignupConflict};
use dozen_bus::{Broker, BusSettings, BusUrl, Envelope, Event, Subscriber, handler};
use dozen_kit::db::{DatabaseUrl, Db};
use dozen_kit::lifecycle::Lifecycle;
use dozen_kit::with_pool;
use dozen_tests::database::{Backend, TestDatabase};
use dozen_tests::process::{ReservedPort, Service, closed_port, run_to_exit};
use dozen_tests::{eventually, on_both_backends};
use nix::sys::signal::Signal;
use serde_json::Value;
use uuid::Uuid;

/// Generous: waits end as soon as their condition holds.
const DEADLINE: Duration = Duration::from_secs(120);

/// The service under test, its database, its bus and its mailbox.
struct Verification {
    service: Service,
    env: Vec<(String, String)>,
    client: reqwest::Client,
    /// The service's own database, read to check what it stores.
    db: Db,
    /// A connection to the same embedded bus, to publish as the signup service would.
    broker: Arc<dyn Broker>,
    bus_settings: BusSettings,
    mailbox: PathBuf,
    folder: tempfile::TempDir,
    _database: TestDatabase,
}

const PUBLIC_URL: &str = "http://dozen.test:8080";

impl Verification {
    /// Migrate and start the service with `extra` settings on top of the test defaults.
    async fn start(backend: Backend, extra: &[(&str, &str)]) -> Self {
        let database = TestDatabase::create(backend).await;
        let folder = tempfile::tempdir().expect("a temporary folder");
        let bus_url = format!("sqlite://{}", folder.path().join("bus.db").display());
        let mailbox = folder.path().join("mailbox");
        let mut env: Vec<(String, String)> = vec![
            ("DATABASE_URL".into(), database.url.clone()),
            ("BUS_URL".into(), bus_url.clone()),
            // Short, so that work held by a killed process comes back quickly.
            ("BUS_ACK_WAIT".into(), "2s".into()),
            ("BUS_POLL_INTERVAL".into(), "100ms".into()),
            ("MAIL_TIMEOUT".into(), "2s".into()),
            ("MAIL_URL".into(), format!("file://{}", mailbox.display())),
            // The dev mailbox is read on Postgres too: a test platform.
            ("DEV_MAILBOX_ALLOW_PRODUCTION_BACKENDS".into(), "true".into()),
            ("PUBLIC_URL".into(), PUBLIC_URL.into()),
        ];
        for (name, value) in extra {
            env.retain(|(existing, _)| existing != name);
            env.push(((*name).to_owned(), (*value).to_owned()));
        }
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let migrated = run_to_exit("dozen-verification", &["migrate"], &pairs).await;
        assert!(migrated.status.success(), "{migrated:?}");
        let service = Service::start("dozen-verification", &pairs).await;
        let db = Db::connect(&DatabaseUrl::parse(&database.url).expect("a database URL"), 2)
            .await
            .expect("open the service's database");
        let mut bus_settings = BusSettings::new(BusUrl::parse(&bus_url).expect("a bus URL"));
        bus_settings.bus_ack_wait = Duration::from_secs(2);
        bus_settings.bus_poll_interval = Duration::from_millis(100);
        let broker = dozen_bus::backend::connect(&bus_settings)
            .await
            .expect("connect to the bus");
        Self {
            service,
            env,
            client: reqwest::Client::new(),
            db,
            broker,
            bus_settings,
            mailbox,
            folder,
            _database: database,
        }
    }

    /// Another process of the same service, on the same database, bus and mailbox.
    async fn another_instance(&self) -> Service {
        let pairs: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Service::start("dozen-verification", &pairs).await
    }

    /// Kill the process with SIGKILL (nothing is finished or handed back), then start it again.
    async fn kill_and_restart(&mut self) {
        self.service.process.signal(Signal::SIGKILL);
        self.service.process.wait(Duration::from_secs(30)).await;
        self.service = self.another_instance().await;
    }

    /// Publish `envelope` on the bus, as the signup service's relay would.
    async fn publish(&self, envelope: &Envelope) {
        self.broker
            .publish(std::slice::from_ref(envelope))
            .await
            .expect("publish on the bus");
    }

    async fn sign_up(&self, user_id: Uuid, email: &str) -> Envelope {
        self.sign_up_replacing(user_id, email, None).await
    }

    /// Publish a `user.signed_up` for `user_id` that replaced the account `replaces`.
    async fn sign_up_replacing(&self, user_id: Uuid, email: &str, replaces: Option<Uuid>) -> Envelope {
        let event = UserSignedUp {
            user_id,
            email: email.to_owned(),
            display_name: "Ann Lee".to_owned(),
            interests: vec!["chess".to_owned()],
            replaces,
        };
        let envelope = Envelope::new("signup", &event).expect("an envelope");
        self.publish(&envelope).await;
        envelope
    }

    /// Every event published to the service's queue has been handled (acknowledged).
    async fn handled_everything(&self) -> bool {
        let topics = [UserSignedUp::TYPE.to_owned(), UserSignupConflict::TYPE.to_owned()];
        self.broker
            .pending("verification", &topics)
            .await
            .expect("read the queue depth")
            == 0
    }

    /// The dev mailbox, newest first.
    async fn mailbox(&self) -> Vec<Value> {
        let answer = self
            .client
            .get(self.service.url("/mailbox"))
            .send()
            .await
            .expect("GET /mailbox");
        assert_eq!(answer.status(), 200);
        answer.json().await.expect("a list of messages")
    }

    async fn mails_to(&self, email: &str) -> Vec<Value> {
        self.mailbox()
            .await
            .into_iter()
            .filter(|mail| mail["to"] == email)
            .collect()
    }

    /// Wait until `email` has `count` mails, and return them, newest first.
    async fn wait_for_mails(&self, email: &str, count: usize) -> Vec<Value> {
        eventually(DEADLINE, &format!("{email} has {count} mail(s)"), || async {
            self.mails_to(email).await.len() >= count
        })
        .await;
        self.mails_to(email).await
    }

    /// Wait until no queued mail is left unsent in the service's database.
    async fn wait_for_mail_sent(&self) {
        eventually(DEADLINE, "every queued mail is sent", || async {
            let (unsent,): (i64,) = with_pool!(&self.db, pool => sqlx::query_as(
                "SELECT COUNT(*) FROM mails WHERE sent_at IS NULL AND failed_at IS NULL",
            )
            .fetch_one(pool)
            .await)
            .expect("count unsent mails");
            unsent == 0
        })
        .await;
    }

    async fn verify(&self, token: &str) -> reqwest::Response {
        self.client
            .post(self.service.url(&format!("/verifications/{token}")))
            .send()
            .await
            .expect("POST /verifications/{token}")
    }

    async fn resend(&self, email: &str) -> reqwest::Response {
        self.client
            .post(self.service.url("/verifications/resend"))
            .json(&serde_json::json!({ "email": email }))
            .send()
            .await
            .expect("POST /verifications/resend")
    }

    /// Files in the mailbox folder (temporary files included, to catch leftovers).
    fn mailbox_files(&self) -> Vec<String> {
        std::fs::read_dir(&self.mailbox)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|entry| entry.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The token in a verification mail's link.
fn token_in(mail: &Value) -> String {
    let body = mail["body"].as_str().expect("a body");
    let prefix = format!("{PUBLIC_URL}/verify?token=");
    let start = body
        .find(&prefix)
        .unwrap_or_else(|| panic!("no link in {body:?}"))
        + prefix.len();
    body[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}

/// A subscriber to `user.email_verified` on the same bus, standing in for the users service:
/// what it records is what the verification service published.
struct VerifiedProbe {
    received: Arc<Mutex<Vec<UserEmailVerified>>>,
    lifecycle: Lifecycle,
}

impl VerifiedProbe {
    async fn start(verification: &Verification) -> Self {
        let path = verification.folder.path().join("probe.db");
        let db = Db::connect(&DatabaseUrl::Sqlite(format!("sqlite://{}", path.display())), 2)
            .await
            .expect("open the probe's database");
        db.migrate(&[&dozen_bus::MIGRATIONS])
            .await
            .expect("migrate the probe's database");
        let received = Arc::new(Mutex::new(Vec::new()));
        let recorder = received.clone();
        let subscriber = Subscriber::new(
            "users",
            &[UserEmailVerified::TYPE],
            handler(move |_tx, event| {
                let recorder = recorder.clone();
                Box::pin(async move {
                    let verified: UserEmailVerified = event.decode()?;
                    recorder.lock().expect("lock").push(verified);
                    Ok(())
                })
            }),
            db,
            verification.broker.clone(),
            &verification.bus_settings,
        );
        let lifecycle = Lifecycle::new();
        for queue in subscriber.open().await.expect("open the probe's queue") {
            lifecycle.spawn(subscriber.clone().consume(queue, lifecycle.stopping()));
        }
        Self { received, lifecycle }
    }

    fn received(&self) -> Vec<UserEmailVerified> {
        self.received.lock().expect("lock").clone()
    }

    async fn stop(self) {
        self.lifecycle.stop();
        self.lifecycle.tasks_finished().await;
    }
}

async fn a_signup_gets_exactly_one_mail_whose_link_verifies_once(backend: Backend) {
    let verification = Verification::start(backend, &[]).await;
    let probe = VerifiedProbe::start(&verification).await;
    let ann = Uuid::now_v7();
    let envelope = verification.sign_up(ann, "ann@example.com").await;
    // The same event delivered twice, and the signup announced twice (another event id).
    verification.publish(&envelope).await;
    verification.sign_up(ann, "ann@example.com").await;
    eventually(DEADLINE, "every event is handled", || {
        verification.handled_everything()
    })
    .await;
    verification.wait_for_mail_sent().await;

    let mails = verification.wait_for_mails("ann@example.com", 1).await;
    assert_eq!(mails.len(), 1, "exactly one mail: {mails:?}");
    let mail = &mails[0];
    for field in ["id", "to", "subject", "body", "sent_at"] {
        assert!(!mail[field].is_null(), "{field} is there: {mail}");
    }
    let token = token_in(mail);
    assert!(token.len() >= 43, "at least 128 random bits: {token}");

    // Only the hash is kept; the mail's body is forgotten once sent.
    let (stored_hash, kept_body): (Vec<u8>, Option<String>) =
        with_pool!(&verification.db, pool => sqlx::query_as(
        "SELECT t.token_hash, m.body FROM verification_tokens t, mails m",
    )
    .fetch_one(pool)
    .await)
        .expect("the token and its mail");
    assert_ne!(stored_hash, token.as_bytes());
    assert_eq!(stored_hash.len(), 32, "a SHA-256");
    assert_eq!(kept_body, None);

    let verified = verification.verify(&token).await;
    assert_eq!(verified.status(), 200);
    assert_eq!(
        verified.json::<Value>().await.expect("JSON"),
        serde_json::json!({ "status": "verified" })
    );

    let again = verification.verify(&token).await;
    assert_eq!(again.status(), 404, "a token works once");
    assert_eq!(again.headers()["content-type"], "application/problem+json");

    eventually(DEADLINE, "user.email_verified arrives", || async {
        !probe.received().is_empty()
    })
    .await;
    let received = probe.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].user_id, ann);
    assert_eq!(received[0].email, "ann@example.com");
    let (published,): (i64,) = with_pool!(&verification.db, pool => sqlx::query_as(
        "SELECT COUNT(*) FROM outbox WHERE topic = 'user.email_verified'",
    )
    .fetch_one(pool)
    .await)
    .expect("count published events");
    assert_eq!(published, 1, "published exactly once");
    probe.stop().await;

    let mut verification = verification;
    verification.service.process.signal(Signal::SIGTERM);
    let status = verification.service.process.wait(Duration::from_secs(60)).await;
    assert!(status.success(), "a clean stop: {status}");
}
on_both_backends!(a_signup_gets_exactly_one_mail_whose_link_verifies_once);

async fn a_service_killed_right_after_a_signup_still_sends_exactly_one_mail(backend: Backend) {
    let mut verification = Verification::start(backend, &[]).await;
    let mut addresses = Vec::new();
    // Killed at different moments: before, during and after handling and sending.
    for (round, pause_ms) in [0u64, 5, 20, 50, 150].into_iter().enumerate() {
        let email = format!("user{round}@example.com");
        verification.sign_up(Uuid::now_v7(), &email).await;
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        verification.kill_and_restart().await;
        addresses.push(email);
    }
    eventually(DEADLINE, "every event is handled", || {
        verification.handled_everything()
    })
    .await;
    verification.wait_for_mail_sent().await;
    for email in &addresses {
        let mails = verification.wait_for_mails(email, 1).await;
        assert_eq!(mails.len(), 1, "{email}: exactly one mail: {mails:?}");
    }
    let files = verification.mailbox_files();
    assert_eq!(
        files.len(),
        addresses.len(),
        "one file per mail, no leftovers: {files:?}"
    );
}
on_both_backends!(a_service_killed_right_after_a_signup_still_sends_exactly_one_mail);

async fn expired_unknown_and_malformed_tokens_are_refused_alike(backend: Backend) {
    let verification = Verification::start(backend, &[("TOKEN_TTL", "1s")]).await;
    verification.sign_up(Uuid::now_v7(), "ann@example.com").await;
    let mails = verification.wait_for_mails("ann@example.com", 1).await;
    let token = token_in(&mails[0]);
    assert!(
        mails[0]["body"]
            .as_str()
            .expect("a body")
            .contains("expires in 1 second")
    );
    // Let the token expire (a wait for time to pass, not a timing assertion).
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let expired = verification.verify(&token).await;
    assert_eq!(expired.status(), 404, "an expired token is refused");
    let expired: Value = expired.json().await.expect("a problem");

    let unknown = verification.verify(&"0".repeat(64)).await;
    assert_eq!(unknown.status(), 404);
    assert_eq!(
        unknown.json::<Value>().await.expect("a problem"),
        expired,
        "an unknown token gets the same answer as an expired one"
    );
    for garbage in [
        "nope".to_owned(),
        "A".repeat(64),
        "g".repeat(64),
        "a".repeat(65),
        "a".repeat(5000),
        "%27%20OR%201%3D1".to_owned(),
    ] {
        let answer = verification.verify(&garbage).await;
        assert_eq!(answer.status(), 404, "{garbage}");
        assert_eq!(
            answer.headers()["content-type"],
            "application/problem+json",
            "{garbage}"
        );
    }
    let (used,): (i64,) = with_pool!(&verification.db, pool => sqlx::query_as(
        "SELECT COUNT(*) FROM verification_tokens WHERE used_at IS NOT NULL",
    )
    .fetch_one(pool)
    .await)
    .expect("count used tokens");
    assert_eq!(used, 0, "nothing was verified");
}
on_both_backends!(expired_unknown_and_malformed_tokens_are_refused_alike);

async fn a_conflicting_signup_mails_the_owner_a_notice_without_a_link(backend: Backend) {
    let verification = Verification::start(backend, &[]).await;
    let event = UserSignupConflict {
        user_id: Uuid::now_v7(),
        email: "ann@example.com".to_owned(),
        attempted_at: Utc::now(),
    };
    let envelope = Envelope::new("signup", &event).expect("an envelope");
    verification.publish(&envelope).await;
    verification.publish(&envelope).await;
    eventually(DEADLINE, "every event is handled", || {
        verification.handled_everything()
    })
    .await;
    verification.wait_for_mail_sent().await;
    let mails = verification.wait_for_mails("ann@example.com", 1).await;
    assert_eq!(mails.len(), 1, "{mails:?}");
    let body = mails[0]["body"].as_str().expect("a body");
    assert!(!body.contains("verify?token="), "no link: {body}");
    assert!(!body.contains("http"), "no link: {body}");
    assert!(
        mails[0]["subject"]
            .as_str()
            .expect("a subject")
            .contains("tried to sign up"),
        "{}",
        mails[0]
    );
    let (tokens,): (i64,) =
        with_pool!(&verification.db, pool => sqlx::query_as("SELECT COUNT(*) FROM verification_tokens")
            .fetch_one(pool)
            .await)
        .expect("count tokens");
    assert_eq!(tokens, 0, "no token for a notice");
}
on_both_backends!(a_conflicting_signup_mails_the_owner_a_notice_without_a_link);

async fn a_resend_mails_a_new_link_that_replaces_the_old_one_until_throttled(backend: Backend) {
    let verification =
        Verification::start(backend, &[("RESEND_INTERVAL", "0s"), ("RESEND_DAILY_LIMIT", "2")]).await;
    verification.sign_up(Uuid::now_v7(), "ann@example.com").await;
    let first = token_in(&verification.wait_for_mails("ann@example.com", 1).await[0]);

    let resent = verification.resend(" Ann@Example.com ").await;
    assert_eq!(resent.status(), 202);
    assert_eq!(resent.json::<Value>().await.expect("JSON")["status"], "accepted");
    let mails = verification.wait_for_mails("ann@example.com", 2).await;
    let second = token_in(&mails[0]);
    assert_ne!(first, second, "the newest mail carries a new link");

    // The daily limit (2, the first mail included) is reached: accepted, nothing sent. An
    // address without an account gets the same answer.
    assert_eq!(verification.resend("ann@example.com").await.status(), 202);
    assert_eq!(verification.resend("nobody@example.com").await.status(), 202);
    // A later mail to someone else shows the sender got past anything queued before it.
    verification.sign_up(Uuid::now_v7(), "bob@example.com").await;
    verification.wait_for_mails("bob@example.com", 1).await;
    verification.wait_for_mail_sent().await;
    assert_eq!(
        verification.mails_to("ann@example.com").await.len(),
        2,
        "throttled"
    );
    assert!(verification.mails_to("nobody@example.com").await.is_empty());

    assert_eq!(
        verification.verify(&first).await.status(),
        404,
        "the old link stopped working"
    );
    assert_eq!(verification.verify(&second).await.status(), 200);

    let invalid = verification.resend("not an address").await;
    assert_eq!(invalid.status(), 422);
    assert_eq!(invalid.headers()["content-type"], "application/problem+json");
}
on_both_backends!(a_resend_mails_a_new_link_that_replaces_the_old_one_until_throttled);

async fn a_verified_address_gets_no_more_links(backend: Backend) {
    let verification = Verification::start(backend, &[("RESEND_INTERVAL", "0s")]).await;
    verification.sign_up(Uuid::now_v7(), "ann@example.com").await;
    let token = token_in(&verification.wait_for_mails("ann@example.com", 1).await[0]);
    assert_eq!(verification.verify(&token).await.status(), 200);
    assert_eq!(verification.resend("ann@example.com").await.status(), 202);
    verification.sign_up(Uuid::now_v7(), "bob@example.com").await;
    verification.wait_for_mails("bob@example.com", 1).await;
    verification.wait_for_mail_sent().await;
    assert_eq!(verification.mails_to("ann@example.com").await.len(), 1);
}
on_both_backends!(a_verified_address_gets_no_more_links);

async fn a_replaced_account_gets_no_working_link_whatever_order_the_events_arrive_in(backend: Backend) {
    let verification = Verification::start(backend, &[("RESEND_INTERVAL", "0s")]).await;
    // In order: the earlier account's link is revoked by the replacement.
    let (earlier, newer) = (Uuid::now_v7(), Uuid::now_v7());
    verification.sign_up(earlier, "ann@example.com").await;
    let earlier_link = token_in(&verification.wait_for_mails("ann@example.com", 1).await[0]);
    verification
        .sign_up_replacing(newer, "ann@example.com", Some(earlier))
        .await;
    let newer_link = token_in(&verification.wait_for_mails("ann@example.com", 2).await[0]);
    assert_eq!(verification.verify(&earlier_link).await.status(), 404);
    assert_eq!(verification.verify(&newer_link).await.status(), 200);

    // Out of order: the replacement comes before the replaced account's own event, which
    // then mails nothing; a resend goes to the account that replaced it.
    let (earlier, newer) = (Uuid::now_v7(), Uuid::now_v7());
    verification
        .sign_up_replacing(newer, "bob@example.com", Some(earlier))
        .await;
    verification.wait_for_mails("bob@example.com", 1).await;
    verification.sign_up(earlier, "bob@example.com").await;
    eventually(DEADLINE, "every event is handled", || {
        verification.handled_everything()
    })
    .await;
    verification.wait_for_mail_sent().await;
    assert_eq!(
        verification.mails_to("bob@example.com").await.len(),
        1,
        "none for the replaced account"
    );
    assert_eq!(verification.resend("bob@example.com").await.status(), 202);
    let resent = token_in(&verification.wait_for_mails("bob@example.com", 2).await[0]);
    assert_eq!(
        verification.verify(&resent).await.status(),
        200,
        "the resent link is the newer account's"
    );
}
on_both_backends!(a_replaced_account_gets_no_working_link_whatever_order_the_events_arrive_in);

async fn several_instances_send_each_mail_once(backend: Backend) {
    const SIGNUPS: usize = 30;
    let verification = Verification::start(backend, &[]).await;
    let _second = verification.another_instance().await;
    let _third = verification.another_instance().await;
    for n in 0..SIGNUPS {
        verification
            .sign_up(Uuid::now_v7(), &format!("user{n}@example.com"))
            .await;
    }
    eventually(DEADLINE, "every event is handled", || {
        verification.handled_everything()
    })
    .await;
    verification.wait_for_mail_sent().await;
    eventually(DEADLINE, "every mail is in the mailbox", || async {
        verification.mailbox().await.len() >= SIGNUPS
    })
    .await;
    let mailbox = verification.mailbox().await;
    let recipients: HashSet<String> = mailbox
        .iter()
        .map(|mail| mail["to"].as_str().expect("an address").to_owned())
        .collect();
    assert_eq!(mailbox.len(), SIGNUPS);
    assert_eq!(recipients.len(), SIGNUPS, "one mail per address");
    let times: Vec<&str> = mailbox
        .iter()
        .map(|m| m["sent_at"].as_str().expect("a time"))
        .collect();
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(times, sorted, "newest first");
}
on_both_backends!(several_instances_send_each_mail_once);

/// An aiosmtpd server on a reserved port, saving what it receives in a Maildir.
struct SmtpServer {
    child: std::process::Child,
    port: u16,
    maildir: PathBuf,
}

impl SmtpServer {
    async fn start(folder: &Path) -> Self {
        Self::start_on(folder, &ReservedPort::new()).await
    }

    /// Start it on `port`, which aiosmtpd may listen on while it stays reserved (see
    /// [`ReservedPort`]): it cannot say which port it got when given 0.
    async fn start_on(folder: &Path, port: &ReservedPort) -> Self {
        let port = port.port;
        // Installed once per test binary when missing (tests run in parallel).
        static INSTALL: std::sync::Once = std::sync::Once::new();
        INSTALL.call_once(|| {
            let have_it = std::process::Command::new("python3")
                .args(["-c", "import aiosmtpd"])
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|status| status.success());
            if !have_it {
                let installed = std::process::Command::new("python3")
                    .args([
                        "-m",
                        "pip",
                        "install",
                        "--quiet",
                        "--disable-pip-version-check",
                        "aiosmtpd",
                    ])
                    .status()
                    .expect("python3 runs");
                assert!(installed.success(), "aiosmtpd cannot be installed with pip");
            }
        });
        let maildir = folder.join("maildir");
        let child = std::process::Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("start aiosmtpd");
        eventually(DEADLINE, "the SMTP server accepts connections", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await;
        Self { child, port, maildir }
    }

    /// Every message received, as text.
    fn messages(&self) -> Vec<String> {
        std::fs::read_dir(self.maildir.join("new"))
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn mail_goes_through_a_real_smtp_server(backend: Backend) {
    let folder = tempfile::tempdir().expect("a temporary folder");
    let smtp = SmtpServer::start(folder.path()).await;
    let url = format!("smtp://127.0.0.1:{}", smtp.port);
    let verification = Verification::start(backend, &[("MAIL_URL", &url)]).await;
    let envelope = verification.sign_up(Uuid::now_v7(), "ann@example.com").await;
    verification.publish(&envelope).await;
    eventually(DEADLINE, "every event is handled", || {
        verification.handled_everything()
    })
    .await;
    verification.wait_for_mail_sent().await;
    eventually(DEADLINE, "the SMTP server has the message", || async {
        !smtp.messages().is_empty()
    })
    .await;
    let messages = smtp.messages();
    assert_eq!(messages.len(), 1, "exactly one message");
    // Undo quoted-printable soft line breaks, should the transport have used them.
    let text = messages[0].replace("=\r\n", "").replace("=\n", "");
    assert!(text.contains(&format!("{PUBLIC_URL}/verify?token=")), "{text}");
    assert!(text.contains("To: ann@example.com"), "{text}");
    assert!(
        text.contains("@dozen.local>"),
        "a Message-ID from the row id: {text}"
    );

    let mailbox = verification
        .client
        .get(verification.service.url("/mailbox"))
        .send()
        .await
        .expect("GET /mailbox");
    assert_eq!(mailbox.status(), 404, "no mailbox over SMTP");
    assert_eq!(mailbox.headers()["content-type"], "application/problem+json");
}
on_both_backends!(mail_goes_through_a_real_smtp_server);

async fn a_mail_waits_for_the_smtp_server_and_is_sent_once_it_answers(backend: Backend) {
    let folder = tempfile::tempdir().expect("a temporary folder");
    let port = ReservedPort::new();
    let url = format!("smtp://127.0.0.1:{}", port.port);
    let verification = Verification::start(backend, &[("MAIL_URL", &url)]).await;
    verification.sign_up(Uuid::now_v7(), "ann@example.com").await;
    eventually(DEADLINE, "a delivery has failed", || async {
        let (failures,): (i64,) = with_pool!(&verification.db, pool => sqlx::query_as(
            "SELECT COUNT(*) FROM mails WHERE attempts > 0",
        )
        .fetch_one(pool)
        .await)
        .expect("read attempts");
        failures > 0
    })
    .await;
    let smtp = SmtpServer::start_on(folder.path(), &port).await;
    verification.wait_for_mail_sent().await;
    eventually(DEADLINE, "the SMTP server has the message", || async {
        !smtp.messages().is_empty()
    })
    .await;
    assert_eq!(smtp.messages().len(), 1, "exactly one message");
}
on_both_backends!(a_mail_waits_for_the_smtp_server_and_is_sent_once_it_answers);

#[tokio::test]
async fn bad_mail_settings_stop_the_service_with_one_line_naming_the_variable() {
    let cases = [
        ("MAIL_URL", "ftp://x"),
        ("MAIL_URL", "smtp://user:secret@mail.example.com:notaport"),
        ("MAIL_FROM", "not an address"),
        ("PUBLIC_URL", "ftp://dozen.test"),
        ("TOKEN_TTL", "soon"),
        ("TOKEN_TTL", "0s"),
        ("MAIL_TIMEOUT", "forever"),
        ("RESEND_INTERVAL", "often"),
        ("RESEND_DAILY_LIMIT", "0"),
    ];
    for (name, value) in cases {
        let finished = run_to_exit("dozen-verification", &[], &[(name, value)]).await;
        assert_eq!(finished.status.code(), Some(2), "{name}={value}: {finished:?}");
        let stderr = finished.stderr.trim();
        assert_eq!(stderr.lines().count(), 1, "{name}={value}: one line: {stderr}");
        assert!(
            stderr.contains(name),
            "{name}={value}: names the variable: {stderr}"
        );
        assert!(
            !stderr.contains("secret"),
            "the password is not repeated: {stderr}"
        );
    }
}

/// `dozen-verification` serving with `env`, expected to refuse with one line naming `names`
/// (exit status 2), and never showing `secret`.
async fn assert_refused(env: &[(&str, &str)], names: &[&str], secret: &str) {
    let finished = run_to_exit("dozen-verification", &[], env).await;
    assert_eq!(finished.status.code(), Some(2), "{env:?}: {finished:?}");
    let stderr = finished.stderr.trim();
    assert_eq!(stderr.lines().count(), 1, "{env:?}: one line: {stderr}");
    for name in names {
        assert!(stderr.contains(name), "{env:?}: names {name}: {stderr}");
    }
    assert!(!stderr.contains(secret), "a secret is shown: {stderr}");
}

#[tokio::test]
async fn without_mail_url_or_with_the_dev_mailbox_on_production_backends_it_refuses_to_serve() {
    let folder = tempfile::tempdir().expect("a temporary folder");
    let mailbox = format!("file://{}", folder.path().join("mailbox").display());
    let postgres = "postgres://dozen:pg-secret@127.0.0.1:5432/nowhere";
    let nats = "nats://dozen:nats-secret@127.0.0.1:4222";
    assert_refused(&[], &["MAIL_URL", "smtp://", "file://"], "secret").await;
    assert_refused(
        &[("MAIL_URL", &mailbox), ("DATABASE_URL", postgres)],
        &[
            "MAIL_URL",
            "DATABASE_URL",
            "DEV_MAILBOX_ALLOW_PRODUCTION_BACKENDS",
        ],
        "pg-secret",
    )
    .await;
    assert_refused(
        &[("MAIL_URL", &mailbox), ("BUS_URL", nats)],
        &[
            "MAIL_URL",
            "BUS_URL is nats",
            "DEV_MAILBOX_ALLOW_PRODUCTION_BACKENDS",
        ],
        "nats-secret",
    )
    .await;
    assert_refused(
        &[
            ("MAIL_URL", &mailbox),
            ("BUS_URL", nats),
            ("DEV_MAILBOX_ALLOW_PRODUCTION_BACKENDS", "maybe"),
        ],
        &["DEV_MAILBOX_ALLOW_PRODUCTION_BACKENDS"],
        "nats-secret",
    )
    .await;
    // The refusal changed nothing: no mailbox folder was made.
    assert!(!folder.path().join("mailbox").exists());
}

/// With the allowance, the dev mailbox works on Postgres (the other tests here run so); an
/// admin process, which sends no mail, needs no mail setting at all.
#[tokio::test]
async fn admin_processes_need_no_mail_setting() {
    let database = TestDatabase::create(Backend::Postgres).await;
    let migrated = run_to_exit(
        "dozen-verification",
        &["migrate"],
        &[("DATABASE_URL", &database.url)],
    )
    .await;
    assert!(migrated.status.success(), "{migrated:?}");
}

/// The token in a password reset mail's link, if it has one.
fn reset_token_in(mail: &Value) -> Option<String> {
    let body = mail["body"].as_str()?;
    let prefix = format!("{PUBLIC_URL}/reset?token=");
    let start = body.find(&prefix)? + prefix.len();
    Some(
        body[start..]
            .chars()
            .take_while(char::is_ascii_alphanumeric)
            .collect(),
    )
}

impl Verification {
    async fn request_reset(&self, email: &str) -> Value {
        let answer = self
            .client
            .post(self.service.url("/password-resets"))
            .json(&serde_json::json!({ "email": email }))
            .send()
            .await
            .expect("POST /password-resets");
        assert_eq!(answer.status(), 202, "{email}");
        answer.json().await.expect("JSON")
    }

    async fn reset(&self, token: &str) -> reqwest::Response {
        self.client
            .post(self.service.url(&format!("/password-resets/{token}")))
            .json(&serde_json::json!({ "password": "violet tractor hums at midnight" }))
            .send()
            .await
            .expect("POST /password-resets/{token}")
    }

    /// The reset links mailed to `email`, newest first.
    async fn reset_tokens(&self, email: &str) -> Vec<String> {
        self.mails_to(email)
            .await
            .iter()
            .filter_map(reset_token_in)
            .collect()
    }
}

/// Reset links go to verified addresses only, the newest replacing the older, throttled per
/// address; a link is given back when passwords cannot set the password; a changed password
/// (the event) revokes the open links and mails a notice. passwords is not running here: its
/// address is a closed port.
async fn reset_links_go_to_verified_addresses_and_are_replaced_throttled_and_revoked(backend: Backend) {
    let passwords = format!("http://127.0.0.1:{}", closed_port());
    let verification = Verification::start(
        backend,
        &[
            ("RESEND_INTERVAL", "0s"),
            ("RESEND_DAILY_LIMIT", "2"),
            ("PASSWORDS_URL", &passwords),
            ("UPSTREAM_MAX_ATTEMPTS", "1"),
        ],
    )
    .await;
    let ann = Uuid::now_v7();
    verification.sign_up(ann, "ann@example.com").await;
    verification.sign_up(Uuid::now_v7(), "carl@example.com").await;
    let token = token_in(&verification.wait_for_mails("ann@example.com", 1).await[0]);
    assert_eq!(verification.verify(&token).await.status(), 200);
    verification.wait_for_mails("carl@example.com", 1).await;

    // The same answer for a verified, an unverified and an unknown address.
    let answer = verification.request_reset(" Ann@Example.com ").await;
    assert_eq!(verification.request_reset("carl@example.com").await, answer);
    assert_eq!(verification.request_reset("nobody@example.com").await, answer);
    let first = eventually(DEADLINE, "a reset link to Ann", || async {
        verification
            .reset_tokens("ann@example.com")
            .await
            .into_iter()
            .next()
    })
    .await;
    assert!(
        verification.mails_to("ann@example.com").await[0]["body"]
            .as_str()
            .is_some_and(|body| body.contains("expires in 1 hour"))
    );

    // A newer link replaces the first; a third request is over the daily limit (2).
    verification.request_reset("ann@example.com").await;
    let second = eventually(DEADLINE, "a second reset link", || async {
        let tokens = verification.reset_tokens("ann@example.com").await;
        (tokens.len() == 2).then(|| tokens[0].clone())
    })
    .await;
    assert_ne!(first, second);
    verification.request_reset("ann@example.com").await;
    // A later mail to someone else shows the work queued before it was done.
    verification.sign_up(Uuid::now_v7(), "bob@example.com").await;
    verification.wait_for_mails("bob@example.com", 1).await;
    verification.wait_for_mail_sent().await;
    assert_eq!(
        verification.reset_tokens("ann@example.com").await.len(),
        2,
        "throttled"
    );
    assert!(verification.reset_tokens("carl@example.com").await.is_empty());
    assert!(verification.mails_to("nobody@example.com").await.is_empty());

    let replaced = verification.reset(&first).await;
    assert_eq!(replaced.status(), 404, "the first link was replaced");
    let replaced: Value = replaced.json().await.expect("a problem");
    assert_eq!(replaced["type"], "/problems/invalid-reset-link");
    for bad in ["0".repeat(64), "A".repeat(64), "nope".to_owned()] {
        let answer = verification.reset(&bad).await;
        assert_eq!(answer.status(), 404, "{bad}");
        assert_eq!(answer.json::<Value>().await.expect("a problem"), replaced);
    }
    // passwords is away: 503, and the link still works afterwards.
    assert_eq!(verification.reset(&second).await.status(), 503);
    let (open,): (i64,) = with_pool!(&verification.db, pool => sqlx::query_as(
        "SELECT COUNT(*) FROM password_reset_tokens WHERE used_at IS NULL AND revoked_at IS NULL",
    )
    .fetch_one(pool)
    .await)
    .expect("count open reset tokens");
    assert_eq!(open, 1, "the second link was given back");

    // A changed password revokes the open link and mails a notice.
    let changed = UserPasswordChanged {
        user_id: ann,
        occurred_at: Utc::now(),
        method: "change".to_owned(),
    };
    verification
        .publish(&Envelope::new("passwords", &changed).expect("an envelope"))
        .await;
    let notice = eventually(DEADLINE, "a notice to Ann", || async {
        verification
            .mails_to("ann@example.com")
            .await
            .into_iter()
            .find(|mail| {
                mail["subject"]
                    .as_str()
                    .is_some_and(|s| s.contains("password was changed"))
            })
    })
    .await;
    assert!(reset_token_in(&notice).is_none(), "a notice carries no link");
    assert_eq!(verification.reset(&second).await.status(), 404, "revoked");
}
on_both_backends!(reset_links_go_to_verified_addresses_and_are_replaced_throttled_and_revoked);

#[tokio::test]
async fn help_lists_every_mail_setting() {
    let help = run_to_exit("dozen-verification", &["--help"], &[]).await;
    assert!(help.status.success(), "{help:?}");
    for name in [
        "MAIL_URL",
        "DEV_MAILBOX_ALLOW_PRODUCTION_BACKENDS",
        "MAIL_FROM",
        "MAIL_TIMEOUT",
        "PUBLIC_URL",
        "TOKEN_TTL",
        "RESET_TOKEN_TTL",
        "RESEND_INTERVAL",
        "RESEND_DAILY_LIMIT",
        "BUS_URL",
        "DATABASE_URL",
    ] {
        assert!(help.stdout.contains(name), "{name} is listed:\n{}", help.stdout);
    }
}
