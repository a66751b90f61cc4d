//! Accounts through the gateway's public API, every service a real process under `dozen up`:
//! refresh sessions (rotation, reuse of a rotated token ending the whole session, the browser's
//! cookie), the sessions list, logout and logout everywhere. On the embedded defaults and on
//! Postgres + NATS JetStream.

use dozen_tests::platform::{Platform, PostgresAndNats};
use dozen_tests::public_api::{PASSWORD, PublicApi, subject_of};
use reqwest::Method;
use serde_json::{Value, json};

/// The tokens of a login or a refresh.
#[derive(Debug, Clone)]
struct Tokens {
    access: String,
    refresh: String,
    /// The `Set-Cookie` header that came with them.
    cookie: String,
}

/// A claim of an access token.
fn claim(access_token: &str, name: &str) -> String {
    use base64::Engine as _;
    let payload = access_token.split('.').nth(1).expect("a JWT");
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    let claims: Value = serde_json::from_slice(&claims).expect("JSON claims");
    claims[name].as_str().expect("a string claim").to_owned()
}

async fn tokens_of(answer: reqwest::Response) -> Tokens {
    assert_eq!(answer.status(), 200, "tokens are answered");
    assert_eq!(answer.headers()["cache-control"], "no-store");
    let cookie = answer.headers()["set-cookie"].to_str().expect("text").to_owned();
    let body: Value = answer.json().await.expect("JSON");
    assert_eq!(body["token_type"], "Bearer");
    assert!(body["refresh_expires_in"].as_u64().expect("a number") > 0);
    Tokens {
        access: body["access_token"].as_str().expect("an access token").to_owned(),
        refresh: body["refresh_token"]
            .as_str()
            .expect("a refresh token")
            .to_owned(),
        cookie,
    }
}

/// `POST /api/sessions` as a client with `user_agent`.
async fn log_in(api: &PublicApi, email: &str, user_agent: &str) -> Tokens {
    let answer = api
        .client
        .post(api.url("/api/sessions"))
        .header("user-agent", user_agent)
        .json(&json!({ "email": email, "password": PASSWORD }))
        .send()
        .await
        .expect("POST /api/sessions");
    tokens_of(answer).await
}

/// `POST /api/sessions/refresh` with `body`, and `cookie` as the browser would send it.
async fn refresh(api: &PublicApi, body: Value, cookie: Option<&str>) -> reqwest::Response {
    let mut request = api.client.post(api.url("/api/sessions/refresh")).json(&body);
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    request.send().await.expect("POST /api/sessions/refresh")
}

async fn refresh_with(api: &PublicApi, token: &str) -> reqwest::Response {
    refresh(api, json!({ "refresh_token": token }), None).await
}

