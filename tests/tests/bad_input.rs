//! Bad input of every kind, through the gateway's public API with every service a real process:
//! each gets the right 4xx with a problem body, and changes nothing — no profile, no mail, no
//! friendship, no half-done signup in the way of a correct one later. A bad signup for a
//! registered address gets the same answer as for a new one (no account enumeration). On the
//! embedded defaults, and again on Postgres + NATS JetStream.

use base64::Engine as _;
use dozen_tests::identity;
use dozen_tests::platform::{Platform, PostgresAndNats};
use dozen_tests::public_api::{PASSWORD, PublicApi, subject_of};
use reqwest::Method;
use serde_json::{Value, json};

/// An answer that must be a problem: its status, and the problem body.
async fn problem(answer: reqwest::Response, what: &str) -> (u16, Value) {
    let status = answer.status().as_u16();
    let content_type = answer
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/problem+json"),
        "{what}: a problem body, not {content_type:?} ({status})"
    );
    let body: Value = answer.json().await.expect("a JSON problem");
    for member in ["type", "title", "status", "detail"] {
        assert!(
            body.get(member).is_some(),
            "{what}: the problem has {member}: {body}"
        );
    }
    assert_eq!(body["status"], status, "{what}: {body}");
    (status, body)
}

/// A signup request that goes wrong in one way.
struct BadSignup {
    what: &'static str,
    content_type: &'static str,
    body: String,
    idempotency_key: &'static str,
    status: u16,
    /// The field the problem's `errors` map names, for validation errors.
    field: Option<&'static str>,
}

fn bad_signups(email: &str) -> Vec<BadSignup> {
    let json_with = |overrides: Value| {
        let mut body =
            json!({ "email": email, "password": PASSWORD, "display_name": "Eve", "interests": ["chess"] });
        for (name, value) in overrides.as_object().expect("an object") {
            if value.is_null() {
                body.as_object_mut().expect("an object").remove(name);
            } else {
                body[name] = value.clone();
            }
        }
        body.to_string()
    };
    let case = |what, body: String, status, field| BadSignup {
        what,
        content_type: "application/json",
        body,
        idempotency_key: "bad-input",
        status,
        field,
    };
    let too_many_interests: Vec<String> = (0..100).map(|i| format!("interest {i}")).collect();
    vec![
        case("malformed JSON", format!("{{\"email\": \"{email}\","), 400, None),
        case("not an object", "[1, 2, 3]".to_owned(), 422, None),
        case(
            "a number for the email",
            json_with(json!({ "email": 5 })),
            422,
            None,
        ),
        case(
            "a string for the interests",
            json_with(json!({ "interests": "chess" })),
            422,
            None,
        ),
        case("no password", json_with(json!({ "password": null })), 422, None),
        case(
            "a body over the limit",
            json_with(json!({ "display_name": "x".repeat(100 * 1024) })),
            413,
            None,
        ),
        case(
            "an invalid email",
            json_with(json!({ "email": "not an address" })),
            422,
            Some("email"),
        ),
        case(
            "a short password",
            json_with(json!({ "password": "seven77" })),
            422,
            Some("password"),
        ),
        case(
            "an overlong password",
            json_with(json!({ "password": "correct horse battery staple ".repeat(9) })),
            422,
            Some("password"),
        ),
        case(
            "a common password",
            json_with(json!({ "password": "12345678" })),
            422,
            Some("password"),
        ),
        case(
            "a common password with digits",
            json_with(json!({ "password": "password123" })),
            422,
            Some("password"),
        ),
        case(
            "the email as the password",
            json_with(json!({ "password": email.to_uppercase() })),
            422,
            Some("password"),
        ),
        case(
            "an empty display name",
            json_with(json!({ "display_name": "  " })),
            422,
            Some("display_name"),
        ),
        case(
            "a display name with a bidi override",
            json_with(json!({ "display_name": "Eve\u{202E}gnp.exe" })),
            422,
            Some("display_name"),
        ),
        case(
            "a display name with a zero-width space",
            json_with(json!({ "display_name": "E\u{200B}ve" })),
            422,
            Some("display_name"),
        ),
        case(
            "too many interests",
            json_with(json!({ "interests": too_many_interests })),
            422,
            Some("interests"),
        ),
        BadSignup {
            content_type: "text/plain",
            ..case("not JSON", json_with(json!({})), 415, None)
        },
        BadSignup {
            idempotency_key: "a key with spaces",
            ..case("a bad Idempotency-Key", json_with(json!({})), 400, None)
        },
    ]
}

async fn sign_up_badly(api: &PublicApi, case: &BadSignup) -> (u16, Value) {
    let answer = api
        .client
        .post(api.url("/api/signups"))
        .header("content-type", case.content_type)
        .header("idempotency-key", case.idempotency_key)
        .body(case.body.clone())
        .send()
        .await
        .expect("POST /api/signups");
    problem(answer, case.what).await
}

