//! The users service through its real binary, on SQLite and on Postgres: profiles are created
//! once, retries are harmless, conflicts and bad input change nothing.

use dozen_tests::database::{Backend, TestDatabase};
use dozen_tests::identity::{self, identities};
use dozen_tests::on_both_backends;
use dozen_tests::process::{Service, run_to_exit};
use serde_json::{Value, json};

struct Users {
    service: Service,
    client: reqwest::Client,
    _database: TestDatabase,
    _bus: tempfile::TempDir,
}

impl Users {
    async fn start(backend: Backend) -> Self {
        let database = TestDatabase::create(backend).await;
        let bus = tempfile::tempdir().expect("bus folder");
        let bus_url = format!("sqlite://{}", bus.path().join("bus.db").display());
        let env = [
            ("DATABASE_URL", database.url.as_str()),
            ("BUS_URL", bus_url.as_str()),
        ];
        let migrated = run_to_exit("dozen-users", &["migrate"], &env).await;
        assert!(migrated.status.success(), "{migrated:?}");
        let service = Service::start("dozen-users", &env).await;
        Self {
            service,
            client: reqwest::Client::new(),
            _database: database,
            _bus: bus,
        }
    }

    async fn create(&self, body: &Value) -> reqwest::Response {
        self.client
            .post(self.service.url("/profiles"))
            .header(identity::HEADER, identities().header("signup", "users"))
            .json(body)
            .send()
            .await
            .expect("POST /profiles")
    }

    async fn get(&self, id: &str) -> reqwest::Response {
        self.client
            .get(self.service.url(&format!("/profiles/{id}")))
            .header(identity::HEADER, identities().header("signup", "users"))
            .send()
            .await
            .expect("GET /profiles/{id}")
    }
}

fn new_profile(id: &str, email: &str) -> Value {
    json!({ "id": id, "email": email, "display_name": "Ann Lee", "interests": ["Chess", "go", "chess"] })
}

const ANN: &str = "0190b3c4-1d2e-7a00-8000-000000000001";
const BOB: &str = "0190b3c4-1d2e-7a00-8000-000000000002";

async fn a_profile_is_created_once_and_a_retry_is_harmless(backend: Backend) {
    let users = Users::start(backend).await;
    let created = users.create(&new_profile(ANN, " Ann@Example.com ")).await;
    assert_eq!(created.status(), 201);
    let profile: Value = created.json().await.expect("profile");
    assert_eq!(profile["email"], "ann@example.com", "stored normalised");
    assert_eq!(profile["interests"], json!(["chess", "go"]));
    assert_eq!(profile["verified"], false);

    let retried = users.create(&new_profile(ANN, "ann@example.com")).await;
    assert_eq!(
        retried.status(),
        200,
        "the same call again is answered, not repeated"
    );

    let fetched: Value = users.get(ANN).await.json().await.expect("profile");
    assert_eq!(fetched["display_name"], "Ann Lee");

    // A newer signup takes over the address of an unverified profile (the pre-hijacking
    // defence); the replaced id is never created again.
    let replacing = users.create(&new_profile(BOB, "ANN@example.com")).await;
    assert_eq!(replacing.status(), 201);
    let replacing: Value = replacing.json().await.expect("profile");
    assert_eq!(replacing["replaced"], json!([ANN]), "{replacing}");
    assert_eq!(users.get(ANN).await.status(), 404, "the replaced profile is gone");
    let again = users.create(&new_profile(ANN, "ann@example.com")).await;
    assert_eq!(again.status(), 410, "a replaced id stays replaced");

    let other_email = users.create(&new_profile(BOB, "bob@example.com")).await;
    assert_eq!(other_email.status(), 409, "an id keeps its email");
    assert_eq!(other_email.headers()["content-type"], "application/problem+json");

    let by_email = users
        .client
        .get(users.service.url("/profiles"))
        .header(identity::HEADER, identities().header("signup", "users"))
        .query(&[("email", "ANN@example.com")])
        .send()
        .await
        .expect("find by email");
    assert_eq!(by_email.status(), 200);
    assert_eq!(by_email.json::<Value>().await.expect("profile")["id"], BOB);
}
on_both_backends!(a_profile_is_created_once_and_a_retry_is_harmless);

