//! Shared by the passwords and auth tests: signing keys, a migrated passwords process, and the
//! calls signup and clients make to it.

#![allow(dead_code)] // Each test crate uses its own part of it.

use std::time::Duration;

use chrono::Utc;
use dozen_bus::contracts::UserEmailVerified;
use dozen_bus::{BusSettings, BusUrl, Envelope};
use dozen_kit::auth::{JwtVerifier, VerifierOptions};
use dozen_kit::http::client::HttpClient;
use dozen_tests::database::{Backend, TestDatabase};
use dozen_tests::identity::{self, identities};
use dozen_tests::process::{Service, run_to_exit};
use dozen_tests::{PATIENCE, eventually};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

/// Test-only Ed25519 keys, made with `openssl genpkey -algorithm ed25519`.
pub const KEY_A: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIDVcY0yew5otD1Pm03l3A1/VuTwrUdFN+ljJDMUMALN5
-----END PRIVATE KEY-----
";
pub const KEY_B: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIP9ujGUYSJt6zjeA0bkcU8lFOh6qD4jp9h//lGrVORNK
-----END PRIVATE KEY-----
";

/// A password that passes the rules.
pub const PASSWORD: &str = "violet-harbour-42";

/// A running passwords service on its own database.
#[derive(Debug)]
pub struct Passwords {
    pub service: Service,
    pub database: TestDatabase,
    pub client: reqwest::Client,
    /// The embedded bus it consumes events from.
    bus_url: String,
    /// Holds the embedded bus's file.
    _bus: tempfile::TempDir,
}

impl Passwords {
    /// Migrate a new database on `backend` and start the service signing with `KEY_A`, with
    /// `env` on top.
    pub async fn start(backend: Backend, env: &[(&str, &str)]) -> Self {
        let database = TestDatabase::create(backend).await;
        let bus = tempfile::tempdir().expect("bus folder");
        let bus_url = format!("sqlite://{}", bus.path().join("bus.db").display());
        let mut all = vec![
            ("DATABASE_URL", database.url.as_str()),
            ("BUS_URL", bus_url.as_str()),
            ("JWT_SIGNING_KEYS", KEY_A),
            // Verification events arrive on it (see `mark_verified`).
            ("BUS_POLL_INTERVAL", "100ms"),
        ];
        all.extend_from_slice(env);
        let migrated = run_to_exit("dozen-passwords", &["migrate"], &all).await;
        assert!(migrated.status.success(), "migrate: {migrated:?}");
        let service = Service::start("dozen-passwords", &all).await;
        Self {
            service,
            database,
            client: reqwest::Client::new(),
            bus_url,
            _bus: bus,
        }
    }

    pub fn url(&self, path: &str) -> String {
        self.service.url(path)
    }

    /// `PUT /credentials/{user_id}`, as signup calls it (with its service identity).
    pub async fn put_credential(&self, user_id: Uuid, email: &str, password: &str) -> Response {
        self.client
            .put(self.url(&format!("/credentials/{user_id}")))
            .header(identity::HEADER, identities().header("signup", "passwords"))
            .json(&json!({ "email": email, "password": password }))
            .send()
            .await
            .expect("PUT /credentials answers")
    }

    /// `DELETE /credentials/{user_id}`, as signup calls it.
    pub async fn delete_credential(&self, user_id: Uuid) -> Response {
        self.client
            .delete(self.url(&format!("/credentials/{user_id}")))
            .header(identity::HEADER, identities().header("signup", "passwords"))
            .send()
            .await
            .expect("DELETE /credentials answers")
    }

    /// Publish `user.email_verified` for `user_id` on the service's bus, as verification does,
    /// and wait until the credential is verified.
    pub async fn mark_verified(&self, user_id: Uuid) {
        let settings = BusSettings::new(BusUrl::parse(&self.bus_url).expect("a bus URL"));
        let broker = dozen_bus::backend::connect(&settings)
            .await
            .expect("connect to the bus");
        let event = UserEmailVerified {
            user_id,
            email: String::new(),
            verified_at: Utc::now(),
        };
        let envelope = Envelope::new("verification", &event).expect("an envelope");
        broker
            .publish(std::slice::from_ref(&envelope))
            .await
            .expect("publish on the bus");
        let user = user_id.to_string();
        eventually(PATIENCE, "the credential is verified", || async {
            self.fetch_strings(
                "SELECT CASE WHEN verified THEN 'yes' ELSE 'no' END FROM credentials WHERE CAST(user_id AS TEXT) = $1",
                &[&user],
            )
            .await
                == ["yes"]
        })
        .await;
    }

