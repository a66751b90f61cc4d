//! Credentials under attack, through the real binaries (issue #21), each test named after the
//! OWASP ASVS 5.0 requirement it checks: login throttling that holds under concurrent guesses
//! and cannot be turned against an account's owner (V6.3.1, V6.1.1), password strength
//! (V6.2.4, V6.2.9, V6.2.11), and a signup whose time does not tell which emails have accounts
//! (V6.3.8). The tests of the whole platform run on the embedded defaults and on Postgres +
//! NATS JetStream (`on_both_platforms!`).

mod passwords_support;

use std::time::{Duration, Instant};

use dozen_tests::database::Backend;
use dozen_tests::platform::Platform;
use dozen_tests::public_api::PublicApi;
use dozen_tests::{on_both_backends, on_both_platforms};
use passwords_support::{PASSWORD, Passwords};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// How many answers of each status `answers` holds: (401s, 429s); any other status fails.
fn unauthorized_and_throttled(answers: &[StatusCode]) -> (usize, usize) {
    let count = |status| answers.iter().filter(|&&answer| answer == status).count();
    let (unauthorized, throttled) = (
        count(StatusCode::UNAUTHORIZED),
        count(StatusCode::TOO_MANY_REQUESTS),
    );
    assert_eq!(
        unauthorized + throttled,
        answers.len(),
        "every guess gets 401 or 429: {answers:?}"
    );
    (unauthorized, throttled)
}

/// 30 wrong guesses at once, from `address`, for the emails `email_of(i)`; their statuses.
async fn concurrent_guesses(
    passwords: &Passwords,
    address: &str,
    email_of: impl Fn(usize) -> String,
) -> Vec<StatusCode> {
    let guesses = (0..30).map(|i| {
        let email = email_of(i);
        async move {
            passwords
                .login_from(Some(address), &email, &format!("wrong-guess-{i}"))
                .await
                .status()
        }
    });
    futures_util::future::join_all(guesses).await
}

/// V6.3.1: of 30 simultaneous wrong guesses, exactly the allowance reaches the hash — for one
/// account from one address, and for one address trying many accounts. The attempt is counted
/// before its hash, so no guess slips through between the check and the count.
async fn v6_3_1_login_throttling_holds_under_concurrent_guesses(backend: Backend) {
    let passwords = Passwords::start(
        backend,
        &[
            ("LOGIN_MAX_FAILURES_PER_ACCOUNT", "4"),
            ("LOGIN_MAX_FAILURES_PER_ADDRESS", "7"),
            // Longer than the flood takes, so that no delay ends in the middle of it.
            ("LOGIN_FIRST_DELAY", "10m"),
            ("TRUST_FORWARDED_FOR", "true"),
        ],
    )
    .await;
    passwords.verified_user("victim@example.com").await;

    let hashed_before = passwords.argon2_operations().await;
    let answers = concurrent_guesses(&passwords, "203.0.113.10", |_| "victim@example.com".to_owned()).await;
    assert_eq!(
        unauthorized_and_throttled(&answers),
        (4, 26),
        "one account from one address: its allowance of 4"
    );
    assert_eq!(
        passwords.argon2_operations().await - hashed_before,
        4.0,
        "only the allowed guesses were hashed"
    );

    let hashed_before = passwords.argon2_operations().await;
    let answers =
        concurrent_guesses(&passwords, "203.0.113.20", |i| format!("someone-{i}@example.com")).await;
    assert_eq!(
        unauthorized_and_throttled(&answers),
        (7, 23),
        "one address, many accounts: the address's limit of 7"
    );
    assert_eq!(passwords.argon2_operations().await - hashed_before, 7.0);
}
on_both_backends!(v6_3_1_login_throttling_holds_under_concurrent_guesses);

