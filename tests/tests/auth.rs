//! `dozen_kit::auth`, the JWT check every service makes, against the real passwords binary's
//! tokens and JWKS: good tokens pass; tampered, expired, wrongly signed, `alg: none` and
//! misaddressed ones do not; unknown key ids cannot make it hammer passwords; and the axum
//! extractor answers 401 problem+json with a Bearer challenge.

mod passwords_support;

use std::time::Duration;

use axum::extract::FromRef;
use axum::routing::get;
use dozen_kit::auth::{AuthError, Authenticated, JwtVerifier, VerifierOptions};
use dozen_kit::http::client::HttpClient;
use dozen_tests::database::Backend;
use dozen_tests::{PATIENCE, eventually};
use passwords_support::{KEY_A, KEY_B, Passwords};
use serde_json::Value;

/// The three parts of a compact JWT.
fn parts(token: &str) -> [String; 3] {
    let parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts.try_into().expect("three parts")
}

/// Unpadded base64url, as JWT parts are written.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let mut buffer = [0u8; 3];
        buffer[..chunk.len()].copy_from_slice(chunk);
        let bits = (u32::from(buffer[0]) << 16) | (u32::from(buffer[1]) << 8) | u32::from(buffer[2]);
        for index in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((bits >> (18 - 6 * index)) & 63) as usize]));
        }
    }
    out
}

fn header(json: &str) -> String {
    base64url(json.as_bytes())
}

/// A running passwords service with one verified user, their id and a token for them.
async fn service_with_user(env: &[(&str, &str)]) -> (Passwords, uuid::Uuid, String) {
    let passwords = Passwords::start(Backend::Sqlite, env).await;
    let user = passwords.verified_user("ada@example.com").await;
    let token = passwords.token("ada@example.com").await;
    (passwords, user, token)
}

#[tokio::test]
async fn a_token_from_a_login_is_accepted_and_names_its_user() {
    let (passwords, user, token) = service_with_user(&[]).await;
    let verified = passwords
        .verifier(VerifierOptions::default())
        .verify(&token)
        .await
        .expect("accepted");
    assert_eq!(verified.user_id, user);
}

#[tokio::test]
async fn v9_1_1_tampered_tokens_are_rejected() {
    let (passwords, _, token) = service_with_user(&[]).await;
    let other = passwords.verified_user("grace@example.com").await;
    let other_token = passwords.token("grace@example.com").await;
    let verifier = passwords.verifier(VerifierOptions::default());
    assert_eq!(verifier.verify(&other_token).await.expect("valid").user_id, other);

    let [head, _, signature] = parts(&token);
    let [_, other_payload, _] = parts(&other_token);
    let swapped_payload = format!("{head}.{other_payload}.{signature}");
    assert_eq!(verifier.verify(&swapped_payload).await, Err(AuthError::Invalid));

    let [head, payload, signature] = parts(&token);
    let mut flipped: Vec<char> = signature.chars().collect();
    flipped[10] = if flipped[10] == 'A' { 'B' } else { 'A' };
    let flipped: String = flipped.into_iter().collect();
    let bad_signature = format!("{head}.{payload}.{flipped}");
    assert_eq!(verifier.verify(&bad_signature).await, Err(AuthError::Invalid));

    assert_eq!(verifier.verify("not.a.jwt").await, Err(AuthError::Malformed));
    assert_eq!(verifier.verify("").await, Err(AuthError::Malformed));
}

