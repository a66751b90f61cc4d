//! Calls between services prove who makes them (OWASP ASVS 5.0 V13.2): every internal route
//! of users and passwords, and `/daily-figures` of signup, users, passwords and friends,
//! refuses a call without a valid service identity (401) and a caller it does not name (403),
//! while the public and ops routes stay as they were. Tokens are minted from the key files
//! `dozen up` and `dozen keys` write, as an operator could. Each test runs on the embedded
//! defaults and on Postgres + NATS JetStream.

use std::time::Duration;

use dozen_tests::identity::{self, header_from_folder, header_signed_by, now};
use dozen_tests::on_both_platforms;
use dozen_tests::platform::Platform;
use dozen_tests::process::run_to_exit;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const USER: &str = "0190b3c4-1d2e-7a00-8000-0000000000aa";

/// An internal route: service, method, path, body.
type Route = (&'static str, Method, String, Option<Value>);

/// Every internal route signup calls.
fn internal_routes() -> Vec<Route> {
    let profile = json!({ "id": USER, "email": "ivy@example.com", "display_name": "Ivy" });
    let credential = json!({ "email": "ivy@example.com", "password": "violet-harbour-42" });
    vec![
        ("users", Method::POST, "/profiles".to_owned(), Some(profile)),
        (
            "users",
            Method::GET,
            "/profiles?email=ivy@example.com".to_owned(),
            None,
        ),
        ("users", Method::GET, format!("/profiles/{USER}"), None),
        ("users", Method::DELETE, format!("/profiles/{USER}"), None),
        (
            "passwords",
            Method::PUT,
            format!("/credentials/{USER}"),
            Some(credential.clone()),
        ),
        ("passwords", Method::DELETE, format!("/credentials/{USER}"), None),
        (
            "passwords",
            Method::POST,
            "/password-checks".to_owned(),
            Some(credential.clone()),
        ),
        (
            "passwords",
            Method::POST,
            "/password-hashes".to_owned(),
            Some(credential),
        ),
    ]
}

/// The internal routes one service other than signup calls, each with that service: a
/// followed reset link's new password and a followed email change link (verification's), an
/// email change's password (users').
fn single_caller_routes() -> Vec<(&'static str, Route)> {
    vec![
        (
            "verification",
            (
                "passwords",
                Method::PUT,
                format!("/credentials/{USER}/password"),
                Some(json!({ "password": "violet-harbour-42" })),
            ),
        ),
        (
            "verification",
            (
                "users",
                Method::PUT,
                format!("/profiles/{USER}/email"),
                Some(json!({ "change_id": USER, "email": "ivy.new@example.com" })),
            ),
        ),
        (
            "users",
            (
                "passwords",
                Method::POST,
                format!("/credentials/{USER}/password-confirmations"),
                Some(json!({ "password": "violet-harbour-42" })),
            ),
        ),
    ]
}

/// The day's figures of each service that serves them: verification's `report` alone reads
/// them (the owner's call is answered 200).
fn figures_routes() -> Vec<Route> {
    ["signup", "users", "passwords", "friends"]
        .into_iter()
        .map(|service| {
            (
                service,
                Method::GET,
                "/daily-figures?day=2026-01-01".to_owned(),
                None,
            )
        })
        .collect()
}

async fn call(
    platform: &Platform,
    (service, method, path, body): &(&str, Method, String, Option<Value>),
    authorization: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new().request(method.clone(), platform.url(service, path));
    if let Some(body) = body {
        request = request.json(body);
    }
    if let Some(value) = authorization {
        request = request.header(identity::HEADER, value);
    }
    let answer = request.send().await.expect("the service answers");
    let status = answer.status();
    if status.is_client_error() {
        assert_eq!(
            answer.headers()["content-type"],
            "application/problem+json",
            "{method} {path}"
        );
    }
    (status, answer.json().await.unwrap_or(Value::Null))
}

on_both_platforms!(v13_2_1_internal_routes_refuse_calls_without_a_valid_service_identity);
/// ASVS 5.0 V13.2.1: backend components authenticate each other with short-lived tokens of
/// their own, never by being reachable.
async fn v13_2_1_internal_routes_refuse_calls_without_a_valid_service_identity(backing: &[(&str, &str)]) {
    let mut platform = Platform::start(backing).await;
    let keys = platform.keys_dir();
    let signup_pem = std::fs::read_to_string(keys.join("signup.pem")).expect("signup's key");
    let stranger = dozen_kit::keys::generate_signing_key_pem();
    for route in internal_routes()
        .into_iter()
        .chain(single_caller_routes().into_iter().map(|(_, route)| route))
        .chain(figures_routes())
    {
        let callee = route.0;
        let cases = [
            ("no token", None),
            ("not a bearer token", Some("Basic c2lnbnVwOg==".to_owned())),
            ("garbage", Some("Bearer not.a.jwt".to_owned())),
            (
                "a key no one trusts",
                Some(header_signed_by(&stranger, "signup", callee, now(), now() + 60)),
            ),
            (
                "an expired token",
                Some(header_signed_by(
                    &signup_pem,
                    "signup",
                    callee,
                    now() - 600,
                    now() - 540,
                )),
            ),
            (
                "a token for another service",
                Some(header_signed_by(
                    &signup_pem,
                    "signup",
                    "gateway",
                    now(),
                    now() + 60,
                )),
            ),
            (
                "signup's key claiming to be the gateway",
                Some(header_signed_by(
                    &signup_pem,
                    "gateway",
                    callee,
                    now(),
                    now() + 60,
                )),
            ),
            (
                "a token made to last a day",
                Some(header_signed_by(
                    &signup_pem,
                    "signup",
                    callee,
                    now(),
                    now() + 86_400,
                )),
            ),
        ];
        for (what, authorization) in cases {
            let (status, problem) = call(&platform, &route, authorization.as_deref()).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{} {} with {what}",
                route.1,
                route.2
            );
            assert_eq!(problem["type"], "/problems/service-unauthorized", "{problem}");
        }
    }
    // Nothing was created by any of it.
    let find = internal_routes()[1].clone();
    let signup = header_from_folder(&keys, "signup", "users");
    assert_eq!(
        call(&platform, &find, Some(&signup)).await.0,
        StatusCode::NOT_FOUND
    );

    // One warning per refusal, naming the route and the reason, never the token.
    let expired = header_signed_by(&signup_pem, "signup", "users", now() - 600, now() - 540);
    call(&platform, &find, Some(&expired)).await;
    let token = expired.trim_start_matches("Bearer ");
    let refusal = platform
        .up
        .wait_for_line(Duration::from_secs(10), |line| {
            line.contains("refused a call between services") && line.contains("expired")
        })
        .await;
    let lines = platform.up.lines();
    assert!(
        refusal.contains("/profiles") && refusal.contains("signup"),
        "{refusal}"
    );
    assert!(
        !lines.iter().any(|line| line.contains(token)),
        "a token reached the log"
    );
    platform.stop().await;
}