    /// A new verified user with `email` and [`PASSWORD`].
    pub async fn verified_user(&self, email: &str) -> Uuid {
        let user_id = Uuid::new_v4();
        let created = self.put_credential(user_id, email, PASSWORD).await;
        assert_eq!(created.status(), StatusCode::CREATED);
        self.mark_verified(user_id).await;
        user_id
    }

    /// `POST /sessions` from the test's own address.
    pub async fn login(&self, email: &str, password: &str) -> Response {
        self.login_from(None, email, password).await
    }

    /// `POST /sessions`, with `X-Forwarded-For: forwarded_for` when given.
    pub async fn login_from(&self, forwarded_for: Option<&str>, email: &str, password: &str) -> Response {
        let mut request = self
            .client
            .post(self.url("/sessions"))
            .json(&json!({ "email": email, "password": password }));
        if let Some(address) = forwarded_for {
            request = request.header("x-forwarded-for", address);
        }
        request.send().await.expect("POST /sessions answers")
    }

    /// An access token for a verified user's `email` and [`PASSWORD`].
    pub async fn token(&self, email: &str) -> String {
        let answer = self.login(email, PASSWORD).await;
        assert_eq!(answer.status(), StatusCode::OK);
        let body: Value = answer.json().await.expect("JSON");
        body["access_token"].as_str().expect("a token").to_owned()
    }

    /// A verifier reading this service's JWKS, expecting `dozen` as issuer and audience.
    pub fn verifier(&self, options: VerifierOptions) -> JwtVerifier {
        let http = HttpClient::new(Duration::from_secs(5));
        JwtVerifier::from_jwks_url(
            &http,
            &self.url("/.well-known/jwks.json"),
            "dozen",
            "dozen",
            options,
        )
    }

    /// The sum of a counter's series in `/metrics` (0 when it has none yet).
    pub async fn counter(&self, name: &str, label_filter: &str) -> f64 {
        let text = self
            .client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        text.lines()
            .filter(|line| line.starts_with(&format!("{name}{{")) && line.contains(label_filter))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// How many argon2 hashes and verifications the process has computed.
    pub async fn argon2_operations(&self) -> f64 {
        self.counter("passwords_argon2_operations_total", "").await
    }
}

/// Straight to the service's database, for what the API does not show.
impl Passwords {
    async fn execute(&self, sql: &str, binds: &[&str]) {
        if self.database.url.starts_with("sqlite:") {
            let pool = sqlx::SqlitePool::connect(&self.database.url)
                .await
                .expect("sqlite");
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()));
            for bind in binds {
                query = query.bind(*bind);
            }
            query.execute(&pool).await.expect("statement");
            pool.close().await;
        } else {
            let pool = sqlx::PgPool::connect(&self.database.url).await.expect("postgres");
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()));
            for bind in binds {
                query = query.bind(*bind);
            }
            query.execute(&pool).await.expect("statement");
            pool.close().await;
        }
    }

    async fn fetch_strings(&self, sql: &str, binds: &[&str]) -> Vec<String> {
        if self.database.url.starts_with("sqlite:") {
            let pool = sqlx::SqlitePool::connect(&self.database.url)
                .await
                .expect("sqlite");
            let mut query = sqlx::query_as::<_, (String,)>(sqlx::AssertSqlSafe(sql.to_owned()));
            for bind in binds {
                query = query.bind(*bind);
            }
            let rows = query.fetch_all(&pool).await.expect("query");
            pool.close().await;
            rows.into_iter().map(|(value,)| value).collect()
        } else {
            let pool = sqlx::PgPool::connect(&self.database.url).await.expect("postgres");
            let mut query = sqlx::query_as::<_, (String,)>(sqlx::AssertSqlSafe(sql.to_owned()));
            for bind in binds {
                query = query.bind(*bind);
            }
            let rows = query.fetch_all(&pool).await.expect("query");
            pool.close().await;
            rows.into_iter().map(|(value,)| value).collect()
        }
    }

    /// The stored emails, in order.
    pub async fn stored_emails(&self) -> Vec<String> {
        self.fetch_strings("SELECT email FROM credentials ORDER BY email", &[])
            .await
    }

    /// The PHC string stored for `email`.
    pub async fn stored_hash(&self, email: &str) -> String {
        self.fetch_strings("SELECT phc_hash FROM credentials WHERE email = $1", &[email])
            .await
            .pop()
            .expect("a stored credential")
    }

    /// Replace the PHC string stored for `email`.
    pub async fn set_stored_hash(&self, email: &str, phc: &str) {
        self.execute(
            "UPDATE credentials SET phc_hash = $1 WHERE email = $2",
            &[phc, email],
        )
        .await;
    }
}