#[tokio::test]
async fn v9_1_2_alg_none_and_other_algorithms_than_the_keys_are_rejected() {
    let (passwords, _, token) = service_with_user(&[]).await;
    let verifier = passwords.verifier(VerifierOptions::default());
    let [head, payload, signature] = parts(&token);
    let original: Value = serde_json::from_str(&String::from_utf8(base64url_decode(&head)).expect("UTF-8"))
        .expect("a JSON header");
    let kid = original["kid"].as_str().expect("a kid");

    for alg in ["none", "None", "NONE"] {
        let unsigned = format!(
            "{}.{payload}.",
            header(&format!(r#"{{"alg":"{alg}","typ":"JWT","kid":"{kid}"}}"#))
        );
        assert_eq!(
            verifier.verify(&unsigned).await,
            Err(AuthError::Malformed),
            "{alg}"
        );
    }
    // The key is for EdDSA; a token claiming HS256 (the classic confusion) is refused whatever
    // its signature.
    let confused = format!(
        "{}.{payload}.{signature}",
        header(&format!(r#"{{"alg":"HS256","typ":"JWT","kid":"{kid}"}}"#))
    );
    assert_eq!(verifier.verify(&confused).await, Err(AuthError::Invalid));
    let no_kid = format!(
        "{}.{payload}.{signature}",
        header(r#"{"alg":"EdDSA","typ":"JWT"}"#)
    );
    assert_eq!(verifier.verify(&no_kid).await, Err(AuthError::Malformed));
}

#[tokio::test]
async fn v9_1_3_a_token_signed_by_another_key_is_rejected() {
    let (trusted, _, token) = service_with_user(&[]).await;
    let (_impostor, _, foreign_token) = service_with_user(&[("JWT_SIGNING_KEYS", KEY_B)]).await;
    let verifier = trusted.verifier(VerifierOptions::default());
    assert_eq!(verifier.verify(&foreign_token).await, Err(AuthError::UnknownKey));

    // The trusted key's id on a token the other key signed.
    let [head, _, _] = parts(&token);
    let [_, payload, signature] = parts(&foreign_token);
    let relabelled = format!("{head}.{payload}.{signature}");
    assert_eq!(verifier.verify(&relabelled).await, Err(AuthError::Invalid));
}

#[tokio::test]
async fn a_token_signed_by_a_retiring_key_still_verifies_after_a_rotation() {
    let (_old, user, old_token) = service_with_user(&[]).await;
    // The rotated configuration: the new key first (it signs), the old one still published.
    let rotated_keys = format!("{KEY_B}{KEY_A}");
    let (rotated, _, new_token) = service_with_user(&[("JWT_SIGNING_KEYS", &rotated_keys)]).await;
    let verifier = rotated.verifier(VerifierOptions::default());
    assert_eq!(
        verifier.verify(&old_token).await.expect("still valid").user_id,
        user
    );
    assert!(verifier.verify(&new_token).await.is_ok());
    assert_ne!(
        parts(&old_token)[0],
        parts(&new_token)[0],
        "signed by different keys"
    );
}

#[tokio::test]
async fn v9_2_1_an_expired_token_is_rejected() {
    let (passwords, _, token) = service_with_user(&[("JWT_TTL", "1s")]).await;
    let verifier = passwords.verifier(VerifierOptions {
        leeway: Duration::ZERO,
        ..VerifierOptions::default()
    });
    // No timed assertion: wait, generously, until the token's second has passed.
    eventually(PATIENCE, "the token expires", || async {
        match verifier.verify(&token).await {
            Err(AuthError::Expired) => true,
            Ok(_) => false,
            Err(other) => panic!("rejected for another reason: {other}"),
        }
    })
    .await;
}

#[tokio::test]
async fn v9_2_3_a_token_for_another_audience_or_issuer_is_rejected() {
    for setting in ["JWT_AUDIENCE", "JWT_ISSUER"] {
        let (passwords, _, token) = service_with_user(&[(setting, "elsewhere")]).await;
        let verifier = passwords.verifier(VerifierOptions::default());
        assert_eq!(
            verifier.verify(&token).await,
            Err(AuthError::Invalid),
            "{setting}"
        );
    }
}

#[tokio::test]
async fn unknown_key_ids_cannot_make_the_verifier_hammer_passwords() {
    let (passwords, _, token) = service_with_user(&[]).await;
    let verifier = passwords.verifier(VerifierOptions::default());
    verifier.verify(&token).await.expect("valid");
    let [_, payload, signature] = parts(&token);
    for attempt in 0..50 {
        let bogus = format!(
            "{}.{payload}.{signature}",
            header(&format!(r#"{{"alg":"EdDSA","kid":"made-up-{attempt}"}}"#))
        );
        assert_eq!(verifier.verify(&bogus).await, Err(AuthError::UnknownKey));
    }
    let fetches = passwords
        .counter("http_requests_total", r#"route="/.well-known/jwks.json""#)
        .await;
    assert!(
        (1.0..=2.0).contains(&fetches),
        "the key set was fetched {fetches} times for 51 tokens"
    );
}

#[derive(Clone)]
struct AppState {
    verifier: JwtVerifier,
}

impl FromRef<AppState> for JwtVerifier {
    fn from_ref(state: &AppState) -> Self {
        state.verifier.clone()
    }
}

/// Serve a one-route app whose handler needs an [`Authenticated`] caller; its base URL.
async fn serve_protected_route(verifier: JwtVerifier) -> String {
    let app = axum::Router::new()
        .route(
            "/me",
            get(|user: Authenticated| async move { user.user_id.to_string() }),
        )
        .with_state(AppState { verifier });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}")
}

#[tokio::test]
async fn the_extractor_answers_401_problem_with_a_bearer_challenge() {
    let (passwords, user, token) = service_with_user(&[]).await;
    let base = serve_protected_route(passwords.verifier(VerifierOptions::default())).await;
    let client = reqwest::Client::new();

    let allowed = client
        .get(format!("{base}/me"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("answers");
    assert_eq!(allowed.status(), 200);
    assert_eq!(allowed.text().await.expect("text"), user.to_string());

    let missing = client.get(format!("{base}/me")).send().await.expect("answers");
    assert_eq!(missing.status(), 401);
    assert_eq!(missing.headers()["www-authenticate"], r#"Bearer realm="dozen""#);
    assert_eq!(missing.headers()["content-type"], "application/problem+json");

    let [head, payload, _] = parts(&token);
    for (what, authorization) in [
        ("another scheme", format!("Basic {token}")),
        ("garbage", "Bearer garbage".to_owned()),
        ("an unsigned token", format!("Bearer {head}.{payload}.")),
    ] {
        let rejected = client
            .get(format!("{base}/me"))
            .header("authorization", authorization)
            .send()
            .await
            .expect("answers");
        assert_eq!(rejected.status(), 401, "{what}");
        let challenge = rejected.headers()["www-authenticate"]
            .to_str()
            .expect("text")
            .to_owned();
        assert!(
            challenge.starts_with("Bearer ") && challenge.contains(r#"error="invalid_token""#),
            "{what}: {challenge}"
        );
        let problem: Value = rejected.json().await.expect("a problem body");
        assert_eq!(problem["status"], 401, "{what}");
    }
}

#[tokio::test]
async fn tokens_cannot_be_checked_while_the_keys_are_unreachable() {
    let http = HttpClient::new(Duration::from_secs(2));
    let unreachable = format!(
        "http://127.0.0.1:{}/.well-known/jwks.json",
        dozen_tests::process::closed_port()
    );
    let verifier =
        JwtVerifier::from_jwks_url(&http, &unreachable, "dozen", "dozen", VerifierOptions::default());
    let token = format!("{}.e30.c2ln", header(r#"{"alg":"EdDSA","kid":"k"}"#));
    assert_eq!(verifier.verify(&token).await, Err(AuthError::KeysUnavailable));
    let base = serve_protected_route(verifier).await;
    let answer = reqwest::Client::new()
        .get(format!("{base}/me"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("answers");
    assert_eq!(answer.status(), 503, "the token may be fine: not a 401");
}

/// Decode unpadded base64url.
fn base64url_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'-' => 62,
            _ => 63,
        }
    };
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for c in text.bytes() {
        bits = (bits << 6) | value(c);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push(((bits >> count) & 0xff) as u8);
        }
    }
    out
}