async fn bad_input_gets_a_problem_and_changes_nothing(backend: Backend) {
    let users = Users::start(backend).await;
    let cases: Vec<(Value, u16, Option<&str>)> = vec![
        (
            json!({ "id": ANN, "email": "not-an-email", "display_name": "Ann" }),
            422,
            Some("email"),
        ),
        (
            json!({ "id": ANN, "email": "ann@example.com", "display_name": "  " }),
            422,
            Some("display_name"),
        ),
        (
            json!({ "id": ANN, "email": "ann@example.com", "display_name": "Ann", "interests": ["x".repeat(33)] }),
            422,
            Some("interests"),
        ),
        (
            json!({ "id": "not-a-uuid", "email": "ann@example.com", "display_name": "Ann" }),
            422,
            None,
        ),
        (
            json!({ "id": ANN, "email": 42, "display_name": "Ann" }),
            422,
            None,
        ),
        (
            json!({ "id": ANN, "email": "ann@example.com", "display_name": "Ann", "admin": true }),
            422,
            None,
        ),
    ];
    for (body, status, field) in cases {
        let answer = users.create(&body).await;
        assert_eq!(answer.status().as_u16(), status, "{body}");
        assert_eq!(
            answer.headers()["content-type"],
            "application/problem+json",
            "{body}"
        );
        let problem: Value = answer.json().await.expect("problem");
        if let Some(field) = field {
            assert!(
                problem["errors"][field].is_string(),
                "{field} is named: {problem}"
            );
        }
    }
    let malformed = users
        .client
        .post(users.service.url("/profiles"))
        .header(identity::HEADER, identities().header("signup", "users"))
        .header("content-type", "application/json")
        .body("{\"id\": ")
        .send()
        .await
        .expect("malformed");
    assert_eq!(malformed.status(), 400);
    let not_json = users
        .client
        .post(users.service.url("/profiles"))
        .header(identity::HEADER, identities().header("signup", "users"))
        .body("id=1")
        .send()
        .await
        .expect("form");
    assert_eq!(not_json.status(), 415);
    // The server answers 413 before reading the body and closes that connection: use one of
    // its own.
    let huge = reqwest::Client::new()
        .post(users.service.url("/profiles"))
        .header(identity::HEADER, identities().header("signup", "users"))
        .header("content-type", "application/json")
        .body(format!(
            "{{\"id\":\"{ANN}\",\"email\":\"ann@example.com\",\"display_name\":\"{}\"}}",
            "a".repeat(200_000)
        ))
        .send()
        .await
        .expect("huge");
    assert_eq!(huge.status(), 413);
    let bad_id = users.get("42").await;
    assert_eq!(bad_id.status(), 400);
    assert_eq!(bad_id.headers()["content-type"], "application/problem+json");

    assert_eq!(
        users.get(ANN).await.status(),
        404,
        "no bad request stored anything"
    );
}
on_both_backends!(bad_input_gets_a_problem_and_changes_nothing);

async fn deleting_a_profile_can_be_retried(backend: Backend) {
    let users = Users::start(backend).await;
    assert_eq!(
        users.create(&new_profile(ANN, "ann@example.com")).await.status(),
        201
    );
    for _ in 0..2 {
        let deleted = users
            .client
            .delete(users.service.url(&format!("/profiles/{ANN}")))
            .header(identity::HEADER, identities().header("signup", "users"))
            .send()
            .await
            .expect("DELETE");
        assert_eq!(deleted.status(), 204);
    }
    assert_eq!(users.get(ANN).await.status(), 404);
    assert_eq!(
        users.create(&new_profile(BOB, "ann@example.com")).await.status(),
        201,
        "the email is free again"
    );
}
on_both_backends!(deleting_a_profile_can_be_retried);
