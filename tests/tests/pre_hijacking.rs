//! Pre-hijacking (issue #23): someone signs up first with another person's address and a
//! password they know, hoping the owner will verify it later and share the account. A newer
//! signup for an address whose account was never verified replaces that account: its
//! password never logs in and its link does nothing, while the newer owner's works. Of many
//! concurrent signups for one address exactly one account is left, and its link works. On the
//! embedded defaults and on Postgres + NATS JetStream.

use dozen_tests::identity;
use dozen_tests::platform::{Platform, PostgresAndNats};
use dozen_tests::public_api::{PASSWORD, PublicApi, subject_of, token_in};
use dozen_tests::{PATIENCE, eventually};
use reqwest::Method;
use serde_json::{Value, json};

/// A password the attacker knows, zxcvbn-strong.
const ATTACKER_PASSWORD: &str = "purple walrus eats cold pancakes";

async fn sign_up_with(api: &PublicApi, key: &str, email: &str, password: &str, name: &str) -> u16 {
    api.client
        .post(api.url("/api/signups"))
        .header("Idempotency-Key", key)
        .json(&json!({ "email": email, "password": password, "display_name": name, "interests": [] }))
        .send()
        .await
        .expect("POST /api/signups")
        .status()
        .as_u16()
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

/// Follow a verification link: its status and body.
async fn follow(api: &PublicApi, token: &str) -> (u16, Value) {
    let answer = api
        .client
        .post(api.url(&format!("/api/verifications/{token}")))
        .send()
        .await
        .expect("POST /api/verifications/{token}");
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(Value::Null))
}

/// The verification tokens mailed to `email`, newest first.
async fn links_to(api: &PublicApi, email: &str) -> Vec<String> {
    api.mails_to(email).await.iter().filter_map(token_in).collect()
}

/// The id of the profile that holds `email`, asked of users as signup would.
async fn holder_of(platform: &Platform, email: &str) -> String {
    let answer = reqwest::Client::new()
        .get(platform.url("users", "/profiles"))
        .header(
            identity::HEADER,
            platform.service_authorization("signup", "users"),
        )
        .query(&[("email", email)])
        .send()
        .await
        .expect("users answers");
    assert_eq!(answer.status(), 200, "one profile holds {email}");
    let profile: Value = answer.json().await.expect("a profile");
    profile["id"].as_str().expect("an id").to_owned()
}

