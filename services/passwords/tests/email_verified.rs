//! Login opens when the bus says the email is verified: `user.email_verified`, published as
//! the verification service does, reaches the real passwords process, on SQLite and Postgres.

use chrono::Utc;
use dozen_bus::contracts::UserEmailVerified;
use dozen_bus::{BusSettings, BusUrl, Envelope};
use dozen_tests::database::{Backend, TestDatabase};
use dozen_tests::identity::{self, identities};
use dozen_tests::process::{Service, run_to_exit};
use dozen_tests::{PATIENCE, eventually, on_both_backends};
use serde_json::json;
use uuid::Uuid;

/// A test-only Ed25519 key (`openssl genpkey -algorithm ed25519`).
const KEY: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIDVcY0yew5otD1Pm03l3A1/VuTwrUdFN+ljJDMUMALN5
-----END PRIVATE KEY-----
";
const PASSWORD: &str = "violet-harbour-42";

async fn login_status(client: &reqwest::Client, service: &Service, email: &str) -> u16 {
    client
        .post(service.url("/sessions"))
        .json(&json!({ "email": email, "password": PASSWORD }))
        .send()
        .await
        .expect("POST /sessions answers")
        .status()
        .as_u16()
}

async fn login_opens_when_the_email_verified_event_arrives(backend: Backend) {
    let database = TestDatabase::create(backend).await;
    let folder = tempfile::tempdir().expect("a temporary folder");
    let bus_url = format!("sqlite://{}", folder.path().join("bus.db").display());
    let env = [
        ("DATABASE_URL", database.url.as_str()),
        ("BUS_URL", bus_url.as_str()),
        ("BUS_POLL_INTERVAL", "100ms"),
        ("JWT_SIGNING_KEYS", KEY),
    ];
    let migrated = run_to_exit("dozen-passwords", &["migrate"], &env).await;
    assert!(migrated.status.success(), "{migrated:?}");
    let service = Service::start("dozen-passwords", &env).await;
    let client = reqwest::Client::new();

    let user_id = Uuid::new_v4();
    let created = client
        .put(service.url(&format!("/credentials/{user_id}")))
        .header(identity::HEADER, identities().header("signup", "passwords"))
        .json(&json!({ "email": "ann@example.com", "password": PASSWORD }))
        .send()
        .await
        .expect("PUT answers");
    assert_eq!(created.status(), 201);
    assert_eq!(login_status(&client, &service, "ann@example.com").await, 403);

    let broker = dozen_bus::backend::connect(&BusSettings::new(BusUrl::parse(&bus_url).expect("a bus URL")))
        .await
        .expect("connect to the bus");
    let event = UserEmailVerified {
        user_id,
        email: "ann@example.com".to_owned(),
        verified_at: Utc::now(),
    };
    let envelope = Envelope::new("verification", &event).expect("an envelope");
    // Delivered twice, as a redelivery would: handled as once.
    for _ in 0..2 {
        broker
            .publish(std::slice::from_ref(&envelope))
            .await
            .expect("publish on the bus");
    }

    eventually(PATIENCE, "login opens after user.email_verified", || async {
        login_status(&client, &service, "ann@example.com").await == 200
    })
    .await;
}
on_both_backends!(login_opens_when_the_email_verified_event_arrives);