async fn assert_refused(answer: reqwest::Response, what: &str) {
    assert_eq!(answer.status(), 401, "{what}");
    let cleared = answer.headers()["set-cookie"].to_str().expect("text").to_owned();
    assert!(
        cleared.starts_with("refresh_token=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    let problem: Value = answer.json().await.expect("a problem");
    assert_eq!(problem["status"], 401, "{what}");
    assert!(
        problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{what}"
    );
}

async fn sessions_list(api: &PublicApi, access: &str) -> Vec<Value> {
    let answer = api.as_user(access, Method::GET, "/api/sessions").await;
    assert_eq!(answer.status(), 200);
    answer.json().await.expect("a list")
}

async fn refresh_sessions(extra_env: &[(&str, &str)]) {
    let platform = Platform::start(extra_env).await;
    let api = PublicApi::of(&platform);
    assert_eq!(
        api.sign_up("ada-1", "ada@example.com", "Ada", &["chess"])
            .await
            .status(),
        202
    );
    assert_eq!(
        api.sign_up("bob-1", "bob@example.com", "Bob", &["chess"])
            .await
            .status(),
        202
    );
    api.verify_and_log_in("ada@example.com").await;
    api.verify_and_log_in("bob@example.com").await;

    // A login answers a refresh token in the body and as a cookie only the session routes get,
    // out of page scripts' reach.
    let first = log_in(&api, "ada@example.com", "laptop browser").await;
    for attribute in ["Path=/api/sessions", "HttpOnly", "Secure", "SameSite=Strict"] {
        assert!(
            first.cookie.contains(attribute),
            "{attribute} in {}",
            first.cookie
        );
    }
    assert!(
        first
            .cookie
            .starts_with(&format!("refresh_token={};", first.refresh))
    );
    let session = claim(&first.access, "sid");

    // Each refresh answers a new access token in the same session and rotates the refresh token.
    let second = tokens_of(refresh_with(&api, &first.refresh).await).await;
    assert_ne!(second.refresh, first.refresh);
    assert_eq!(claim(&second.access, "sid"), session);
    assert_eq!(subject_of(&second.access), subject_of(&first.access));
    let me = api.as_user(&second.access, Method::GET, "/api/me").await;
    assert_eq!(me.status(), 200, "the refreshed access token works");
    // The browser's way: the cookie, and no token in the body.
    let cookie = format!("refresh_token={}", second.refresh);
    let third = tokens_of(refresh(&api, json!({}), Some(&cookie)).await).await;
    assert_eq!(claim(&third.access, "sid"), session);

    // A rotated token used again means someone else holds a copy: the whole session ends, so
    // the newest token, the one the thief may have got, stops working too.
    assert_refused(refresh_with(&api, &first.refresh).await, "a rotated token").await;
    assert_refused(
        refresh_with(&api, &third.refresh).await,
        "the newest token of a reused family",
    )
    .await;

    // Bad refresh tokens of every kind get the same 401.
    for bad in [
        json!({}),
        json!({ "refresh_token": "" }),
        json!({ "refresh_token": "not a token" }),
        json!({ "refresh_token": "0".repeat(64) }),
        json!({ "refresh_token": "é".repeat(5000) }),
    ] {
        assert_refused(refresh(&api, bad.clone(), None).await, &bad.to_string()).await;
    }
    let wrong_type = refresh(&api, json!({ "refresh_token": 7 }), None).await;
    assert_eq!(wrong_type.status(), 422);

    // The sessions list: Ada's live sessions only, the caller's marked current.
    let laptop = log_in(&api, "ada@example.com", "laptop browser").await;
    let phone = log_in(&api, "ada@example.com", "phone browser").await;
    let bob = log_in(&api, "bob@example.com", "bob's browser").await;
    let listed = sessions_list(&api, &phone.access).await;
    // Ada's first login (by `verify_and_log_in`), the laptop and the phone; not the ended one.
    assert_eq!(listed.len(), 3, "{listed:?}");
    for entry in &listed {
        for field in ["id", "created_at", "last_used_at", "client_address", "user_agent"] {
            assert!(entry[field].is_string(), "{field} in {entry}");
        }
        assert_eq!(entry["client_address"], "127.0.0.1");
    }
    let entry_of = |tokens: &Tokens| {
        let id = claim(&tokens.access, "sid");
        listed
            .iter()
            .find(|entry| entry["id"] == id.as_str())
            .cloned()
            .expect("listed")
    };
    let (phone_entry, laptop_entry) = (entry_of(&phone), entry_of(&laptop));
    assert_eq!(phone_entry["current"], true);
    assert_eq!(phone_entry["user_agent"], "phone browser");
    assert_eq!(laptop_entry["current"], false);
    assert_eq!(laptop_entry["user_agent"], "laptop browser");
    assert_eq!(listed.iter().filter(|entry| entry["current"] == true).count(), 1);
    let unauthenticated = api
        .client
        .get(api.url("/api/sessions"))
        .send()
        .await
        .expect("answers");
    assert_eq!(unauthenticated.status(), 401);
    let unauthenticated = api
        .client
        .delete(api.url("/api/sessions/current"))
        .send()
        .await
        .expect("answers");
    assert_eq!(unauthenticated.status(), 401);

    // Logout ends this session at once and no other.
    let logout = api
        .as_user(&laptop.access, Method::DELETE, "/api/sessions/current")
        .await;
    assert_eq!(logout.status(), 204);
    assert!(
        logout.headers()["set-cookie"]
            .to_str()
            .expect("text")
            .contains("Max-Age=0")
    );
    assert_refused(refresh_with(&api, &laptop.refresh).await, "a logged-out session").await;
    let listed = sessions_list(&api, &phone.access).await;
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|entry| entry["user_agent"] != "laptop browser"));
    let phone = tokens_of(refresh_with(&api, &phone.refresh).await).await;

    // Logout everywhere ends every session of the caller, and nobody else's.
    let tablet = log_in(&api, "ada@example.com", "tablet browser").await;
    let everywhere = api.as_user(&phone.access, Method::DELETE, "/api/sessions").await;
    assert_eq!(everywhere.status(), 204);
    assert_refused(
        refresh_with(&api, &phone.refresh).await,
        "phone after logout everywhere",
    )
    .await;
    assert_refused(
        refresh_with(&api, &tablet.refresh).await,
        "tablet after logout everywhere",
    )
    .await;
    assert!(sessions_list(&api, &tablet.access).await.is_empty());
    // Bob's sessions (his first login and this one) go on.
    let bob = tokens_of(refresh_with(&api, &bob.refresh).await).await;
    assert_eq!(sessions_list(&api, &bob.access).await.len(), 2);

    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refresh_sessions_on_the_embedded_defaults() {
    refresh_sessions(&[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refresh_sessions_on_postgres_and_nats() {
    let backing = PostgresAndNats::new("accounts");
    refresh_sessions(&backing.env()).await;
}
