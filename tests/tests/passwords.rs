//! The passwords service through its real binary, on SQLite and on Postgres: credentials,
//! login, throttling, bad input, hash upgrades, signing keys and the JWKS.

mod passwords_support;

use dozen_kit::auth::VerifierOptions;
use dozen_tests::database::Backend;
use dozen_tests::identity::{self, identities};
use dozen_tests::on_both_backends;
use dozen_tests::process::run_to_exit;
use passwords_support::{KEY_A, KEY_B, PASSWORD, Passwords};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

fn assert_problem(answer_status: StatusCode, content_type: Option<&str>, body: &Value, expected: u16) {
    assert_eq!(answer_status.as_u16(), expected, "{body}");
    assert_eq!(content_type, Some("application/problem+json"), "{body}");
    assert_eq!(body["status"], expected, "{body}");
    for field in ["type", "title", "detail"] {
        assert!(body[field].is_string(), "the problem has a {field}: {body}");
    }
}

async fn problem_of(answer: reqwest::Response) -> (StatusCode, Option<String>, Value) {
    let status = answer.status();
    let content_type = answer
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let body = answer.json().await.expect("a JSON body");
    (status, content_type, body)
}

async fn a_credential_is_created_once_and_a_retry_gets_200(backend: Backend) {
    let passwords = Passwords::start(backend, &[]).await;
    let user = Uuid::new_v4();

    let created = passwords
        .put_credential(user, "  Ada@Example.COM ", PASSWORD)
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let body: Value = created.json().await.expect("JSON");
    assert_eq!(body["email"], "ada@example.com", "the email is stored normalised");
    assert_eq!(body["verified"], false);

    let retried = passwords.put_credential(user, "ada@example.com", PASSWORD).await;
    assert_eq!(retried.status(), StatusCode::OK, "a retry is not an error");

    let other_user = passwords
        .put_credential(Uuid::new_v4(), "ADA@example.com", PASSWORD)
        .await;
    let (status, content_type, body) = problem_of(other_user).await;
    assert_problem(status, content_type.as_deref(), &body, 409);

    let other_email = passwords
        .put_credential(user, "ada.l@example.com", PASSWORD)
        .await;
    let (status, content_type, body) = problem_of(other_email).await;
    assert_problem(status, content_type.as_deref(), &body, 409);

    assert_eq!(passwords.stored_emails().await, ["ada@example.com"]);
}
on_both_backends!(a_credential_is_created_once_and_a_retry_gets_200);

async fn login_is_refused_with_403_until_the_email_is_verified(backend: Backend) {
    let passwords = Passwords::start(backend, &[]).await;
    let user = Uuid::new_v4();
    assert_eq!(
        passwords
            .put_credential(user, "grace@example.com", PASSWORD)
            .await
            .status(),
        StatusCode::CREATED
    );

    let early = passwords.login("grace@example.com", PASSWORD).await;
    let (status, content_type, body) = problem_of(early).await;
    assert_problem(status, content_type.as_deref(), &body, 403);

    passwords.mark_verified(user).await;
    passwords.mark_verified(user).await; // redelivered: harmless

    let answer = passwords.login("Grace@Example.com", PASSWORD).await;
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.headers()["cache-control"], "no-store");
    let session: Value = answer.json().await.expect("JSON");
    assert_eq!(session["token_type"], "Bearer");
    assert_eq!(session["expires_in"], 900, "JWT_TTL defaults to 15 minutes");
    let token = session["access_token"].as_str().expect("a token");

    let verified = passwords
        .verifier(VerifierOptions::default())
        .verify(token)
        .await
        .expect("the token verifies with the published keys");
    assert_eq!(verified.user_id, user);
}
on_both_backends!(login_is_refused_with_403_until_the_email_is_verified);

async fn a_wrong_password_and_an_unknown_email_get_the_same_401(backend: Backend) {
    let passwords = Passwords::start(backend, &[]).await;
    passwords.verified_user("alan@example.com").await;

    let wrong_password = passwords.login("alan@example.com", "not-the-password").await;
    let unknown_email = passwords.login("nobody@example.com", "not-the-password").await;
    let (status, content_type, wrong_body) = problem_of(wrong_password).await;
    assert_problem(status, content_type.as_deref(), &wrong_body, 401);
    let (status, content_type, unknown_body) = problem_of(unknown_email).await;
    assert_problem(status, content_type.as_deref(), &unknown_body, 401);
    assert_eq!(wrong_body, unknown_body, "nothing tells whether the email exists");
}
on_both_backends!(a_wrong_password_and_an_unknown_email_get_the_same_401);

