//! The gateway's public edge, through its real binary in front of real services: rate limits
//! per client address (429 with Retry-After, nothing passed on, recovery after the window),
//! X-Forwarded-For believed only from trusted proxies (and the address it names being what
//! passwords throttles), security headers on every answer, CORS only for configured origins,
//! and oversized bodies refused before any service sees them. It belongs to the security suite
//! with `security_credentials.rs`; tests named after an OWASP ASVS 5.0 requirement check it.

mod passwords_support;

use std::time::{Duration, Instant};

use dozen_tests::database::Backend;
use dozen_tests::identity;
use dozen_tests::platform::Platform;
use dozen_tests::process::{Service, closed_port, run_to_exit};
use nix::sys::signal::Signal;
use passwords_support::Passwords;
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

/// A real verification service on its own SQLite database, bus and mailbox.
struct Verification {
    service: Service,
    _data: tempfile::TempDir,
}

impl Verification {
    async fn start() -> Self {
        let data = tempfile::tempdir().expect("data folder");
        let at = |name: &str| data.path().join(name).display().to_string();
        let (database, bus, mailbox) = (
            format!("sqlite://{}", at("verification.db")),
            format!("sqlite://{}", at("bus.db")),
            format!("file://{}", at("mailbox")),
        );
        let env = [
            ("DATABASE_URL", database.as_str()),
            ("BUS_URL", bus.as_str()),
            ("MAIL_URL", mailbox.as_str()),
        ];
        let migrated = run_to_exit("dozen-verification", &["migrate"], &env).await;
        assert!(migrated.status.success(), "{migrated:?}");
        let service = Service::start("dozen-verification", &env).await;
        Self { service, _data: data }
    }