/// V6.3.1 and V6.1.1 (no malicious account lockout): a stranger hammering an account from
/// their address is delayed there, while the owner logs in from theirs; a success clears the
/// owner's own failures.
async fn v6_3_1_a_strangers_failures_do_not_lock_the_owner_out(backend: Backend) {
    let passwords = Passwords::start(
        backend,
        &[
            ("LOGIN_MAX_FAILURES_PER_ACCOUNT", "3"),
            ("LOGIN_FIRST_DELAY", "10m"),
            ("TRUST_FORWARDED_FOR", "true"),
        ],
    )
    .await;
    passwords.verified_user("owner@example.com").await;
    let (stranger, owner) = (Some("203.0.113.66"), Some("198.51.100.7"));

    let mut statuses = Vec::new();
    for i in 0..6 {
        let answer = passwords
            .login_from(stranger, "owner@example.com", &format!("guess-{i}"))
            .await;
        statuses.push(answer.status());
    }
    assert_eq!(unauthorized_and_throttled(&statuses), (3, 3), "{statuses:?}");
    let delayed = passwords
        .login_from(stranger, "owner@example.com", PASSWORD)
        .await;
    assert_eq!(
        delayed.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "even the right password waits out the delay from the stranger's address"
    );

    let owners = passwords.login_from(owner, "owner@example.com", PASSWORD).await;
    assert_eq!(owners.status(), StatusCode::OK, "the owner is not locked out");

    // The owner's own slips are forgotten at their next success.
    for _ in 0..2 {
        let slip = passwords
            .login_from(owner, "owner@example.com", "a-slip-of-the-finger")
            .await;
        assert_eq!(slip.status(), StatusCode::UNAUTHORIZED);
    }
    let owners = passwords.login_from(owner, "owner@example.com", PASSWORD).await;
    assert_eq!(owners.status(), StatusCode::OK);
    for _ in 0..2 {
        let slip = passwords
            .login_from(owner, "owner@example.com", "a-slip-of-the-finger")
            .await;
        assert_eq!(
            slip.status(),
            StatusCode::UNAUTHORIZED,
            "two more slips are within a fresh allowance"
        );
    }
}
on_both_backends!(v6_3_1_a_strangers_failures_do_not_lock_the_owner_out);

/// V6.3.1: an IPv6 client holds a whole /64, so its addresses share one limit; the next /64
/// is another client.
async fn v6_3_1_ipv6_addresses_in_one_64_share_a_limit(backend: Backend) {
    let passwords = Passwords::start(
        backend,
        &[
            ("LOGIN_MAX_FAILURES_PER_ADDRESS", "3"),
            ("TRUST_FORWARDED_FOR", "true"),
        ],
    )
    .await;
    for (address, email) in [
        ("2001:db8:5:6::1", "a@example.com"),
        ("2001:db8:5:6::2", "b@example.com"),
        ("2001:db8:5:6:ffff:ffff:ffff:fffe", "c@example.com"),
    ] {
        let answer = passwords
            .login_from(Some(address), email, "not-the-password")
            .await;
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED, "{address}");
    }
    let same_64 = passwords
        .login_from(Some("2001:db8:5:6:1234::9"), "d@example.com", "not-the-password")
        .await;
    assert_eq!(same_64.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(same_64.headers().contains_key("retry-after"));
    let next_64 = passwords
        .login_from(Some("2001:db8:5:7::1"), "d@example.com", "not-the-password")
        .await;
    assert_eq!(
        next_64.status(),
        StatusCode::UNAUTHORIZED,
        "another /64 has its own limit"
    );
}
on_both_backends!(v6_3_1_ipv6_addresses_in_one_64_share_a_limit);

/// `POST /api/signups` of `email` with `password`.
async fn sign_up_with(api: &PublicApi, key: &str, email: &str, password: &str) -> reqwest::Response {
    api.client
        .post(api.url("/api/signups"))
        .header("Idempotency-Key", key)
        .json(&json!({
            "email": email, "password": password, "display_name": "Grace Hopper", "interests": ["chess"],
        }))
        .send()
        .await
        .expect("POST /api/signups")
}

