//! Password reset and change through the gateway's public API, every service a real process
//! under `dozen up`: a reset link mailed only to a verified address (the same 202 for any
//! address), a weak new password refused with nothing changed, the reset ending every session
//! and the link working once; a change needing the current password, ending every other
//! session and keeping the caller's. On the embedded defaults and on Postgres + NATS JetStream.

use dozen_tests::platform::{Platform, PostgresAndNats};
use dozen_tests::public_api::{PASSWORD, PublicApi};
use dozen_tests::{PATIENCE, eventually};
use reqwest::Method;
use serde_json::{Value, json};

/// A password zxcvbn rates strong, for the reset.
const RESET_PASSWORD: &str = "violet tractor hums at midnight";
/// Another, for the change.
const CHANGED_PASSWORD: &str = "seven quiet otters juggle plums";

/// The reset token in a mail's link (`…/reset?token=<token>`), if it has one.
fn reset_token_in(mail: &Value) -> Option<String> {
    let body = mail["body"].as_str()?;
    let start = body.find("/reset?token=")? + "/reset?token=".len();
    let token: String = body[start..]
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect();
    (!token.is_empty()).then_some(token)
}

/// The notices "your password was changed" sent to `email`.
async fn change_notices(api: &PublicApi, email: &str) -> usize {
    api.mails_to(email)
        .await
        .iter()
        .filter(|mail| {
            mail["subject"]
                .as_str()
                .is_some_and(|s| s.contains("password was changed"))
        })
        .count()
}

async fn request_reset(api: &PublicApi, email: &str) -> (u16, Value) {
    let answer = api
        .client
        .post(api.url("/api/password-resets"))
        .json(&json!({ "email": email }))
        .send()
        .await
        .expect("POST /api/password-resets");
    let status = answer.status().as_u16();
    (status, answer.json().await.expect("JSON"))
}

async fn reset(api: &PublicApi, token: &str, body: &Value) -> reqwest::Response {
    api.client
        .post(api.url(&format!("/api/password-resets/{token}")))
        .json(body)
        .send()
        .await
        .expect("POST /api/password-resets/{token}")
}

async fn log_in(api: &PublicApi, email: &str, password: &str) -> reqwest::Response {
    api.client
        .post(api.url("/api/sessions"))
        .json(&json!({ "email": email, "password": password }))
        .send()
        .await
        .expect("POST /api/sessions")
}

/// A login's access and refresh tokens.
async fn session(api: &PublicApi, email: &str, password: &str) -> (String, String) {
    let answer = log_in(api, email, password).await;
    assert_eq!(answer.status(), 200, "{email} logs in");
    let body: Value = answer.json().await.expect("JSON");
    (
        body["access_token"].as_str().expect("access").to_owned(),
        body["refresh_token"].as_str().expect("refresh").to_owned(),
    )
}

async fn refresh_status(api: &PublicApi, refresh_token: &str) -> u16 {
    api.client
        .post(api.url("/api/sessions/refresh"))
        .json(&json!({ "refresh_token": refresh_token }))
        .send()
        .await
        .expect("POST /api/sessions/refresh")
        .status()
        .as_u16()
}

async fn change_password(api: &PublicApi, access: &str, current: &str, new: &str) -> reqwest::Response {
    api.client
        .put(api.url("/api/me/password"))
        .bearer_auth(access)
        .json(&json!({ "current_password": current, "new_password": new }))
        .send()
        .await
        .expect("PUT /api/me/password")
}

async fn problem_of(answer: reqwest::Response, status: u16, what: &str) -> Value {
    assert_eq!(answer.status().as_u16(), status, "{what}");
    assert_eq!(
        answer.headers()["content-type"],
        "application/problem+json",
        "{what}"
    );
    answer.json().await.expect("a problem")
}

