//! `/api/me` degrades and recovers with the platform: every service a real process on the
//! embedded defaults, a user signed up, verified and logged in through the gateway. When
//! friends (and, separately, verification) stops, `/api/me` still answers 200 with the profile
//! and names the stopped service in `missing`, and after a few calls the gateway's breaker for
//! it is open in `/ops/status` and `/metrics`. Brought back on the same port, the service is
//! part of `/api/me` again and the breaker closes.

use std::path::Path;
use std::time::Duration;

use dozen_tests::process::{Service, run_to_exit};
use dozen_tests::public_api::PublicApi;
use dozen_tests::{PATIENCE, eventually};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

/// The gateway's `BREAKER_OPEN_FOR` here: long enough to look at the open breaker, short
/// enough to wait out.
const OPEN_FOR: &str = "3s";

/// The five services behind the gateway, each with its database in one shared folder so that
/// a service stopped and started again finds its data.
struct Platform {
    folder: tempfile::TempDir,
    passwords: Service,
    _users: Service,
    verification: Option<Service>,
    friends: Option<Service>,
    _signup: Service,
    gateway: Service,
    client: reqwest::Client,
}

impl Platform {
    fn database(folder: &Path, service: &str) -> String {
        format!("sqlite://{}", folder.join(format!("{service}.db")).display())
    }

    /// The environment of `service`: its database, the bus, every peer started so far.
    fn env(
        folder: &Path,
        service: &str,
        peers: &[(&str, u16)],
        extra: &[(&str, &str)],
    ) -> Vec<(String, String)> {
        let mut env = vec![
            ("DATABASE_URL".to_owned(), Self::database(folder, service)),
            (
                "BUS_URL".to_owned(),
                format!("sqlite://{}", folder.join("bus.db").display()),
            ),
            (
                "MAIL_URL".to_owned(),
                format!("file://{}", folder.join("mailbox").display()),
            ),
            // The gateway serves the dev mailbox, read to verify the user.
            ("DEV_MAILBOX".to_owned(), "true".to_owned()),
        ];
        for (peer, port) in peers {
            env.push((
                format!("{}_URL", peer.to_uppercase()),
                format!("http://127.0.0.1:{port}"),
            ));
        }
        env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        env
    }

    async fn start_service(
        folder: &Path,
        service: &str,
        peers: &[(&str, u16)],
        extra: &[(&str, &str)],
        port: u16,
    ) -> Service {
        let env = Self::env(folder, service, peers, extra);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let program = format!("dozen-{service}");
        if service != "gateway" {
            let migrated = run_to_exit(&program, &["migrate"], &env).await;
            assert!(migrated.status.success(), "{program} migrate: {migrated:?}");
        }
        Service::start_on(&program, &env, port).await
    }

    async fn start() -> Self {
        let folder = tempfile::tempdir().expect("a data folder");
        let signing_key = dozen_passwords::generate_signing_key_pem();
        let dir = folder.path();
        let passwords =
            Self::start_service(dir, "passwords", &[], &[("JWT_SIGNING_KEYS", &signing_key)], 0).await;
        let keys = [("passwords", passwords.port)];
        let users = Self::start_service(dir, "users", &keys, &[], 0).await;
        let verification = Self::start_service(dir, "verification", &keys, &[], 0).await;
        let friends = Self::start_service(dir, "friends", &keys, &[], 0).await;
        let signup = Self::start_service(
            dir,
            "signup",
            &[("passwords", passwords.port), ("users", users.port)],
            &[],
            0,
        )
        .await;
        let gateway = Self::start_service(
            dir,
            "gateway",
            &[
                ("signup", signup.port),
                ("users", users.port),
                ("passwords", passwords.port),
                ("verification", verification.port),
                ("friends", friends.port),
            ],
            &[("BREAKER_OPEN_FOR", OPEN_FOR)],
            0,
        )
        .await;
        Self {
            folder,
            passwords,
            _users: users,
            verification: Some(verification),
            friends: Some(friends),
            _signup: signup,
            gateway,
            client: reqwest::Client::new(),
        }
    }

    fn slot(&mut self, service: &str) -> &mut Option<Service> {
        match service {
            "friends" => &mut self.friends,
            "verification" => &mut self.verification,
            other => panic!("{other} is not stopped in these tests"),
        }
    }

    /// Kill `service` and wait until it is gone; its port.
    async fn stop(&mut self, service: &str) -> u16 {
        let mut stopped = self.slot(service).take().expect("a running service");
        stopped.process.signal(Signal::SIGKILL);
        stopped.process.wait(Duration::from_secs(10)).await;
        stopped.port
    }

    /// Start `service` again on `port`, with the same database.
    async fn restart(&mut self, service: &str, port: u16) {
        let peers = [("passwords", self.passwords.port)];
        let started = Self::start_service(self.folder.path(), service, &peers, &[], port).await;
        *self.slot(service) = Some(started);
    }