/// A token whose header says `alg: none`, with `claims_from`'s claims and no signature.
fn unsigned_token(claims_from: &str) -> String {
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let claims = claims_from.split('.').nth(1).expect("a JWT");
    format!("{header}.{claims}.")
}

/// `token` with one character of its signature changed.
fn tampered(token: &str) -> String {
    let mut text = token.to_owned();
    let last = text.pop().expect("a token");
    text.push(if last == 'A' { 'B' } else { 'A' });
    text
}

async fn bad_input_gets_a_problem_and_changes_nothing(extra_env: &[(&str, &str)]) {
    let platform = Platform::start(extra_env).await;
    let api = PublicApi::of(&platform);
    assert_eq!(
        api.sign_up("ann-1", "ann@example.com", "Ann", &["chess"])
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
    let ann = api.verify_and_log_in("ann@example.com").await;
    let bob = api.verify_and_log_in("bob@example.com").await;
    let (ann_id, bob_id) = (subject_of(&ann), subject_of(&bob));

    // Signups: each bad request is refused alike for a new and for a registered address.
    for email in ["eve@example.com", "ann@example.com"] {
        for case in bad_signups(email) {
            let (status, body) = sign_up_badly(&api, &case).await;
            assert_eq!(status, case.status, "{} for {email}: {body}", case.what);
            if let Some(field) = case.field {
                assert!(
                    body["errors"][field].is_string(),
                    "{} for {email} names {field}: {body}",
                    case.what
                );
            }
        }
    }
    let reused = api.sign_up("ann-1", "ann@example.com", "Someone else", &[]).await;
    let (status, body) = problem(reused, "an Idempotency-Key reused for another signup").await;
    assert_eq!(status, 422, "{body}");

    // Logins, verifications and profile updates.
    let posts: [(&str, &str, u16); 5] = [
        ("/api/sessions", "{\"email\":", 400),
        ("/api/sessions", r#"{"email": "ann@example.com"}"#, 422),
        ("/api/verifications/not-a-token", "", 404),
        ("/api/verifications/resend", "{", 400),
        ("/api/verifications/resend", r#"{"email": 7}"#, 422),
    ];
    for (path, body, expected) in posts {
        let answer = api
            .client
            .post(api.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("the gateway answers");
        let (status, problem_body) = problem(answer, path).await;
        assert_eq!(status, expected, "POST {path} {body}: {problem_body}");
    }
    for (body, expected, field) in [
        ("{\"display_name\":", 400, None),
        (r#"{"display_name": 5}"#, 422, None),
        (r#"{"display_name": ""}"#, 422, Some("display_name")),
        (
            r#"{"display_name": "Ann\u2066Admin\u2069"}"#,
            422,
            Some("display_name"),
        ),
        (r#"{"interests": "chess"}"#, 422, None),
    ] {
        let answer = api
            .client
            .patch(api.url("/api/me"))
            .bearer_auth(&ann)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("PATCH /api/me");
        let (status, problem_body) = problem(answer, body).await;
        assert_eq!(status, expected, "PATCH /api/me {body}: {problem_body}");
        if let Some(field) = field {
            assert!(problem_body["errors"][field].is_string(), "{problem_body}");
        }
    }

    // Friends: requests that make no sense, and tokens that prove nothing.
    let stranger = uuid::Uuid::new_v4();
    let friend_cases: [(Method, String, u16); 5] = [
        (Method::POST, "/api/friends/not-a-uuid".to_owned(), 400),
        (Method::POST, format!("/api/friends/{stranger}"), 404),
        (Method::POST, format!("/api/friends/{ann_id}"), 422),
        (Method::POST, format!("/api/friends/{bob_id}/accept"), 409),
        (Method::DELETE, "/api/friends/42".to_owned(), 400),
    ];
    for (method, path, expected) in friend_cases {
        let answer = api.as_user(&ann, method.clone(), &path).await;
        let (status, body) = problem(answer, &path).await;
        assert_eq!(status, expected, "{method} {path}: {body}");
    }
    let forged = [
        ("garbage".to_owned(), "a token that is no JWT"),
        (tampered(&ann), "a tampered signature"),
        (unsigned_token(&ann), "alg none"),
    ];
    for path in [
        "/api/me",
        "/api/friends",
        "/api/suggestions",
        "/api/friends/requests",
    ] {
        for (token, what) in &forged {
            let answer = api.as_user(token, Method::GET, path).await;
            let (status, _) = problem(answer, what).await;
            assert_eq!(status, 401, "GET {path} with {what}");
        }
        let anonymous = api.client.get(api.url(path)).send().await.expect("gateway");
        assert_eq!(
            problem(anonymous, "no token").await.0,
            401,
            "GET {path} without a token"
        );
    }
    let forged_request = api
        .as_user(
            &unsigned_token(&ann),
            Method::POST,
            &format!("/api/friends/{bob_id}"),
        )
        .await;
    assert_eq!(problem(forged_request, "a forged friend request").await.0, 401);

    // Nothing changed.
    let users_find = |email: &'static str| {
        let url = platform.url("users", "/profiles");
        let signup = platform.service_authorization("signup", "users");
        let client = api.client.clone();
        async move {
            client
                .get(url)
                .header(identity::HEADER, signup)
                .query(&[("email", email)])
                .send()
                .await
                .expect("users")
                .status()
        }
    };
    assert_eq!(
        users_find("eve@example.com").await,
        404,
        "no profile for the refused address"
    );
    assert!(
        api.mails_to("eve@example.com").await.is_empty(),
        "no mail to the refused address"
    );
    assert_eq!(
        api.mails_to("ann@example.com").await.len(),
        1,
        "Ann got her one verification mail"
    );
    for token in [&ann, &bob] {
        for path in ["/api/friends", "/api/friends/requests"] {
            let listed: Value = api
                .as_user(token, Method::GET, path)
                .await
                .json()
                .await
                .expect("JSON");
            assert_eq!(listed, json!([]), "{path} is empty");
        }
    }
    let me: Value = api
        .as_user(&ann, Method::GET, "/api/me")
        .await
        .json()
        .await
        .expect("me");
    assert_eq!(me["profile"]["display_name"], "Ann");
    assert_eq!(me["profile"]["interests"], json!(["chess"]));

    // The refused address can still sign up properly, with the key its bad attempts used.
    assert_eq!(
        api.sign_up("bad-input", "eve@example.com", "Eve", &[])
            .await
            .status(),
        202
    );
    let eve = api.verify_and_log_in("eve@example.com").await;
    assert!(!subject_of(&eve).is_empty());

    lists_are_paged(&api, &ann, &bob).await;
    platform.stop().await;
}

/// `GET path` as `token` (no token: the dev mailbox), as JSON, expecting 200.
async fn list(api: &PublicApi, token: Option<&str>, path: &str) -> Value {
    let answer = match token {
        Some(token) => api.as_user(token, Method::GET, path).await,
        None => api.client.get(api.url(path)).send().await.expect("gateway"),
    };
    assert_eq!(answer.status(), 200, "GET {path}");
    answer.json().await.expect("JSON")
}

/// Every list takes `?limit=` from 1 to 200 and `?after=<id>`, refuses anything else with a
/// 400 problem, and pages in order.
async fn lists_are_paged(api: &PublicApi, ann: &str, bob: &str) {
    let unknown = uuid::Uuid::new_v4();
    for path in ["/api/friends", "/api/friends/requests", "/api/dev/mailbox"] {
        for query in [
            "limit=0".to_owned(),
            "limit=201".to_owned(),
            "limit=ten".to_owned(),
            "limit=-1".to_owned(),
            "after=not-an-id".to_owned(),
            format!("after={unknown}"),
        ] {
            let url = format!("{path}?{query}");
            let answer = api.as_user(ann, Method::GET, &url).await;
            let (status, body) = problem(answer, &url).await;
            assert_eq!(status, 400, "GET {url}: {body}");
        }
        assert_eq!(
            api.as_user(ann, Method::GET, &format!("{path}?limit=200"))
                .await
                .status(),
            200,
            "{path}: the maximum is accepted"
        );
    }

    let (ann_id, bob_id) = (subject_of(ann), subject_of(bob));
    let mails = list(api, None, "/api/dev/mailbox").await;
    let mails = mails.as_array().expect("a list");
    assert!(mails.len() >= 3, "{mails:?}");
    let first = list(api, None, "/api/dev/mailbox?limit=1").await;
    assert_eq!(first, json!([mails[0]]));
    let after = format!(
        "/api/dev/mailbox?limit=2&after={}",
        mails[0]["id"].as_str().expect("an id")
    );
    assert_eq!(list(api, None, &after).await, json!(mails[1..3]));

    let asked = api
        .as_user(ann, Method::POST, &format!("/api/friends/{bob_id}"))
        .await;
    assert_eq!(asked.status(), 200);
    let requests = list(api, Some(bob), "/api/friends/requests?limit=1").await;
    assert_eq!(requests[0]["id"], ann_id.as_str(), "{requests}");
    let rest = list(api, Some(bob), &format!("/api/friends/requests?after={ann_id}")).await;
    assert_eq!(rest, json!([]));
    let accepted = api
        .as_user(bob, Method::POST, &format!("/api/friends/{ann_id}/accept"))
        .await;
    assert_eq!(accepted.status(), 200);
    let friends = list(api, Some(ann), "/api/friends?limit=1").await;
    assert_eq!(friends[0]["id"], bob_id.as_str(), "{friends}");
    let rest = list(api, Some(ann), &format!("/api/friends?after={bob_id}")).await;
    assert_eq!(rest, json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_on_the_embedded_defaults() {
    bad_input_gets_a_problem_and_changes_nothing(&[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_on_postgres_and_nats() {
    let backing = PostgresAndNats::new("bad_input");
    bad_input_gets_a_problem_and_changes_nothing(&backing.env()).await;
}