on_both_platforms!(v13_2_2_a_service_may_call_only_the_routes_that_name_it);
/// ASVS 5.0 V13.2.2: each component may do only what its role needs: a valid identity that
/// a route does not name is refused with 403; the public and ops routes need none.
async fn v13_2_2_a_service_may_call_only_the_routes_that_name_it(backing: &[(&str, &str)]) {
    let platform = Platform::start(backing).await;
    let keys = platform.keys_dir();
    for route in internal_routes() {
        for caller in ["gateway", "friends", "verification", "users", "passwords"] {
            let authorization = header_from_folder(&keys, caller, route.0);
            let (status, problem) = call(&platform, &route, Some(&authorization)).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{caller}: {} {}", route.1, route.2);
            assert_eq!(problem["type"], "/problems/caller-not-allowed", "{problem}");
        }
    }
    // Each of these is its one caller's alone (there is no profile or credential yet: 404).
    for (owner, route) in single_caller_routes() {
        for caller in [
            "gateway",
            "friends",
            "signup",
            "users",
            "passwords",
            "verification",
        ] {
            let authorization = header_from_folder(&keys, caller, route.0);
            let (status, problem) = call(&platform, &route, Some(&authorization)).await;
            if caller == owner {
                assert_eq!(status, StatusCode::NOT_FOUND, "{caller}: {} {}", route.1, route.2);
            } else {
                assert_eq!(status, StatusCode::FORBIDDEN, "{caller}: {} {}", route.1, route.2);
                assert_eq!(problem["type"], "/problems/caller-not-allowed", "{problem}");
            }
        }
    }

    for route in figures_routes() {
        for caller in ["gateway", "friends", "signup", "users", "passwords"] {
            let authorization = header_from_folder(&keys, caller, route.0);
            let (status, problem) = call(&platform, &route, Some(&authorization)).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{caller}: {} {}", route.1, route.2);
            assert_eq!(problem["type"], "/problems/caller-not-allowed", "{problem}");
        }
        let verification = header_from_folder(&keys, "verification", route.0);
        let (status, figures) = call(&platform, &route, Some(&verification)).await;
        assert_eq!(status, StatusCode::OK, "verification: {} {}", route.1, route.2);
        assert_eq!(figures, json!({ "day": "2026-01-01", "figures": {} }));
    }

    // Signup is allowed: the credential is made, and nothing else verifies it.
    let put = internal_routes()[4].clone();
    let signup = header_from_folder(&keys, "signup", "passwords");
    assert_eq!(call(&platform, &put, Some(&signup)).await.0, StatusCode::CREATED);
    // The test-only shortcut past verification is gone, even for signup.
    let shortcut = (
        "passwords",
        Method::POST,
        format!("/credentials/{USER}/verified"),
        None,
    );
    let (status, _) = call(&platform, &shortcut, Some(&signup)).await;
    assert!(
        status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED,
        "{status}"
    );
    let login = reqwest::Client::new()
        .post(platform.url("passwords", "/sessions"))
        .json(&json!({ "email": "ivy@example.com", "password": "violet-harbour-42" }))
        .send()
        .await
        .expect("login");
    assert_eq!(login.status(), StatusCode::FORBIDDEN, "still unverified");

    // Ops routes and the JWKS stay open.
    for (service, path) in [
        ("users", "/healthz"),
        ("users", "/readyz"),
        ("users", "/metrics"),
        ("users", "/openapi.json"),
        ("passwords", "/.well-known/jwks.json"),
    ] {
        let answer = reqwest::get(platform.url(service, path)).await.expect("answers");
        assert_eq!(answer.status(), StatusCode::OK, "{service} {path}");
    }
    let metrics = reqwest::get(platform.url("users", "/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("service_calls_refused_total{reason=\"caller_not_allowed\"}"),
        "refusals are counted"
    );
    platform.stop().await;
}

on_both_platforms!(v13_3_4_a_service_keeps_working_through_a_key_rotation);
/// A rotation: signup signs with a new key while its old one is still trusted; calls signed
/// with either are accepted, and the whole signup path works.
async fn v13_3_4_a_service_keeps_working_through_a_key_rotation(backing: &[(&str, &str)]) {
    let folder = tempfile::tempdir().expect("a keys folder");
    let dir = folder.path().to_string_lossy().into_owned();
    let made = run_to_exit("dozen", &["keys", &dir], &[]).await;
    assert!(made.status.success(), "{made:?}");
    let old_pem = std::fs::read_to_string(folder.path().join("signup.pem")).expect("signup's key");
    let rotated = run_to_exit("dozen", &["keys", "--rotate", "signup", &dir], &[]).await;
    assert!(rotated.status.success(), "{rotated:?}");
    let both = std::fs::read_to_string(folder.path().join("signup.pem")).expect("signup's keys");
    assert!(
        both.ends_with(&old_pem) && both.len() > old_pem.len(),
        "the new key comes first"
    );

    let mut settings = backing.to_vec();
    settings.push(("SERVICE_KEYS_DIR", &dir));
    let platform = Platform::start(&settings).await;
    let signed_up = reqwest::Client::new()
        .post(platform.url("gateway", "/api/signups"))
        .header("Idempotency-Key", "rotation-1")
        .json(&json!({
            "email": "rota@example.com",
            "password": "violet-harbour-42",
            "display_name": "Rota",
            "interests": ["go"],
        }))
        .send()
        .await
        .expect("signup answers");
    assert_eq!(
        signed_up.status(),
        StatusCode::ACCEPTED,
        "signed with the new key"
    );

    let find = (
        "users",
        Method::GET,
        "/profiles?email=rota@example.com".to_owned(),
        None,
    );
    let with_old = header_signed_by(&old_pem, "signup", "users", now(), now() + 60);
    assert_eq!(
        call(&platform, &find, Some(&with_old)).await.0,
        StatusCode::OK,
        "the old key is still trusted"
    );
    platform.stop().await;
}
