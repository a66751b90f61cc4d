//! Changing an email address through the
//! gateway's public API with every service a real process under `dozen up`: the change needs
//! the password and takes effect only when the link mailed to the new address is followed; the
//! old address hears of it without learning the new one; a taken address is answered like a
//! free one; a wrong password is refused and throttled; a superseded or used link changes
//! nothing; of two accounts racing for one address exactly one wins. The journey runs on the
//! embedded defaults and on Postgres + NATS JetStream, the attacker cases on the former.

use dozen_tests::platform::{Platform, PostgresAndNats};
use dozen_tests::public_api::{PASSWORD, PublicApi};
use dozen_tests::{PATIENCE, eventually};
use reqwest::Method;
use serde_json::{Value, json};

/// The email change token in a mail's link (`…/confirm-email?token=<token>`), if it has one.
fn change_token_in(mail: &Value) -> Option<String> {
    let body = mail["body"].as_str()?;
    let start = body.find("/confirm-email?token=")? + "/confirm-email?token=".len();
    let token: String = body[start..]
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect();
    (!token.is_empty()).then_some(token)
}

/// The newest email change link mailed to `email`, once there are `count` of them.
async fn change_link(api: &PublicApi, email: &str, count: usize) -> String {
    eventually(
        PATIENCE,
        &format!("email change link {count} to {email}"),
        || async {
            let links: Vec<String> = api
                .mails_to(email)
                .await
                .iter()
                .filter_map(change_token_in)
                .collect();
            (links.len() >= count).then(|| links[0].clone())
        },
    )
    .await
}

/// The mails to `email` whose subject contains `words`.
async fn mails_about(api: &PublicApi, email: &str, words: &str) -> Vec<Value> {
    api.mails_to(email)
        .await
        .into_iter()
        .filter(|mail| mail["subject"].as_str().is_some_and(|s| s.contains(words)))
        .collect()
}

async fn request_change(api: &PublicApi, access: &str, email: &str, password: &str) -> reqwest::Response {
    api.client
        .post(api.url("/api/me/email"))
        .bearer_auth(access)
        .json(&json!({ "email": email, "password": password }))
        .send()
        .await
        .expect("POST /api/me/email")
}

async fn follow(api: &PublicApi, token: &str) -> reqwest::Response {
    api.client
        .post(api.url(&format!("/api/email-changes/{token}")))
        .send()
        .await
        .expect("POST /api/email-changes/{token}")
}

