//! A signup interrupted by a stopped service leaves a profile without a credential; the
//! `repair` admin process undoes it (no orphan), and a retry with the same Idempotency-Key
//! then signs up from the start.

use dozen_tests::database::{Backend, TestDatabase};
use dozen_tests::on_both_backends;
use dozen_tests::process::{Service, free_port, run_to_exit};
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

async fn sign_up(signup: &Service) -> reqwest::Response {
    reqwest::Client::new()
        .post(signup.url("/signups"))
        .header("Idempotency-Key", "dana-1")
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
        .query(&[("email", "dana@example.com")])
        .send()
        .await
        .expect("find the profile")
        .status()
        .as_u16()
}

fn as_pairs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

async fn a_signup_cut_short_by_a_stopped_service_is_undone_by_repair(backend: Backend) {
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

    // Passwords is down: nothing listens where signup expects it.
    let dead_passwords = format!("http://127.0.0.1:{}", free_port());
    let signup_env = |passwords_url: &str| -> Vec<(String, String)> {
        vec![
            ("DATABASE_URL".into(), databases.signup.url.clone()),
            ("BUS_URL".into(), bus_url.clone()),
            ("USERS_URL".into(), users_url.clone()),
            ("PASSWORDS_URL".into(), passwords_url.to_owned()),
            ("UPSTREAM_TIMEOUT".into(), "2s".into()),
            ("REPAIR_AFTER".into(), "0s".into()),
        ]
    };
    let cut_env = signup_env(&dead_passwords);
    let cut = as_pairs(&cut_env);
    migrated("dozen-signup", &cut).await;
    let signup = Service::start("dozen-signup", &cut).await;

    let answer = sign_up(&signup).await;
    assert_eq!(answer.status(), 503, "a fault, not the caller's problem");
    assert_eq!(answer.headers()["content-type"], "application/problem+json");
    assert_eq!(
        profile_status(&users).await,
        200,
        "the profile was made before the chain broke"
    );

    // Passwords is back; repair, run once the platform is whole again, undoes the half.
    let passwords_env = [
        ("DATABASE_URL", databases.passwords.url.as_str()),
        ("BUS_URL", bus_url.as_str()),
        ("JWT_SIGNING_KEYS", key.as_str()),
    ];
    migrated("dozen-passwords", &passwords_env).await;
    let passwords = Service::start("dozen-passwords", &passwords_env).await;
    let live_env = signup_env(&passwords.url(""));
    let live = as_pairs(&live_env);
    let repaired = run_to_exit("dozen-signup", &["repair"], &live).await;
    assert!(repaired.status.success(), "{repaired:?}");
    assert!(repaired.stdout.contains("\"undone\":1"), "{}", repaired.stdout);
    assert_eq!(profile_status(&users).await, 404, "no orphan profile is left");

    // The same key now signs up from the start.
    drop(signup);
    let signup = Service::start("dozen-signup", &live).await;
    let answer = sign_up(&signup).await;
    assert_eq!(answer.status(), 202);
    assert_eq!(
        answer.json::<Value>().await.expect("JSON"),
        json!({ "status": "pending_verification" })
    );
    assert_eq!(profile_status(&users).await, 200);

    let nothing_left = run_to_exit("dozen-signup", &["repair"], &live).await;
    assert!(
        nothing_left.stdout.contains("\"undone\":0"),
        "{}",
        nothing_left.stdout
    );
}
on_both_backends!(a_signup_cut_short_by_a_stopped_service_is_undone_by_repair);
