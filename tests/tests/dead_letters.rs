//! A poison event ends in the subscriber's dead-letter queue after its attempts while other
//! events keep flowing; the `dead-letters` admin process lists it and `replay` delivers it
//! again — through the users service's real binary and the embedded bus.

use dozen_bus::contracts::UserEmailVerified;
use dozen_bus::{BusSettings, BusUrl, Envelope};
use dozen_tests::database::{Backend, TestDatabase};
use dozen_tests::identity::{self, identities};
use dozen_tests::process::{Service, run_to_exit};
use dozen_tests::{PATIENCE, eventually};
use serde_json::{Value, json};

const ANN: &str = "0190b3c4-1d2e-7a00-8000-0000000000a1";

async fn dead_letters(env: &[(&str, &str)]) -> Vec<Value> {
    let listed = run_to_exit("dozen-users", &["dead-letters"], env).await;
    assert!(listed.status.success(), "{listed:?}");
    listed
        .stdout
        .lines()
        .filter(|line| line.starts_with('{') && !line.contains("\"level\""))
        .map(|line| serde_json::from_str(line).expect("a JSON dead letter"))
        .collect()
}

async fn eventually_letters(env: &[(&str, &str)], wanted: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    eventually(PATIENCE, "the dead letters are as expected", || async {
        let letters = dead_letters(env).await;
        wanted(&letters).then_some(letters)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_event_is_dead_lettered_listed_and_replayed_while_others_flow() {
    let database = TestDatabase::create(Backend::Sqlite).await;
    let bus = tempfile::tempdir().expect("bus folder");
    let bus_url = format!("sqlite://{}", bus.path().join("bus.db").display());
    let env = [
        ("DATABASE_URL", database.url.as_str()),
        ("BUS_URL", bus_url.as_str()),
        ("BUS_MAX_ATTEMPTS", "2"),
        ("BUS_RETRY_BACKOFF", "50ms"),
        ("BUS_POLL_INTERVAL", "100ms"),
    ];
    assert!(
        run_to_exit("dozen-users", &["migrate"], &env)
            .await
            .status
            .success()
    );
    let users = Service::start("dozen-users", &env).await;
    let client = reqwest::Client::new();
    let created = client
        .post(users.url("/profiles"))
        .header(identity::HEADER, identities().header("signup", "users"))
        .json(&json!({ "id": ANN, "email": "ann@example.com", "display_name": "Ann" }))
        .send()
        .await
        .expect("create a profile");
    assert_eq!(created.status(), 201);

    let broker = dozen_bus::backend::connect(&BusSettings::new(BusUrl::parse(&bus_url).expect("bus URL")))
        .await
        .expect("the embedded bus");
    let verified = UserEmailVerified {
        user_id: ANN.parse().expect("uuid"),
        email: "ann@example.com".into(),
        verified_at: chrono::Utc::now(),
    };
    let mut poison = Envelope::new("verification", &verified).expect("envelope");
    poison.data = json!({ "not": "what users expects" });
    let good = Envelope::new("verification", &verified).expect("envelope");
    broker.publish(&[poison.clone(), good]).await.expect("publish");

    // The good event after the poison one still has its effect.
    eventually(
        PATIENCE,
        "the good event is not held up by the poison one",
        || async {
            let profile: Value = client
                .get(users.url(&format!("/profiles/{ANN}")))
                .header(identity::HEADER, identities().header("signup", "users"))
                .send()
                .await
                .expect("get")
                .json()
                .await
                .expect("JSON");
            profile["verified"] == true
        },
    )
    .await;

    let letters = eventually_letters(&env, |letters| !letters.is_empty()).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["event_id"], poison.id.to_string());
    assert_eq!(letters[0]["event_type"], "user.email_verified");
    let attempts = letters[0]["attempts"].as_u64().expect("attempts");
    assert_eq!(attempts, 2, "dead after BUS_MAX_ATTEMPTS deliveries");

    let replayed = run_to_exit("dozen-users", &["replay", &poison.id.to_string()], &env).await;
    assert!(replayed.status.success(), "{replayed:?}");
    // Delivered again by the running service; still poison, so back in the queue, one attempt on.
    eventually_letters(&env, |letters| {
        letters.len() == 1
            && letters[0]["attempts"].as_u64() > Some(attempts)
            && letters[0]["replay_requested"] == false
    })
    .await;

    let bad = run_to_exit("dozen-users", &["replay", "not-an-id"], &env).await;
    assert!(!bad.status.success(), "a bad event id is refused");
}