    /// How many `POST /verifications/…` requests the service has answered, by its metrics.
    async fn posts_answered(&self) -> u64 {
        let metrics = reqwest::get(self.service.url("/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        metrics
            .lines()
            .filter(|line| {
                line.starts_with("http_requests_total{")
                    && line.contains("method=\"POST\"")
                    && line.contains("route=\"/verifications/")
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }
}

/// A gateway whose verification peer is `verification` (or nothing) and passwords peer is
/// `passwords` (or nothing), every other peer a closed port, serving the dev mailbox, with
/// `env` on top.
async fn gateway(
    verification: Option<&Service>,
    passwords: Option<&Service>,
    env: &[(&str, &str)],
) -> Service {
    let closed = format!("http://127.0.0.1:{}", closed_port());
    let url_of =
        |service: Option<&Service>| service.map_or_else(|| closed.clone(), |service| service.url(""));
    let (verification, passwords) = (url_of(verification), url_of(passwords));
    let mut all = vec![
        ("VERIFICATION_URL", verification.as_str()),
        ("PASSWORDS_URL", passwords.as_str()),
        ("SIGNUP_URL", closed.as_str()),
        ("USERS_URL", closed.as_str()),
        ("FRIENDS_URL", closed.as_str()),
        ("DEV_MAILBOX", "true"),
    ];
    all.extend_from_slice(env);
    Service::start("dozen-gateway", &all).await
}

/// `POST /api/verifications/<token>` from `forwarded_for` (when given).
async fn verify(gateway: &Service, token: &str, forwarded_for: Option<&str>) -> Response {
    let mut request = reqwest::Client::new().post(gateway.url(&format!("/api/verifications/{token}")));
    if let Some(address) = forwarded_for {
        request = request.header("x-forwarded-for", address);
    }
    request.send().await.expect("the gateway answers")
}

fn retry_after(answer: &Response) -> u64 {
    answer
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok()?.parse().ok())
        .expect("a Retry-After in seconds")
}

async fn problem_type(answer: Response) -> String {
    assert_eq!(answer.headers()["content-type"], "application/problem+json");
    let problem: Value = answer.json().await.expect("a problem body");
    problem["type"].as_str().expect("a type").to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn v2_4_1_a_limited_route_answers_429_with_retry_after_then_recovers_after_its_window() {
    let verification = Verification::start().await;
    let gateway = gateway(
        Some(&verification.service),
        None,
        // Two at once, then one each 5 s: slow enough that the bucket does not refill between
        // the requests below on a loaded machine, quick enough to see it recover.
        &[("RATE_LIMIT_VERIFICATIONS", "2/10s")],
    )
    .await;

    for _ in 0..2 {
        assert_eq!(verify(&gateway, "unknown", None).await.status(), 404, "passed on");
    }
    let refused = verify(&gateway, "unknown", None).await;
    assert_eq!(refused.status(), 429);
    assert!((1..=5).contains(&retry_after(&refused)), "within the window");
    assert_eq!(problem_type(refused).await, "/problems/rate-limited");
    let resend = reqwest::Client::new()
        .post(gateway.url("/api/verifications/resend"))
        .json(&json!({ "email": "ann@example.com" }))
        .send()
        .await
        .expect("resend");
    assert_eq!(resend.status(), 429, "resending shares the verifications' limit");
    assert_eq!(
        verification.posts_answered().await,
        2,
        "refused requests never reach the service"
    );

    let login = reqwest::Client::new()
        .post(gateway.url("/api/sessions"))
        .json(&json!({ "email": "ann@example.com", "password": "x" }))
        .send()
        .await
        .expect("login");
    assert_eq!(
        login.status(),
        503,
        "logins have their own limit: passed on (to no passwords service)"
    );

    // After the Retry-After it names, the route lets requests through again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = verify(&gateway, "unknown", None).await;
        if answer.status() == 404 {
            break;
        }
        assert_eq!(answer.status(), 429);
        assert!(Instant::now() < deadline, "the limit never recovered");
        tokio::time::sleep(Duration::from_secs(retry_after(&answer))).await;
    }
    assert_eq!(verification.posts_answered().await, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn v4_1_3_forwarded_addresses_are_believed_only_from_trusted_proxies() {
    let verification = Verification::start().await;
    let limit = [("RATE_LIMIT_VERIFICATIONS", "1/1h")];
    let behind_proxy = gateway(
        Some(&verification.service),
        None,
        &[limit[0], ("TRUSTED_PROXIES", "127.0.0.0/8, ::1")],
    )
    .await;
    let exposed = gateway(Some(&verification.service), None, &limit).await;
    let status =
        |gateway, forwarded_for| async move { verify(gateway, "unknown", forwarded_for).await.status() };

    // Behind a trusted proxy each forwarded client has its own bucket.
    assert_eq!(status(&behind_proxy, Some("203.0.113.7")).await, 404);
    assert_eq!(status(&behind_proxy, Some("203.0.113.7")).await, 429);
    assert_eq!(status(&behind_proxy, Some("203.0.113.8")).await, 404);
    // Read from the right, skipping trusted proxies; what the client wrote itself is ignored.
    assert_eq!(status(&behind_proxy, Some("203.0.113.9, 127.0.0.5")).await, 404);
    assert_eq!(status(&behind_proxy, Some("203.0.113.9")).await, 429);
    assert_eq!(
        status(&behind_proxy, Some("198.51.100.1, 203.0.113.7")).await,
        429,
        "a client cannot leave its bucket by prepending an address"
    );
    // The proxy's own requests are its own.
    assert_eq!(status(&behind_proxy, None).await, 404);

    // Without trusted proxies X-Forwarded-For is ignored: one peer, one bucket.
    assert_eq!(status(&exposed, Some("203.0.113.7")).await, 404);
    assert_eq!(status(&exposed, Some("203.0.113.8")).await, 429);
    assert_eq!(status(&exposed, None).await, 429);
}

#[tokio::test(flavor = "multi_thread")]
async fn v2_4_1_authenticated_reads_are_limited_per_credential() {
    let gateway = gateway(None, None, &[("RATE_LIMIT_READS", "2/1h")]).await;
    let read = |path: &str, token: &str| {
        let request = reqwest::Client::new()
            .get(gateway.url(path))
            .header("authorization", format!("Bearer {token}"));
        async move { request.send().await.expect("the gateway answers") }
    };

    // Passed on (to services that are not there) until the credential's bucket is empty.
    assert_ne!(read("/api/me", "ann").await.status(), 429);
    assert_ne!(read("/api/friends", "ann").await.status(), 429);
    for path in [
        "/api/me",
        "/api/suggestions",
        "/api/friends",
        "/api/friends/requests",
    ] {
        let refused = read(path, "ann").await;
        assert_eq!(refused.status(), 429, "{path}: the reads share one limit");
        assert!(retry_after(&refused) >= 1);
        assert_eq!(problem_type(refused).await, "/problems/rate-limited");
    }
    // Another credential from the same address has its own bucket.
    assert_ne!(read("/api/me", "bob").await.status(), 429);
    // Requests without credentials are counted by address.
    let anonymous = || reqwest::get(gateway.url("/api/friends"));
    assert_ne!(anonymous().await.expect("answer").status(), 429);
    assert_ne!(anonymous().await.expect("answer").status(), 429);
    assert_eq!(anonymous().await.expect("answer").status(), 429);
}

/// How many lines of `gateway`'s log, once it has stopped, warn of an unnamed proxy.
async fn missing_proxy_warnings(mut gateway: Service) -> usize {
    gateway.process.signal(Signal::SIGTERM);
    gateway.process.wait(Duration::from_secs(30)).await;
    gateway
        .process
        .lines()
        .iter()
        .filter(|line| line.contains("TRUSTED_PROXIES does not name it"))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn v4_1_3_forwarded_headers_from_an_untrusted_private_peer_are_warned_of_once() {
    let verification = Verification::start().await;
    let exposed = gateway(Some(&verification.service), None, &[]).await;
    let trusted = gateway(
        Some(&verification.service),
        None,
        &[("TRUSTED_PROXIES", "127.0.0.0/8")],
    )
    .await;
    let client = reqwest::Client::new();
    for gateway in [&exposed, &trusted] {
        for header in ["x-forwarded-for", "forwarded"] {
            let value = if header == "forwarded" {
                "for=203.0.113.7"
            } else {
                "203.0.113.7"
            };
            let answer = client
                .get(gateway.url("/healthz"))
                .header(header, value)
                .send()
                .await
                .expect("the gateway answers");
            assert_eq!(answer.status(), 200);
        }
    }

    assert_eq!(
        missing_proxy_warnings(exposed).await,
        1,
        "one warning, not one per request"
    );
    assert_eq!(
        missing_proxy_warnings(trusted).await,
        0,
        "a named proxy is not warned of"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn v6_3_1_passwords_throttles_the_client_address_the_gateway_resolved() {
    // Passwords believes the gateway's X-Forwarded-For, as under `dozen up`.
    let passwords = Passwords::start(
        Backend::Sqlite,
        &[
            ("TRUST_FORWARDED_FOR", "true"),
            ("LOGIN_MAX_FAILURES_PER_ADDRESS", "2"),
            ("LOGIN_MAX_FAILURES_PER_ACCOUNT", "1000"),
        ],
    )
    .await;
    let behind_proxy = gateway(
        None,
        Some(&passwords.service),
        &[("TRUSTED_PROXIES", "127.0.0.1")],
    )
    .await;
    let exposed = gateway(None, Some(&passwords.service), &[]).await;
    let login = |gateway: &Service, forwarded_for: &str| {
        let request = reqwest::Client::new()
            .post(gateway.url("/api/sessions"))
            .header("x-forwarded-for", forwarded_for)
            .json(&json!({ "email": "nobody@example.com", "password": "not-the-password" }));
        async move { request.send().await.expect("login") }
    };

    for _ in 0..2 {
        assert_eq!(login(&behind_proxy, "203.0.113.7").await.status(), 401);
    }
    let locked = login(&behind_proxy, "203.0.113.7").await;
    assert_eq!(locked.status(), 429);
    assert_eq!(problem_type(locked).await, "/problems/too-many-failed-logins");
    assert_eq!(
        login(&behind_proxy, "203.0.113.8").await.status(),
        401,
        "another client behind the proxy is not locked out"
    );

    // From an exposed gateway the forwarded addresses are the peer's own: one lockout.
    assert_eq!(login(&exposed, "198.51.100.1").await.status(), 401);
    assert_eq!(login(&exposed, "198.51.100.2").await.status(), 401);
    assert_eq!(login(&exposed, "198.51.100.3").await.status(), 429);
}

const SECURITY_HEADERS: [(&str, &str); 5] = [
    ("strict-transport-security", "max-age=63072000; includeSubDomains"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("cross-origin-opener-policy", "same-origin"),
];

fn assert_security_headers(answer: &Response, what: &str) {
    for (name, value) in SECURITY_HEADERS {
        assert_eq!(
            answer.headers().get(name).map(|v| v.as_bytes()),
            Some(value.as_bytes()),
            "{name} on {what}"
        );
    }
    let policy = answer.headers()["content-security-policy"]
        .to_str()
        .expect("text");
    for directive in [
        "default-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "object-src 'none'",
        "form-action 'self'",
    ] {
        assert!(
            policy.contains(directive),
            "{directive} in the CSP on {what}: {policy}"
        );
    }
    assert!(!policy.contains("unsafe"), "no inline script or style: {policy}");
}

#[tokio::test(flavor = "multi_thread")]
async fn v3_4_every_answer_carries_the_browser_security_headers() {
    let verification = Verification::start().await;
    let gateway = gateway(
        Some(&verification.service),
        None,
        &[("RATE_LIMIT_VERIFICATIONS", "1/1h")],
    )
    .await;
    let client = reqwest::Client::new();
    let call = |method: Method, path: &str| {
        let request = client.request(method, gateway.url(path));
        async move { request.send().await.expect("the gateway answers") }
    };

    let cases = [
        (call(Method::GET, "/api/dev/mailbox").await, 200, "an API answer"),
        (call(Method::GET, "/").await, 0, "the web UI"),
        (call(Method::GET, "/api/nowhere").await, 404, "an unknown route"),
        (call(Method::GET, "/api/signups").await, 405, "a wrong method"),
        (
            call(Method::POST, "/api/verifications/x").await,
            404,
            "a service's error",
        ),
        (
            call(Method::POST, "/api/verifications/x").await,
            429,
            "a rate-limited request",
        ),
        (
            call(Method::POST, "/api/signups").await,
            503,
            "an unavailable service",
        ),
        (call(Method::GET, "/healthz").await, 200, "an ops endpoint"),
    ];
    for (answer, status, what) in cases {
        if status != 0 {
            assert_eq!(answer.status(), status, "{what}");
        }
        assert_security_headers(&answer, what);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn v13_4_2_without_dev_mailbox_the_gateway_answers_404_on_every_dev_path() {
    let verification = Verification::start().await;
    // The same verification, which keeps a mailbox, behind a gateway that serves it and one
    // left at its default.
    let serving = gateway(Some(&verification.service), None, &[]).await;
    let verification_url = verification.service.url("");
    let off = Service::start("dozen-gateway", &[("VERIFICATION_URL", &verification_url)]).await;
    let client = reqwest::Client::new();
    let answer = client
        .get(serving.url("/api/dev/mailbox"))
        .send()
        .await
        .expect("GET");
    assert_eq!(answer.status(), 200, "the gateway that serves it");
    for path in [
        "/api/dev/mailbox",
        "/api/dev/mailbox?limit=1",
        "/api/dev/mailbox/",
        "/api/dev/",
        "/api/dev/anything",
    ] {
        let answer = client.get(off.url(path)).send().await.expect("GET");
        assert_eq!(answer.status(), 404, "{path}");
        assert_eq!(problem_type(answer).await, "about:blank", "{path}");
    }
    let head = client
        .head(off.url("/api/dev/mailbox"))
        .send()
        .await
        .expect("HEAD");
    assert_eq!(head.status(), 404);
}

/// A CORS preflight for a login from `origin`.
async fn preflight(gateway: &Service, origin: &str) -> Response {
    reqwest::Client::new()
        .request(Method::OPTIONS, gateway.url("/api/sessions"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type, idempotency-key")
        .send()
        .await
        .expect("preflight")
}

/// A cross-origin request to an API route from `origin`.
async fn from_origin(gateway: &Service, origin: &str) -> Response {
    reqwest::Client::new()
        .get(gateway.url("/api/dev/mailbox"))
        .header("origin", origin)
        .send()
        .await
        .expect("a cross-origin request")
}

#[tokio::test(flavor = "multi_thread")]
async fn v3_4_2_cors_is_off_unless_origins_are_configured_and_then_only_for_them() {
    let verification = Verification::start().await;
    let default = gateway(Some(&verification.service), None, &[]).await;
    let app = "https://app.example.com";
    let configured = gateway(
        Some(&verification.service),
        None,
        &[(
            "CORS_ALLOWED_ORIGINS",
            "https://app.example.com, http://localhost:3000",
        )],
    )
    .await;
    let allowed_origin = |answer: &Response| answer.headers().get("access-control-allow-origin").cloned();

    let answer = preflight(&default, app).await;
    assert_eq!(allowed_origin(&answer), None, "no CORS by default");
    assert!(answer.status().is_client_error(), "{}", answer.status());
    assert_eq!(allowed_origin(&from_origin(&default, app).await), None);

    let answer = preflight(&configured, app).await;
    assert!(answer.status().is_success(), "{}", answer.status());
    assert_eq!(allowed_origin(&answer).expect("allowed"), app);
    let methods = answer.headers()["access-control-allow-methods"]
        .to_str()
        .expect("text");
    assert!(methods.contains("POST"), "{methods}");
    let headers = answer.headers()["access-control-allow-headers"]
        .to_str()
        .expect("text")
        .to_ascii_lowercase();
    assert!(
        headers.contains("content-type") && headers.contains("idempotency-key"),
        "{headers}"
    );
    let actual = from_origin(&configured, app).await;
    assert_eq!(actual.status(), 200);
    assert_eq!(allowed_origin(&actual).expect("allowed"), app);

    let elsewhere = "https://evil.example.net";
    assert_eq!(allowed_origin(&preflight(&configured, elsewhere).await), None);
    assert_eq!(allowed_origin(&from_origin(&configured, elsewhere).await), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn v2_4_1_an_oversized_body_is_refused_with_413_and_creates_nothing() {
    let platform = Platform::start(&[]).await;
    let client = reqwest::Client::new();
    let sign_up = |display_name: String| {
        client
            .post(platform.url("gateway", "/api/signups"))
            .json(&json!({
                "email": "huge@example.com",
                "password": "correct horse battery staple",
                "display_name": display_name,
                "interests": ["go"],
            }))
            .send()
    };
    let profile = || {
        client
            .get(platform.url("users", "/profiles"))
            .header(
                identity::HEADER,
                platform.service_authorization("signup", "users"),
            )
            .query(&[("email", "huge@example.com")])
            .send()
    };

    // Well past the default BODY_LIMIT of 64 KiB.
    let refused = sign_up("x".repeat(1024 * 1024))
        .await
        .expect("the gateway answers");
    assert_eq!(refused.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_security_headers(&refused, "a 413");
    assert_eq!(refused.headers()["content-type"], "application/problem+json");
    assert_eq!(profile().await.expect("users").status(), 404, "no profile");
    let signup_metrics = reqwest::get(platform.url("signup", "/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        !signup_metrics.contains("route=\"/signups\""),
        "signup never saw the request"
    );

    // The same signup, small, goes through: the checks above could have seen one.
    let accepted = sign_up("Huge".to_owned()).await.expect("the gateway answers");
    assert_eq!(accepted.status(), 202);
    assert_eq!(profile().await.expect("users").status(), 200);
    platform.stop().await;
}

/// Send `POST <path>` with a body of `size` bytes over a plain blocking socket, writing all of
/// it before reading anything, as simple clients do; the status line of the response.
fn post_whole_body_then_read(port: u16, path: &str, size: usize) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("a read timeout");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {size}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).expect("the head is sent");
    stream
        .write_all(&vec![b' '; size])
        .expect("the whole body is sent, not cut off by a reset");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("the response is read");
    let response = String::from_utf8_lossy(&response);
    response.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn v2_4_1_a_client_that_sends_a_whole_oversized_body_before_reading_gets_the_413() {
    let gateway = gateway(None, None, &[("RATE_LIMIT_SIGNUPS", "off")]).await;
    let port = gateway.port;
    // More than loopback's socket buffers take in at once here, so the client is still
    // sending when the 413 is ready (without lingering it then sees a broken pipe), and
    // within what the server reads on before closing.
    let size = 6 * 1024 * 1024;
    tokio::task::spawn_blocking(move || {
        for attempt in 0..20 {
            let status = post_whole_body_then_read(port, "/api/signups", size);
            assert!(
                status.starts_with("HTTP/1.1 413"),
                "attempt {attempt}: {status:?}"
            );
        }
    })
    .await
    .expect("every attempt read a 413");
}