async fn an_unknown_email_costs_a_verification_like_a_wrong_password(backend: Backend) {
    let passwords = Passwords::start(backend, &[]).await;
    passwords.verified_user("edsger@example.com").await;
    let verifications = || passwords.counter("passwords_argon2_operations_total", r#"operation="verify""#);
    let before = verifications().await;
    passwords.login("edsger@example.com", "not-the-password").await;
    let after_wrong_password = verifications().await;
    passwords.login("nobody@example.com", "not-the-password").await;
    let after_unknown_email = verifications().await;
    assert_eq!(
        after_wrong_password - before,
        1.0,
        "a wrong password costs one verification"
    );
    assert_eq!(
        after_unknown_email - after_wrong_password,
        1.0,
        "so does an unknown email (against a dummy hash)"
    );
}
on_both_backends!(an_unknown_email_costs_a_verification_like_a_wrong_password);

async fn failed_logins_lock_the_account_from_that_address_with_429_without_hashing(backend: Backend) {
    let passwords = Passwords::start(
        backend,
        &[
            ("LOGIN_MAX_FAILURES_PER_ACCOUNT", "3"),
            // Longer than the test takes: the delay lasts while it looks.
            ("LOGIN_FIRST_DELAY", "10m"),
        ],
    )
    .await;
    passwords.verified_user("barbara@example.com").await;
    passwords.verified_user("donald@example.com").await;

    for _ in 0..3 {
        let answer = passwords.login("barbara@example.com", "not-the-password").await;
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    }
    let hashed_before = passwords.argon2_operations().await;
    for password in ["not-the-password", PASSWORD] {
        let answer = passwords.login("Barbara@example.com", password).await;
        let retry_after: u64 = answer
            .headers()
            .get("retry-after")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok())
            .expect("a Retry-After in seconds");
        assert!((1..=15 * 60).contains(&retry_after), "{retry_after}");
        let (status, content_type, body) = problem_of(answer).await;
        assert_problem(status, content_type.as_deref(), &body, 429);
    }
    assert_eq!(
        passwords.argon2_operations().await,
        hashed_before,
        "a throttled login computes no hash"
    );
    assert_eq!(
        passwords
            .counter("passwords_logins_total", r#"outcome="throttled""#)
            .await,
        2.0
    );

    let other_account = passwords.login("donald@example.com", PASSWORD).await;
    assert_eq!(
        other_account.status(),
        StatusCode::OK,
        "only that account is locked"
    );
}
on_both_backends!(failed_logins_lock_the_account_from_that_address_with_429_without_hashing);

async fn failed_logins_from_one_address_lock_it_for_every_account(backend: Backend) {
    let passwords = Passwords::start(
        backend,
        &[
            ("LOGIN_MAX_FAILURES_PER_ADDRESS", "3"),
            ("TRUST_FORWARDED_FOR", "true"),
        ],
    )
    .await;
    passwords.verified_user("frances@example.com").await;
    let attacker = Some("203.0.113.7, 10.0.0.1");

    for email in ["a@example.com", "b@example.com", "c@example.com"] {
        let answer = passwords.login_from(attacker, email, "not-the-password").await;
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    }
    let hashed_before = passwords.argon2_operations().await;
    let locked = passwords
        .login_from(attacker, "frances@example.com", PASSWORD)
        .await;
    assert_eq!(locked.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(locked.headers().contains_key("retry-after"));
    assert_eq!(passwords.argon2_operations().await, hashed_before);

    let elsewhere = passwords
        .login_from(Some("198.51.100.1"), "frances@example.com", PASSWORD)
        .await;
    assert_eq!(
        elsewhere.status(),
        StatusCode::OK,
        "another address is not locked"
    );
}
on_both_backends!(failed_logins_from_one_address_lock_it_for_every_account);

async fn a_forwarded_address_is_ignored_unless_trusted(backend: Backend) {
    let passwords = Passwords::start(backend, &[("LOGIN_MAX_FAILURES_PER_ADDRESS", "2")]).await;
    // Each attempt claims another address; untrusted, the claims count for nothing and every
    // failure lands on the connection's address.
    for (claimed, email) in [("203.0.113.1", "a@example.com"), ("203.0.113.2", "b@example.com")] {
        let answer = passwords
            .login_from(Some(claimed), email, "not-the-password")
            .await;
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    }
    let third = passwords
        .login_from(Some("203.0.113.3"), "c@example.com", "not-the-password")
        .await;
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
}
on_both_backends!(a_forwarded_address_is_ignored_unless_trusted);

async fn bad_input_gets_a_4xx_problem_and_stores_nothing(backend: Backend) {
    let passwords = Passwords::start(backend, &[]).await;
    let url = passwords.url(&format!("/credentials/{}", Uuid::new_v4()));
    let client = &passwords.client;
    let json = |body: Value| body.to_string();
    let cases: Vec<(&str, String, u16, Option<&str>)> = vec![
        (
            "a short password",
            json(json!({"email": "a@example.com", "password": "zq7#kd9"})),
            422,
            Some("password"),
        ),
        (
            "a 65-character password",
            json(json!({"email": "a@example.com", "password": "x".repeat(65)})),
            422,
            Some("password"),
        ),
        (
            "a common password",
            json(json!({"email": "a@example.com", "password": "Password1"})),
            422,
            Some("password"),
        ),
        (
            "an invalid email",
            json(json!({"email": "not-an-email", "password": PASSWORD})),
            422,
            Some("email"),
        ),
        (
            "a password of the wrong type",
            json(json!({"email": "a@example.com", "password": 12345678})),
            422,
            Some("password"),
        ),
        (
            "an email of the wrong type",
            json(json!({"email": ["a@example.com"], "password": PASSWORD})),
            422,
            Some("email"),
        ),
        ("missing fields", json(json!({})), 422, Some("email")),
        (
            "malformed JSON",
            r#"{"email": "a@example.com", "#.to_owned(),
            400,
            None,
        ),
        ("a JSON array", json(json!([1, 2])), 422, None),
        (
            "a huge body",
            json(json!({"email": "a@example.com", "password": "x".repeat(200_000)})),
            413,
            None,
        ),
    ];
    for (what, body, expected, field) in cases {
        let answer = client
            .put(&url)
            .header(identity::HEADER, identities().header("signup", "passwords"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("answers");
        let (status, content_type, problem) = problem_of(answer).await;
        assert_eq!(status.as_u16(), expected, "{what}: {problem}");
        assert_problem(status, content_type.as_deref(), &problem, expected);
        let kind = match expected {
            400 => "/problems/malformed-json",
            422 => "/problems/validation",
            _ => "about:blank",
        };
        assert_eq!(problem["type"], kind, "{what}: {problem}");
        if let Some(field) = field {
            assert!(
                problem["errors"][field].is_string(),
                "{what}: the errors map names {field}: {problem}"
            );
        }
    }

    let bad_id = passwords
        .put_credential(Uuid::nil(), "a@example.com", PASSWORD)
        .await;
    assert_eq!(
        bad_id.status(),
        StatusCode::CREATED,
        "the nil UUID is still a UUID"
    );
    let not_a_uuid = client
        .put(passwords.url("/credentials/42"))
        .header(identity::HEADER, identities().header("signup", "passwords"))
        .json(&json!({"email": "b@example.com", "password": PASSWORD}))
        .send()
        .await
        .expect("answers");
    let (status, content_type, problem) = problem_of(not_a_uuid).await;
    assert_problem(status, content_type.as_deref(), &problem, 422);
    assert!(problem["errors"]["user_id"].is_string(), "{problem}");
    let not_json = client
        .put(&url)
        .header(identity::HEADER, identities().header("signup", "passwords"))
        .header("content-type", "text/plain")
        .body("email=a@example.com")
        .send()
        .await
        .expect("answers");
    assert_eq!(not_json.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    for (what, body, expected) in [
        ("malformed JSON", "{".to_owned(), 400),
        ("wrong types", json(json!({"email": 1, "password": true})), 422),
        ("a missing password", json(json!({"email": "a@example.com"})), 422),
    ] {
        let answer = client
            .post(passwords.url("/sessions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("answers");
        let (status, content_type, problem) = problem_of(answer).await;
        assert_eq!(status.as_u16(), expected, "login with {what}: {problem}");
        assert_problem(status, content_type.as_deref(), &problem, expected);
    }

    assert_eq!(
        passwords.stored_emails().await,
        ["a@example.com"],
        "only the one valid request stored anything"
    );
}
on_both_backends!(bad_input_gets_a_4xx_problem_and_stores_nothing);

async fn a_hash_below_todays_cost_is_upgraded_at_the_next_login(backend: Backend) {
    let passwords = Passwords::start(backend, &[]).await;
    passwords.verified_user("katherine@example.com").await;
    // PASSWORD hashed at m=8 MiB, t=1: a hash from an older, cheaper release.
    let weak =
        "$argon2id$v=19$m=8192,t=1,p=1$B5YGifhAoDpQsOYaaF+2Nw$2ElDpzFLe/TXGuCPpe6byU1RgsagEwF6Kb+uHbT0Jjw";
    passwords.set_stored_hash("katherine@example.com", weak).await;

    let answer = passwords.login("katherine@example.com", PASSWORD).await;
    assert_eq!(answer.status(), StatusCode::OK, "the old hash still logs in");
    let upgraded = passwords.stored_hash("katherine@example.com").await;
    assert_ne!(upgraded, weak);
    assert!(
        upgraded.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{upgraded}"
    );
    let again = passwords.login("katherine@example.com", PASSWORD).await;
    assert_eq!(again.status(), StatusCode::OK, "the new hash logs in");
    assert_eq!(passwords.stored_hash("katherine@example.com").await, upgraded);
}
on_both_backends!(a_hash_below_todays_cost_is_upgraded_at_the_next_login);

async fn deleting_a_credential_is_idempotent(backend: Backend) {
    let passwords = Passwords::start(backend, &[]).await;
    let user = passwords.verified_user("john@example.com").await;
    for _ in 0..2 {
        let deleted = passwords.delete_credential(user).await;
        assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    }
    assert_eq!(
        passwords.login("john@example.com", PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        passwords
            .put_credential(user, "john@example.com", PASSWORD)
            .await
            .status(),
        StatusCode::CREATED,
        "the email is free again"
    );
}
on_both_backends!(deleting_a_credential_is_idempotent);

async fn the_jwks_publishes_every_configured_key_and_the_first_signs(backend: Backend) {
    let both = format!("{KEY_B}{KEY_A}");
    let passwords = Passwords::start(backend, &[("JWT_SIGNING_KEYS", &both)]).await;
    let user = passwords.verified_user("margaret@example.com").await;

    let jwks: Value = passwords
        .client
        .get(passwords.url("/.well-known/jwks.json"))
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("JSON");
    let keys = jwks["keys"].as_array().expect("a key list");
    assert_eq!(keys.len(), 2, "{jwks}");
    for key in keys {
        assert_eq!(key["alg"], "EdDSA");
        assert_eq!(key["use"], "sig");
        assert_eq!(key["kty"], "OKP");
        assert!(key["kid"].is_string() && key["x"].is_string(), "{key}");
        assert!(key.get("d").is_none(), "no private part is published");
    }
    assert_ne!(keys[0]["kid"], keys[1]["kid"]);

    let token = passwords.token("margaret@example.com").await;
    let header = token.split('.').next().expect("a header");
    let header: Value = serde_json::from_slice(&base64url_decode(header)).expect("a JSON header");
    assert_eq!(header["kid"], keys[0]["kid"], "the first configured key signs");
    let verified = passwords
        .verifier(VerifierOptions::default())
        .verify(&token)
        .await
        .expect("verifies");
    assert_eq!(verified.user_id, user);
}
on_both_backends!(the_jwks_publishes_every_configured_key_and_the_first_signs);

#[tokio::test]
async fn a_key_id_is_the_same_on_every_start() {
    let first = Passwords::start(Backend::Sqlite, &[]).await;
    let second = Passwords::start(Backend::Sqlite, &[]).await;
    let kid = |passwords: &Passwords| {
        let url = passwords.url("/.well-known/jwks.json");
        let client = passwords.client.clone();
        async move {
            let jwks: Value = client
                .get(url)
                .send()
                .await
                .expect("answers")
                .json()
                .await
                .expect("JSON");
            jwks["keys"][0]["kid"].clone()
        }
    };
    assert_eq!(kid(&first).await, kid(&second).await);
}

#[tokio::test]
async fn the_service_does_not_serve_without_a_signing_key() {
    let database = dozen_tests::database::TestDatabase::create(Backend::Sqlite).await;
    let [signing, trust] = identities().env("passwords");
    let env = [("DATABASE_URL", database.url.as_str()), signing, trust];
    let migrated = run_to_exit("dozen-passwords", &["migrate"], &env).await;
    assert!(migrated.status.success(), "migrating needs no key: {migrated:?}");
    let run = run_to_exit("dozen-passwords", &[], &env).await;
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    let errors: Vec<&str> = run
        .stdout
        .lines()
        .filter(|line| line.contains("\"ERROR\""))
        .collect();
    assert_eq!(errors.len(), 1, "{}", run.stdout);
    assert!(errors[0].contains("JWT_SIGNING_KEYS"), "{}", errors[0]);
}

/// A cost below OWASP's minimum is refused naming the settings, unless explicitly allowed (to
/// seed benchmarks), and then it hashes at that cost.
#[tokio::test]
async fn a_weak_argon2_cost_needs_an_explicit_allowance() {
    let database = dozen_tests::database::TestDatabase::create(Backend::Sqlite).await;
    let migrated = run_to_exit(
        "dozen-passwords",
        &["migrate"],
        &[("DATABASE_URL", &database.url)],
    )
    .await;
    assert!(migrated.status.success(), "{migrated:?}");
    let [signing, trust] = identities().env("passwords");
    let weak = [
        ("DATABASE_URL", database.url.as_str()),
        ("JWT_SIGNING_KEYS", KEY_A),
        signing,
        trust,
        ("ARGON2_MEMORY_KIB", "1024"),
        ("ARGON2_ITERATIONS", "1"),
    ];
    let run = run_to_exit("dozen-passwords", &[], &weak).await;
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    let errors: Vec<&str> = run
        .stdout
        .lines()
        .filter(|line| line.contains("\"ERROR\""))
        .collect();
    assert_eq!(errors.len(), 1, "{}", run.stdout);
    assert!(errors[0].contains("ARGON2_ALLOW_WEAK_COST"), "{}", errors[0]);

    let passwords = Passwords::start(
        Backend::Sqlite,
        &[
            ("ARGON2_MEMORY_KIB", "1024"),
            ("ARGON2_ITERATIONS", "1"),
            ("ARGON2_ALLOW_WEAK_COST", "true"),
        ],
    )
    .await;
    let answer = passwords
        .put_credential(Uuid::new_v4(), "weak-cost@example.com", PASSWORD)
        .await;
    assert_eq!(answer.status(), StatusCode::CREATED);
    let stored: String = passwords.stored_hash("weak-cost@example.com").await;
    assert!(stored.contains("m=1024,t=1,"), "{stored}");
}

#[tokio::test]
async fn a_bad_signing_key_stops_the_service_naming_the_setting_without_showing_it() {
    let database = dozen_tests::database::TestDatabase::create(Backend::Sqlite).await;
    let migrated = run_to_exit(
        "dozen-passwords",
        &["migrate"],
        &[("DATABASE_URL", &database.url)],
    )
    .await;
    assert!(migrated.status.success(), "{migrated:?}");
    let not_ed25519 = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIDVcY0yew5otD1Pm03l3A1/VuTwr\n-----END PRIVATE KEY-----\n";
    for bad in ["hunter2-not-a-key", not_ed25519] {
        let [signing, trust] = identities().env("passwords");
        let env = [
            ("DATABASE_URL", database.url.as_str()),
            ("JWT_SIGNING_KEYS", bad),
            signing,
            trust,
        ];
        let run = run_to_exit("dozen-passwords", &[], &env).await;
        assert_eq!(run.status.code(), Some(1), "{run:?}");
        let errors: Vec<&str> = run
            .stdout
            .lines()
            .filter(|line| line.contains("\"ERROR\""))
            .collect();
        assert_eq!(errors.len(), 1, "{}", run.stdout);
        assert!(errors[0].contains("JWT_SIGNING_KEYS"), "{}", errors[0]);
        let output = format!("{}{}", run.stdout, run.stderr);
        assert!(
            !output.contains("hunter2") && !output.contains("MC4C"),
            "{output}"
        );
    }
}

#[tokio::test]
async fn help_lists_the_passwords_settings() {
    let run = run_to_exit("dozen-passwords", &["--help"], &[]).await;
    assert!(run.status.success());
    for variable in [
        "JWT_SIGNING_KEYS",
        "JWT_TTL",
        "JWT_ISSUER",
        "JWT_AUDIENCE",
        "TRUST_FORWARDED_FOR",
        "LOGIN_MAX_FAILURES_PER_ACCOUNT",
        "LOGIN_MAX_FAILURES_PER_ADDRESS",
        "LOGIN_FAILURE_WINDOW",
        "LOGIN_LOCKOUT",
        "LOGIN_FIRST_DELAY",
        "ARGON2_MEMORY_KIB",
        "ARGON2_ITERATIONS",
        "HASH_CONCURRENCY",
    ] {
        assert!(
            run.stdout.contains(&format!("[env: {variable}")),
            "--help lists {variable}"
        );
    }
}

/// Decode unpadded base64url (a JWT part).
fn base64url_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' => 62,
        b'_' => 63,
        _ => panic!("not base64url: {c}"),
    };
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for c in text.bytes() {
        bits = (bits << 6) | u32::from(value(c));
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    out
}