/// The `errors.password` of a 422 problem.
async fn password_error(answer: reqwest::Response) -> String {
    assert_eq!(answer.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = answer.json().await.expect("a problem");
    body["errors"]["password"]
        .as_str()
        .unwrap_or_else(|| panic!("the problem names the password: {body}"))
        .to_owned()
}

/// V6.2.4, V6.2.11 and V6.2.9: a common password, the user's own email or name are refused at
/// signup saying why, before anything is created; a 128-character password is taken whole
/// (logging in with its first 127 characters fails).
async fn v6_2_4_guessable_passwords_are_refused_saying_why_and_long_ones_kept_whole(
    backing: &[(&str, &str)],
) {
    let platform = Platform::start(backing).await;
    let api = PublicApi::of(&platform);

    let common = password_error(sign_up_with(&api, "weak-1", "grace@example.com", "password123").await).await;
    assert!(common.contains("common password"), "{common}");
    let own_email =
        password_error(sign_up_with(&api, "weak-2", "grace@example.com", "Grace@Example.com").await).await;
    assert!(own_email.contains("email address or name"), "{own_email}");
    let own_name =
        password_error(sign_up_with(&api, "weak-3", "grace@example.com", "gracehopper1").await).await;
    assert!(own_name.contains("too easy to guess"), "{own_name}");
    let overlong = "correct horse battery staple ".repeat(9);
    let too_long = password_error(sign_up_with(&api, "weak-4", "grace@example.com", &overlong).await).await;
    assert!(too_long.contains("at most 256"), "{too_long}");

    // Nothing was created: the same address signs up afresh and gets its one verification mail.
    let long: String = "violet harbour, amber kestrel; 42 "
        .repeat(4)
        .chars()
        .take(128)
        .collect();
    assert_eq!(long.chars().count(), 128);
    let accepted = sign_up_with(&api, "strong-1", "grace@example.com", &long).await;
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let token = dozen_tests::eventually(dozen_tests::PATIENCE, "grace's verification mail", || async {
        api.mails_to("grace@example.com")
            .await
            .iter()
            .find_map(dozen_tests::public_api::token_in)
    })
    .await;
    assert_eq!(api.mails_to("grace@example.com").await.len(), 1);
    let verified = api
        .client
        .post(api.url(&format!("/api/verifications/{token}")))
        .send()
        .await
        .expect("POST /api/verifications");
    assert_eq!(verified.status(), StatusCode::OK);

    let log_in = |password: String| {
        let api = &api;
        async move {
            api.client
                .post(api.url("/api/sessions"))
                .json(&json!({ "email": "grace@example.com", "password": password }))
                .send()
                .await
                .expect("POST /api/sessions")
                .status()
        }
    };
    let cut: String = long.chars().take(127).collect();
    assert_eq!(log_in(cut).await, StatusCode::UNAUTHORIZED, "never truncated");
    dozen_tests::eventually(
        dozen_tests::PATIENCE,
        "login with the 128-character password",
        || async {
            let status = log_in(long.clone()).await;
            assert!([200, 403].contains(&status.as_u16()), "{status}");
            (status == StatusCode::OK).then_some(())
        },
    )
    .await;

    platform.stop().await;
}

on_both_platforms!(v6_2_4_guessable_passwords_are_refused_saying_why_and_long_ones_kept_whole);

/// The median of `durations`.
fn median(mut durations: Vec<Duration>) -> Duration {
    durations.sort();
    durations[durations.len() / 2]
}

/// The argon2id hashes and verifications passwords has computed, from its `/metrics`.
async fn argon2_operations(platform: &Platform) -> f64 {
    let text = reqwest::get(platform.url("passwords", "/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|line| line.starts_with("passwords_argon2_operations_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// V6.3.8: a signup for a registered email does the work of one for a new email — one
/// password hash each — and takes as long, so the time of the 202 does not tell which emails
/// have accounts. Interleaved, 30 of each, compared by their hashes and their medians.
async fn v6_3_8_a_signup_takes_as_long_for_a_registered_email_as_for_a_new_one(backing: &[(&str, &str)]) {
    // A costlier hash than the default, so that it stands out of a debug build's other work
    // as it does in a release build.
    let mut env = vec![("ARGON2_ITERATIONS", "16")];
    env.extend_from_slice(backing);
    let platform = Platform::start(&env).await;
    let api = PublicApi::of(&platform);
    // The time of one signup, and the hashes it cost.
    let timed = |key: String, email: String| {
        let (api, platform) = (&api, &platform);
        async move {
            let hashed_before = argon2_operations(platform).await;
            let started = Instant::now();
            let answer = api.sign_up(&key, &email, "Timing", &["chess"]).await;
            let elapsed = started.elapsed();
            assert_eq!(answer.status(), StatusCode::ACCEPTED, "{email}");
            (elapsed, argon2_operations(platform).await - hashed_before)
        }
    };
    assert_eq!(
        api.sign_up("owner", "registered@example.com", "Owner", &["chess"])
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    // Warm both paths up (connections, caches) before measuring.
    for i in 0..3 {
        timed(format!("warm-new-{i}"), format!("warm-{i}@example.com")).await;
        timed(format!("warm-taken-{i}"), "registered@example.com".to_owned()).await;
    }

    let (mut new, mut registered) = (Vec::new(), Vec::new());
    for i in 0..30 {
        new.push(timed(format!("new-{i}"), format!("new-{i}@example.com")).await);
        registered.push(timed(format!("taken-{i}"), "registered@example.com".to_owned()).await);
    }
    let hashes = |signups: &[(Duration, f64)]| signups.iter().map(|(_, hashes)| hashes).sum::<f64>();
    assert_eq!(hashes(&new), 30.0, "a new email's signup costs one hash");
    assert_eq!(hashes(&registered), 30.0, "so does a registered one's");
    let times = |signups: Vec<(Duration, f64)>| median(signups.into_iter().map(|(time, _)| time).collect());
    let (new, registered) = (times(new), times(registered));
    println!("median signup: new email {new:?}, registered email {registered:?}");
    assert!(
        registered * 2 >= new,
        "a registered email's signup ({registered:?}) is not much faster than a new one's ({new:?})"
    );

    platform.stop().await;
}

on_both_platforms!(v6_3_8_a_signup_takes_as_long_for_a_registered_email_as_for_a_new_one);