async fn the_attackers_earlier_account_is_replaced(extra_env: &[(&str, &str)]) {
    let platform = Platform::start(extra_env).await;
    let api = PublicApi::of(&platform);
    let victim = "vic@example.com";

    // The attacker signs up first with the victim's address and a password they know, and
    // (say they can read it) keeps the verification link.
    assert_eq!(
        sign_up_with(&api, "attacker", victim, ATTACKER_PASSWORD, "Mallory").await,
        202
    );
    let attackers_link = eventually(PATIENCE, "the attacker's verification link", || async {
        links_to(&api, victim).await.into_iter().next()
    })
    .await;
    assert_eq!(
        log_in(&api, victim, ATTACKER_PASSWORD).await,
        403,
        "unverified: no login yet"
    );

    // The victim signs up later with their own password and gets a link of their own; it
    // goes out with the replacement, which revokes the attacker's link.
    assert_eq!(sign_up_with(&api, "victim", victim, PASSWORD, "Vic").await, 202);
    let victims_link = eventually(PATIENCE, "the victim's verification link", || async {
        let links = links_to(&api, victim).await;
        (links.len() == 2).then(|| links[0].clone())
    })
    .await;
    assert_ne!(victims_link, attackers_link);

    // The attacker's link does nothing, answered exactly as a made-up token is.
    let (status, attackers) = follow(&api, &attackers_link).await;
    let (_, unknown) = follow(&api, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").await;
    assert_eq!(status, 404, "the replaced account's link: {attackers}");
    assert_eq!(attackers, unknown, "answered as any bad token");
    assert_eq!(
        log_in(&api, victim, ATTACKER_PASSWORD).await,
        401,
        "the attacker's password is gone"
    );

    // The victim verifies, logs in with their password, and the account is theirs.
    let (status, _) = follow(&api, &victims_link).await;
    assert_eq!(status, 200, "the victim's link works");
    let access = eventually(PATIENCE, "the victim logs in", || async {
        let answer = api
            .client
            .post(api.url("/api/sessions"))
            .json(&json!({ "email": victim, "password": PASSWORD }))
            .send()
            .await
            .expect("POST /api/sessions");
        if answer.status() != 200 {
            return None;
        }
        let session: Value = answer.json().await.ok()?;
        session["access_token"].as_str().map(str::to_owned)
    })
    .await;
    let me: Value = api
        .as_user(&access, Method::GET, "/api/me")
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(me["profile"]["display_name"], "Vic");
    assert_eq!(me["profile"]["verified"], true);
    assert_eq!(subject_of(&access), holder_of(&platform, victim).await);
    assert_eq!(log_in(&api, victim, ATTACKER_PASSWORD).await, 401);
    let (status, _) = follow(&api, &attackers_link).await;
    assert_eq!(status, 404, "still nothing after the victim verified");

    // Once verified, the account is the victim's: a later signup replaces nothing, and the
    // victim is told of it instead.
    assert_eq!(
        sign_up_with(&api, "attacker-again", victim, ATTACKER_PASSWORD, "Mallory").await,
        202
    );
    eventually(PATIENCE, "a notice to the victim", || async {
        api.mails_to(victim)
            .await
            .iter()
            .any(|mail| {
                mail["subject"]
                    .as_str()
                    .is_some_and(|s| s.contains("tried to sign up"))
            })
            .then_some(())
    })
    .await;
    assert_eq!(log_in(&api, victim, ATTACKER_PASSWORD).await, 401);
    assert_eq!(log_in(&api, victim, PASSWORD).await, 200);
    assert_eq!(subject_of(&access), holder_of(&platform, victim).await);
    platform.stop().await;
}

async fn of_concurrent_signups_one_account_is_left_whose_link_works(extra_env: &[(&str, &str)]) {
    const SIGNUPS: usize = 12;
    let platform = Platform::start(extra_env).await;
    let api = PublicApi::of(&platform);
    let email = "dee@example.com";
    let attempts = (0..SIGNUPS).map(|i| {
        let api = &api;
        async move {
            // Each retries with its own key while the platform answers 5xx (two loaded cores).
            let mut status = 500;
            for _ in 0..5 {
                status = sign_up_with(api, &format!("dee-{i}"), email, PASSWORD, &format!("Dee {i}")).await;
                if status < 500 {
                    break;
                }
            }
            status
        }
    });
    for status in futures_util::future::join_all(attempts).await {
        assert_eq!(status, 202);
    }
    let holder = holder_of(&platform, email).await;
    eventually(PATIENCE, "every signup's event handled", || async {
        platform.signups_settled(SIGNUPS).await.then_some(())
    })
    .await;

    // Exactly one link works: the holder's. Every other one (of a replaced account) is
    // refused, whichever order they are tried in.
    api.verify_the_one_working_link(email).await;
    let access = eventually(PATIENCE, "the holder logs in", || async {
        let answer = api
            .client
            .post(api.url("/api/sessions"))
            .json(&json!({ "email": email, "password": PASSWORD }))
            .send()
            .await
            .expect("POST /api/sessions");
        if answer.status() != 200 {
            return None;
        }
        let session: Value = answer.json().await.ok()?;
        session["access_token"].as_str().map(str::to_owned)
    })
    .await;
    assert_eq!(
        subject_of(&access),
        holder,
        "the account logged in is the one left"
    );
    assert_eq!(holder_of(&platform, email).await, holder);
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_newer_signup_replaces_the_attackers_unverified_account() {
    the_attackers_earlier_account_is_replaced(&[("RESEND_INTERVAL", "0s")]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_newer_signup_replaces_the_attackers_unverified_account_on_postgres_and_nats() {
    let backing = PostgresAndNats::new("pre_hijacking");
    let mut env = backing.env().to_vec();
    env.push(("RESEND_INTERVAL", "0s"));
    the_attackers_earlier_account_is_replaced(&env).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_signups_for_one_address_leave_one_account_whose_link_works() {
    of_concurrent_signups_one_account_is_left_whose_link_works(&[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_signups_for_one_address_leave_one_account_on_postgres_and_nats() {
    let backing = PostgresAndNats::new("pre_hijacking_concurrent");
    of_concurrent_signups_one_account_is_left_whose_link_works(&backing.env()).await;
}
