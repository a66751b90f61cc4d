//! A signup interrupted when passwords goes away mid-call (it stored the credential, but its
//! answer never came back) is left half-done; the `repair` admin process undoes it (no orphan
//! profile or credential), and the address can then sign up afresh.

use dozen_tests::database::{Backend, TestDatabase};
use dozen_tests::fault_proxy::FaultProxy;
use dozen_tests::identity::{self, identities};
use dozen_tests::on_both_backends;
use dozen_tests::process::{Service, run_to_exit};
use reqwest::Method;
use serde_json::{Value, json};

struct Databases {
    users: TestDatabase,
    signup: TestDatabase,
    passwords: TestDatabase,
    bus: tempfile::TempDir,
}

impl Databases {
    async fn create(backend: Backend) -> Self {
        Self {
            users: TestDatabase::create(backend).await,
            signup: TestDatabase::create(backend).await,
            passwords: TestDatabase::create(backend).await,
            bus: tempfile::tempdir().expect("bus folder"),
        }
    }

    fn bus_url(&self) -> String {
        format!("sqlite://{}", self.bus.path().join("bus.db").display())
    }
}

async fn migrated(program: &str, env: &[(&str, &str)]) {
    let migrated = run_to_exit(program, &["migrate"], env).await;
    assert!(migrated.status.success(), "{program} migrate: {migrated:?}");
}

async fn sign_up(signup: &Service, idempotency_key: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(signup.url("/signups"))
        .header("Idempotency-Key", idempotency_key)
        .json(
            &json!({ "email": "dana@example.com", "password": "violet-harbour-42", "display_name": "Dana" }),
        )
        .send()
        .await
        .expect("POST /signups")
}

async fn profile_status(users: &Service) -> u16 {
    reqwest::Client::new()
        .get(users.url("/profiles"))
        .header(identity::HEADER, identities().header("signup", "users"))
        .query(&[("email", "dana@example.com")])
        .send()
        .await
        .expect("find the profile")
        .status()
        .as_u16()
}

async fn a_signup_cut_short_mid_call_is_undone_by_repair(backend: Backend) {
    let databases = Databases::create(backend).await;
    let bus_url = databases.bus_url();
    let key = dozen_passwords::generate_signing_key_pem();

    let users_env = [
        ("DATABASE_URL", databases.users.url.as_str()),
        ("BUS_URL", bus_url.as_str()),
    ];
    migrated("dozen-users", &users_env).await;
    let users = Service::start("dozen-users", &users_env).await;
    let users_url = users.url("");

    let passwords_env = [
        ("DATABASE_URL", databases.passwords.url.as_str()),
        ("BUS_URL", bus_url.as_str()),
        ("JWT_SIGNING_KEYS", key.as_str()),
    ];
    migrated("dozen-passwords", &passwords_env).await;
    let passwords = Service::start("dozen-passwords", &passwords_env).await;
    // Signup reaches passwords through a link that loses the answer to the credential.
    let link = FaultProxy::start(&passwords.url("")).await;
    link.lose_answers_to(Method::PUT, "/credentials/");

    // The repair process calls users and passwords as signup: it has signup's identity.
    let [signing, trust] = identities().env("signup");
    let signup_env = [
        signing,
        trust,
        ("DATABASE_URL", databases.signup.url.as_str()),
        ("BUS_URL", bus_url.as_str()),
        ("USERS_URL", users_url.as_str()),
        ("PASSWORDS_URL", link.url()),
        ("UPSTREAM_TIMEOUT", "2s"),
        ("REPAIR_AFTER", "0s"),
    ];
    migrated("dozen-signup", &signup_env).await;
    let signup = Service::start("dozen-signup", &signup_env).await;

    let answer = sign_up(&signup, "dana-1").await;
    assert_eq!(answer.status(), 503, "a fault, not the caller's problem");
    assert_eq!(answer.headers()["content-type"], "application/problem+json");
    assert_eq!(
        profile_status(&users).await,
        200,
        "the profile was made before the chain broke"
    );

    // The link is whole again; repair undoes both halves.
    link.heal();
    let repaired = run_to_exit("dozen-signup", &["repair"], &signup_env).await;
    assert!(repaired.status.success(), "{repaired:?}");
    assert!(repaired.stdout.contains("\"undone\":1"), "{}", repaired.stdout);
    assert_eq!(profile_status(&users).await, 404, "no orphan profile is left");

    // The address signs up afresh. Had the credential been left behind, passwords would
    // refuse the address as taken, and signup would remove the new profile again.
    let answer = sign_up(&signup, "dana-2").await;
    assert_eq!(answer.status(), 202);
    assert_eq!(
        answer.json::<Value>().await.expect("JSON"),
        json!({ "status": "pending_verification" })
    );
    assert_eq!(profile_status(&users).await, 200);

    let nothing_left = run_to_exit("dozen-signup", &["repair"], &signup_env).await;
    assert!(
        nothing_left.stdout.contains("\"undone\":0"),
        "{}",
        nothing_left.stdout
    );
}
on_both_backends!(a_signup_cut_short_mid_call_is_undone_by_repair);