async fn reset_and_change(extra_env: &[(&str, &str)]) {
    let platform = Platform::start(extra_env).await;
    let api = PublicApi::of(&platform);
    for (key, email, name) in [
        ("ada-1", "ada@example.com", "Ada"),
        ("carl-1", "carl@example.com", "Carl"),
    ] {
        assert_eq!(api.sign_up(key, email, name, &["chess"]).await.status(), 202);
    }
    api.verify_and_log_in("ada@example.com").await;
    let (_, old_refresh) = session(&api, "ada@example.com", PASSWORD).await;

    // Any address gets the same answer: unknown, unverified (Carl) and verified (Ada).
    let (status, unknown) = request_reset(&api, "nobody@example.com").await;
    assert_eq!(status, 202);
    let (status, unverified) = request_reset(&api, "carl@example.com").await;
    assert_eq!(status, 202);
    let (status, known) = request_reset(&api, "Ada@Example.com").await;
    assert_eq!(status, 202);
    assert_eq!(unknown, known);
    assert_eq!(unverified, known);
    assert_eq!(known, json!({ "status": "accepted" }));
    let invalid = api
        .client
        .post(api.url("/api/password-resets"))
        .json(&json!({ "email": "not an address" }))
        .send()
        .await
        .expect("answers");
    problem_of(invalid, 422, "a malformed address").await;

    let token = eventually(PATIENCE, "a reset mail to Ada", || async {
        api.mails_to("ada@example.com")
            .await
            .iter()
            .find_map(reset_token_in)
    })
    .await;

    // A weak password is refused as at signup, and nothing changes: the link still works.
    let weak = reset(&api, &token, &json!({ "password": "password1" })).await;
    let problem = problem_of(weak, 422, "a weak password").await;
    assert!(problem["errors"]["password"].is_string(), "{problem}");
    assert_eq!(log_in(&api, "ada@example.com", PASSWORD).await.status(), 200);
    let missing = reset(&api, &token, &json!({})).await;
    problem_of(missing, 422, "no password").await;

    // Bad tokens of every kind get the same 404.
    let mut bad_problems = Vec::new();
    for bad in ["not-a-token", &"0".repeat(64), &"A".repeat(64), "%20"] {
        let answer = reset(&api, bad, &json!({ "password": RESET_PASSWORD })).await;
        bad_problems.push(problem_of(answer, 404, bad).await);
    }
    assert!(bad_problems.windows(2).all(|pair| pair[0] == pair[1]));

    // The reset: the new password works, the old one and every session are done.
    let done = reset(&api, &token, &json!({ "password": RESET_PASSWORD })).await;
    assert_eq!(done.status(), 204);
    assert_eq!(log_in(&api, "ada@example.com", PASSWORD).await.status(), 401);
    assert_eq!(
        refresh_status(&api, &old_refresh).await,
        401,
        "the old session ended"
    );
    let (ada_laptop, laptop_refresh) = session(&api, "ada@example.com", RESET_PASSWORD).await;
    // The link works once.
    let again = reset(&api, &token, &json!({ "password": CHANGED_PASSWORD })).await;
    assert_eq!(problem_of(again, 404, "a used link").await, bad_problems[0]);
    assert_eq!(
        log_in(&api, "ada@example.com", RESET_PASSWORD).await.status(),
        200
    );

    // Ada hears of it; the unknown and unverified addresses got nothing.
    eventually(PATIENCE, "a notice of the reset to Ada", || async {
        change_notices(&api, "ada@example.com").await == 1
    })
    .await;
    assert!(api.mails_to("nobody@example.com").await.is_empty());
    let carl = api.mails_to("carl@example.com").await;
    assert!(
        carl.iter().all(|mail| reset_token_in(mail).is_none()),
        "no reset link for an unverified address: {carl:?}"
    );

    // A change: the current password is required, the new one obeys the rules.
    let (_, phone_refresh) = session(&api, "ada@example.com", RESET_PASSWORD).await;
    let unauthenticated = api
        .client
        .put(api.url("/api/me/password"))
        .json(&json!({ "current_password": RESET_PASSWORD, "new_password": CHANGED_PASSWORD }))
        .send()
        .await
        .expect("answers");
    problem_of(unauthenticated, 401, "no token").await;
    let wrong = change_password(&api, &ada_laptop, "not my password", CHANGED_PASSWORD).await;
    problem_of(wrong, 403, "a wrong current password").await;
    let weak = change_password(&api, &ada_laptop, RESET_PASSWORD, "password1").await;
    let problem = problem_of(weak, 422, "a weak new password").await;
    assert!(problem["errors"]["new_password"].is_string(), "{problem}");
    assert_eq!(
        refresh_status(&api, &phone_refresh).await,
        200,
        "nothing changed yet"
    );
    let (_, phone_refresh) = session(&api, "ada@example.com", RESET_PASSWORD).await;

    let changed = change_password(&api, &ada_laptop, RESET_PASSWORD, CHANGED_PASSWORD).await;
    assert_eq!(changed.status(), 204);
    assert_eq!(
        refresh_status(&api, &phone_refresh).await,
        401,
        "another session ended"
    );
    assert_eq!(
        refresh_status(&api, &laptop_refresh).await,
        200,
        "the caller's goes on"
    );
    let me = api.as_user(&ada_laptop, Method::GET, "/api/me").await;
    assert_eq!(me.status(), 200);
    assert_eq!(
        log_in(&api, "ada@example.com", RESET_PASSWORD).await.status(),
        401
    );
    assert_eq!(
        log_in(&api, "ada@example.com", CHANGED_PASSWORD).await.status(),
        200
    );
    eventually(PATIENCE, "a notice of the change to Ada", || async {
        change_notices(&api, "ada@example.com").await == 2
    })
    .await;

    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn password_reset_and_change_on_the_embedded_defaults() {
    reset_and_change(&[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn password_reset_and_change_on_postgres_and_nats() {
    let backing = PostgresAndNats::new("password_reset");
    reset_and_change(&backing.env()).await;
}