async fn log_in(api: &PublicApi, email: &str, password: &str) -> u16 {
    api.client
        .post(api.url("/api/sessions"))
        .json(&json!({ "email": email, "password": password }))
        .send()
        .await
        .expect("POST /api/sessions")
        .status()
        .as_u16()
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

/// The caller's email as `/api/me` shows it.
async fn email_of(api: &PublicApi, access: &str) -> String {
    let me: Value = api
        .as_user(access, Method::GET, "/api/me")
        .await
        .json()
        .await
        .expect("JSON");
    me["profile"]["email"].as_str().expect("an email").to_owned()
}

/// Sign up `email` and verify it; the access token.
async fn member(api: &PublicApi, key: &str, email: &str, name: &str) -> String {
    assert_eq!(api.sign_up(key, email, name, &["chess"]).await.status(), 202);
    api.verify_and_log_in(email).await
}

async fn change_journey(extra_env: &[(&str, &str)]) {
    let platform = Platform::start(extra_env).await;
    let api = PublicApi::of(&platform);
    let ada = member(&api, "ada-1", "ada@example.com", "Ada").await;

    let asked = request_change(&api, &ada, "Ada.Lovelace@Example.com ", PASSWORD).await;
    assert_eq!(asked.status(), 202);
    assert_eq!(
        asked.json::<Value>().await.expect("JSON"),
        json!({ "status": "accepted" })
    );
    let token = change_link(&api, "ada.lovelace@example.com", 1).await;

    // The old address hears of it, without learning the new one.
    let notices = eventually(PATIENCE, "a notice to the old address", || async {
        let notices = mails_about(&api, "ada@example.com", "email address was asked for").await;
        (!notices.is_empty()).then_some(notices)
    })
    .await;
    assert!(
        !notices[0]["body"].as_str().expect("a body").contains("lovelace"),
        "the notice does not name the new address: {}",
        notices[0]
    );

    // Nothing changes before the link is followed.
    assert_eq!(log_in(&api, "ada.lovelace@example.com", PASSWORD).await, 401);
    assert_eq!(log_in(&api, "ada@example.com", PASSWORD).await, 200);
    assert_eq!(email_of(&api, &ada).await, "ada@example.com");

    let followed = follow(&api, &token).await;
    assert_eq!(followed.status(), 200);
    assert_eq!(
        followed.json::<Value>().await.expect("JSON"),
        json!({ "status": "changed" })
    );
    assert_eq!(email_of(&api, &ada).await, "ada.lovelace@example.com");
    eventually(PATIENCE, "login with the new address", || async {
        (log_in(&api, "ada.lovelace@example.com", PASSWORD).await == 200).then_some(())
    })
    .await;
    assert_eq!(
        log_in(&api, "ada@example.com", PASSWORD).await,
        401,
        "the old address no longer logs in"
    );

    // The link works once.
    problem_of(follow(&api, &token).await, 404, "a replayed link").await;

    // Password resets go to the new address now.
    let reset = api
        .client
        .post(api.url("/api/password-resets"))
        .json(&json!({ "email": "ada.lovelace@example.com" }))
        .send()
        .await
        .expect("POST /api/password-resets");
    assert_eq!(reset.status(), 202);
    eventually(PATIENCE, "a reset link to the new address", || async {
        (!mails_about(&api, "ada.lovelace@example.com", "Reset your dozen password")
            .await
            .is_empty())
        .then_some(())
    })
    .await;

    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_email_change_takes_effect_once_the_new_address_is_proven_on_the_embedded_defaults() {
    change_journey(&[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_email_change_takes_effect_once_the_new_address_is_proven_on_postgres_and_nats() {
    let backing = PostgresAndNats::new("email_change");
    change_journey(&backing.env()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_email_change_requests_get_a_problem_and_change_nothing() {
    let platform = Platform::start(&[]).await;
    let api = PublicApi::of(&platform);
    let ada = member(&api, "ada-1", "ada@example.com", "Ada").await;

    let anonymous = api
        .client
        .post(api.url("/api/me/email"))
        .json(&json!({ "email": "new@example.com", "password": PASSWORD }))
        .send()
        .await
        .expect("answers");
    problem_of(anonymous, 401, "no access token").await;
    for (body, field) in [
        (
            json!({ "email": "not an address", "password": PASSWORD }),
            "email",
        ),
        (json!({ "email": "new@example.com", "password": "" }), "password"),
        (
            json!({ "email": "ADA@example.com", "password": PASSWORD }),
            "email",
        ),
    ] {
        let answer = api
            .client
            .post(api.url("/api/me/email"))
            .bearer_auth(&ada)
            .json(&body)
            .send()
            .await
            .expect("answers");
        let problem = problem_of(answer, 422, &body.to_string()).await;
        assert!(problem["errors"][field].is_string(), "{problem}");
    }
    let no_body = api
        .client
        .post(api.url("/api/me/email"))
        .bearer_auth(&ada)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .expect("answers");
    assert!(no_body.status().is_client_error(), "{}", no_body.status());

    // Links that are not links, all the same 404.
    let mut problems = Vec::new();
    for bad in ["not-a-token", &"0".repeat(64), &"A".repeat(64), "%20"] {
        problems.push(problem_of(follow(&api, bad).await, 404, bad).await);
    }
    assert!(problems.windows(2).all(|pair| pair[0] == pair[1]));

    assert_eq!(email_of(&api, &ada).await, "ada@example.com");
    assert!(mails_about(&api, "new@example.com", "").await.is_empty());
    assert!(
        mails_about(&api, "ada@example.com", "email address was asked for")
            .await
            .is_empty()
    );
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_is_refused_and_throttled() {
    let platform = Platform::start(&[]).await;
    let api = PublicApi::of(&platform);
    let ada = member(&api, "ada-1", "ada@example.com", "Ada").await;

    let wrong = request_change(&api, &ada, "new@example.com", "not my password").await;
    problem_of(wrong, 401, "a wrong password").await;
    // Guessing on: the login throttle stops it, as it would a login.
    let throttled = eventually(PATIENCE, "the guesses are throttled", || async {
        let answer = request_change(&api, &ada, "new@example.com", "still not my password").await;
        match answer.status().as_u16() {
            401 => None,
            429 => Some(answer),
            other => panic!("a guess answered {other}"),
        }
    })
    .await;
    assert!(throttled.headers().contains_key("retry-after"));
    problem_of(throttled, 429, "throttled").await;

    assert_eq!(email_of(&api, &ada).await, "ada@example.com");
    assert!(
        api.mails_to("new@example.com").await.is_empty(),
        "no link for a wrong password"
    );
    assert!(
        mails_about(&api, "ada@example.com", "email address was asked for")
            .await
            .is_empty()
    );
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn asking_for_a_taken_address_looks_like_asking_for_a_free_one() {
    let platform = Platform::start(&[]).await;
    let api = PublicApi::of(&platform);
    let ada = member(&api, "ada-1", "ada@example.com", "Ada").await;
    let bob = member(&api, "bob-1", "bob@example.com", "Bob").await;

    let taken = request_change(&api, &ada, "BOB@example.com", PASSWORD).await;
    let (taken_status, taken_body) = (taken.status(), taken.json::<Value>().await.expect("JSON"));
    let free = request_change(&api, &ada, "free@example.com", PASSWORD).await;
    assert_eq!(
        (taken_status, taken_body),
        (free.status(), free.json::<Value>().await.expect("JSON"))
    );

    // The requester's old address hears the same of both; Bob gets a notice, and no link.
    eventually(PATIENCE, "two notices to Ada's address", || async {
        let notices = mails_about(&api, "ada@example.com", "email address was asked for").await;
        (notices.len() == 2 && notices[0]["subject"] == notices[1]["subject"]).then_some(())
    })
    .await;
    eventually(PATIENCE, "a notice to Bob", || async {
        (!mails_about(&api, "bob@example.com", "use your address")
            .await
            .is_empty())
        .then_some(())
    })
    .await;
    change_link(&api, "free@example.com", 1).await;
    assert!(
        api.mails_to("bob@example.com")
            .await
            .iter()
            .all(|mail| change_token_in(mail).is_none())
    );
    assert_eq!(email_of(&api, &ada).await, "ada@example.com");
    assert_eq!(email_of(&api, &bob).await, "bob@example.com");
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_link_superseded_by_a_newer_request_changes_nothing() {
    let platform = Platform::start(&[]).await;
    let api = PublicApi::of(&platform);
    let ada = member(&api, "ada-1", "ada@example.com", "Ada").await;

    assert_eq!(
        request_change(&api, &ada, "first@example.com", PASSWORD)
            .await
            .status(),
        202
    );
    let first = change_link(&api, "first@example.com", 1).await;
    assert_eq!(
        request_change(&api, &ada, "second@example.com", PASSWORD)
            .await
            .status(),
        202
    );
    let second = change_link(&api, "second@example.com", 1).await;

    problem_of(follow(&api, &first).await, 404, "a superseded link").await;
    assert_eq!(email_of(&api, &ada).await, "ada@example.com");
    assert_eq!(follow(&api, &second).await.status(), 200);
    assert_eq!(email_of(&api, &ada).await, "second@example.com");
    eventually(PATIENCE, "login with the newest address", || async {
        (log_in(&api, "second@example.com", PASSWORD).await == 200).then_some(())
    })
    .await;
    assert_eq!(log_in(&api, "first@example.com", PASSWORD).await, 401);
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn of_two_accounts_racing_for_one_address_exactly_one_wins() {
    // Both links go to one address within a minute: let the mail throttle pass them.
    let platform = Platform::start(&[("RESEND_INTERVAL", "0s")]).await;
    let api = PublicApi::of(&platform);
    let ada = member(&api, "ada-1", "ada@example.com", "Ada").await;
    let bob = member(&api, "bob-1", "bob@example.com", "Bob").await;

    assert_eq!(
        request_change(&api, &ada, "carol@example.com", PASSWORD)
            .await
            .status(),
        202
    );
    change_link(&api, "carol@example.com", 1).await;
    assert_eq!(
        request_change(&api, &bob, "carol@example.com", PASSWORD)
            .await
            .status(),
        202
    );
    change_link(&api, "carol@example.com", 2).await;
    let links: Vec<String> = api
        .mails_to("carol@example.com")
        .await
        .iter()
        .filter_map(change_token_in)
        .collect();
    assert_eq!(links.len(), 2);

    let (one, other) = tokio::join!(follow(&api, &links[0]), follow(&api, &links[1]));
    let mut statuses = [one.status().as_u16(), other.status().as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409], "one wins, the other is refused");
    let emails = [email_of(&api, &ada).await, email_of(&api, &bob).await];
    let winners = emails
        .iter()
        .filter(|email| *email == "carol@example.com")
        .count();
    assert_eq!(winners, 1, "{emails:?}");
    let loser_email = if emails[0] == "carol@example.com" {
        "bob@example.com"
    } else {
        "ada@example.com"
    };
    assert!(
        emails.contains(&loser_email.to_owned()),
        "the loser keeps their address: {emails:?}"
    );
    eventually(PATIENCE, "the winner logs in with the address", || async {
        (log_in(&api, "carol@example.com", PASSWORD).await == 200).then_some(())
    })
    .await;
    assert_eq!(log_in(&api, loser_email, PASSWORD).await, 200);
    platform.stop().await;
}