    fn url(&self, path: &str) -> String {
        self.gateway.url(path)
    }

    /// Sign up, verify and log in `email` through the gateway; the access token.
    async fn user(&self, email: &str) -> String {
        let api = PublicApi::new(self.url(""));
        assert_eq!(api.sign_up(email, email, "Dee", &["go"]).await.status(), 202);
        api.verify_and_log_in(email).await
    }

    async fn me(&self, token: &str) -> Value {
        let answer = self
            .client
            .get(self.url("/api/me"))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET /api/me");
        assert_eq!(answer.status(), 200, "/api/me answers whatever is down");
        answer.json().await.expect("JSON")
    }

    /// `service`'s entry in `/ops/status`.
    async fn status_of(&self, service: &str) -> Value {
        let status: Value = self
            .client
            .get(self.url("/ops/status"))
            .send()
            .await
            .expect("GET /ops/status")
            .json()
            .await
            .expect("JSON");
        status["services"]
            .as_array()
            .expect("a list")
            .iter()
            .find(|entry| entry["name"] == service)
            .cloned()
            .expect("the service is listed")
    }

    async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("text")
    }
}

/// Stop `service`: `/api/me` degrades around it and its breaker opens; start it again:
/// everything is back and the breaker closes.
async fn me_survives(platform: &mut Platform, token: &str, service: &str, absent_fields: &[&str]) {
    let port = platform.stop(service).await;
    for _ in 0..3 {
        let me = platform.me(token).await;
        assert_eq!(me["profile"]["email"], "dee@example.com", "{me}");
        assert_eq!(me["missing"], json!([service]), "{me}");
        for field in absent_fields {
            assert_eq!(me[field], Value::Null, "{field} in {me}");
        }
    }
    // The status page may still show the round of probes made before the service stopped.
    let status = eventually(
        PATIENCE,
        &format!("{service} not ready with its breaker open"),
        || async {
            let status = platform.status_of(service).await;
            (status["ready"] == false && status["breaker"]["state"] == "open").then_some(status)
        },
    )
    .await;
    // The page is public: it says what is down without showing internal addresses.
    assert!(
        !status.to_string().contains("127.0.0.1"),
        "no internal address in {status}"
    );
    let metrics = platform.metrics().await;
    assert!(
        breaker_gauge_is(&metrics, service, 2),
        "{service}'s breaker open in /metrics:\n{metrics}"
    );

    platform.restart(service, port).await;
    let me = eventually(
        PATIENCE,
        &format!("/api/me complete again with {service} back"),
        || async {
            let me = platform.me(token).await;
            (me["missing"] == json!([])).then_some(me)
        },
    )
    .await;
    for field in absent_fields {
        assert_ne!(me[field], Value::Null, "{field} in {me}");
    }
    // The status page may still show the round of probes made before the service was back.
    eventually(
        PATIENCE,
        &format!("{service} ready with its breaker closed"),
        || async {
            let status = platform.status_of(service).await;
            (status["ready"] == true && status["breaker"]["state"] == "closed").then_some(())
        },
    )
    .await;
    let metrics = platform.metrics().await;
    assert!(
        breaker_gauge_is(&metrics, service, 0),
        "{service}'s breaker closed in /metrics:\n{metrics}"
    );
}

/// Whether the gateway's `/metrics` shows `value` as the breaker state of `service`'s instance.
fn breaker_gauge_is(metrics: &str, service: &str, value: u8) -> bool {
    let gauge = format!("upstream_breaker_state{{upstream=\"{service}\",instance=");
    metrics
        .lines()
        .any(|line| line.starts_with(&gauge) && line.ends_with(&format!(" {value}")))
}

#[tokio::test(flavor = "multi_thread")]
async fn me_degrades_without_friends_or_verification_and_recovers_when_they_are_back() {
    let mut platform = Platform::start().await;
    let token = platform.user("dee@example.com").await;

    let me = eventually(PATIENCE, "a complete /api/me", || async {
        let me = platform.me(&token).await;
        let complete = me["missing"] == json!([])
            && me["profile"]["verified"] == true
            && me["verification"]["last_sent_at"].is_string();
        complete.then_some(me)
    })
    .await;
    assert_eq!(me["verification"]["status"], "verified", "{me}");
    assert_eq!(me["verification"]["mail_pending"], false, "{me}");
    assert_eq!(me["friends"], json!([]), "{me}");
    let status = platform.status_of("friends").await;
    assert_eq!(status["ready"], true, "{status}");
    assert_eq!(status["breaker"]["state"], "closed", "{status}");

    me_survives(&mut platform, &token, "friends", &["friends", "suggestions"]).await;
    me_survives(&mut platform, &token, "verification", &["verification"]).await;
    assert_eq!(platform.me(&token).await["missing"], json!([]));
}
