//! Every service, on SQLite and on Postgres: migrate, serve the kit's endpoints, answer every
//! error as problem+json, continue the caller's trace in its logs, stop cleanly on SIGTERM.

use std::time::Duration;

use dozen_tests::database::{Backend, TestDatabase};
use dozen_tests::on_both_backends;
use dozen_tests::process::{SERVICES, Service, run_to_exit};
use nix::sys::signal::Signal;
use serde_json::Value;

async fn every_service_serves_the_ops_endpoints(backend: Backend) {
    for (name, has_database) in SERVICES {
        let program = format!("dozen-{name}");
        let database = TestDatabase::create(backend).await;
        let signing_key = dozen_passwords::generate_signing_key_pem();
        // Verification must be told where mail goes: an SMTP port nothing listens on, as this
        // test sends no mail.
        let mut env = vec![
            ("LOG_LEVEL", "info"),
            ("JWT_SIGNING_KEYS", signing_key.as_str()),
            ("MAIL_URL", "smtp://127.0.0.1:9"),
        ];
        if has_database {
            env.push(("DATABASE_URL", &database.url));
            let migrated = run_to_exit(&program, &["migrate"], &env).await;
            assert!(migrated.status.success(), "{name} migrate: {migrated:?}");
            let again = run_to_exit(&program, &["migrate"], &env).await;
            assert!(
                again.status.success(),
                "{name}: migrate twice is harmless: {again:?}"
            );
        }
        let mut service = Service::start(&program, &env).await;
        let client = reqwest::Client::new();

        let health = client.get(service.url("/healthz")).send().await.expect("healthz");
        assert_eq!(health.status(), 200, "{name} /healthz");
        let ready = client.get(service.url("/readyz")).send().await.expect("readyz");
        assert_eq!(ready.status(), 200, "{name} /readyz");

        let spec: Value = client
            .get(service.url("/openapi.json"))
            .send()
            .await
            .expect("spec")
            .json()
            .await
            .expect("JSON");
        assert!(
            spec["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
            "{name}: an OpenAPI 3 document"
        );
        assert_eq!(spec["info"]["title"], format!("dozen {name}"));

        let metrics = client
            .get(service.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        assert!(
            metrics.contains(r#"http_requests_total{method="GET",route="/readyz",status="200"}"#),
            "{name}: requests are counted by route and status:\n{metrics}"
        );
        assert!(
            metrics.contains("http_request_duration_seconds_bucket"),
            "{name}: latency histograms"
        );
        assert!(
            metrics.contains("process_resident_memory_bytes"),
            "{name}: process metrics"
        );

        // Unknown routes and wrong methods get problem+json, as does every error.
        let missing = client
            .get(service.url("/no/such/route"))
            .send()
            .await
            .expect("404");
        assert_eq!(missing.status(), 404);
        assert_eq!(missing.headers()["content-type"], "application/problem+json");
        let problem: Value = missing.json().await.expect("problem JSON");
        assert_eq!(problem["status"], 404);
        assert!(problem["title"].is_string() && problem["detail"].is_string() && problem["type"].is_string());
        let wrong_method = client.delete(service.url("/healthz")).send().await.expect("405");
        assert_eq!(wrong_method.status(), 405);
        assert_eq!(wrong_method.headers()["content-type"], "application/problem+json");

        // The caller's trace and request id carry on.
        let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let answered = client
            .get(service.url("/healthz"))
            .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
            .header("x-request-id", "test-request-1")
            .send()
            .await
            .expect("traced request");
        assert_eq!(answered.headers()["x-request-id"], "test-request-1");
        let logged = service
            .process
            .wait_for_line(Duration::from_secs(5), |line| line.contains("test-request-1"))
            .await;
        let logged: Value = serde_json::from_str(&logged).expect("a JSON log line");
        assert_eq!(
            logged["trace_id"], trace_id,
            "{name}: the log line continues the caller's trace"
        );
        assert_eq!(logged["service"], name);
        assert!(logged["span_id"].as_str().is_some_and(|id| id.len() == 16));

        service.process.signal(Signal::SIGTERM);
        let status = service.process.wait(Duration::from_secs(10)).await;
        assert!(status.success(), "{name} exits 0 on SIGTERM: {status}");
    }
}
on_both_backends!(every_service_serves_the_ops_endpoints);

#[tokio::test(flavor = "multi_thread")]
async fn a_service_is_not_ready_while_its_database_is_gone() {
    let database = TestDatabase::create(Backend::Postgres).await;
    let env = [("DATABASE_URL", database.url.as_str())];
    assert!(
        run_to_exit("dozen-users", &["migrate"], &env)
            .await
            .status
            .success()
    );
    let service = Service::start("dozen-users", &env).await;
    let client = reqwest::Client::new();
    assert_eq!(
        client
            .get(service.url("/readyz"))
            .send()
            .await
            .expect("readyz")
            .status(),
        200
    );

    drop(database); // drops the Postgres database, closing the service's connections
    let ready = client.get(service.url("/readyz")).send().await.expect("readyz");
    assert_eq!(ready.status(), 503);
    assert_eq!(ready.headers()["content-type"], "application/problem+json");
    let problem: Value = ready.json().await.expect("problem JSON");
    assert!(
        problem["detail"].as_str().is_some_and(|d| d.contains("database")),
        "{problem}"
    );
    let health = client.get(service.url("/healthz")).send().await.expect("healthz");
    assert_eq!(health.status(), 200, "alive even when not ready");
}

/// Database work between requests (sqlx asks the subscriber whether each query would be logged)
/// must not cost any later request its span: each request's log line carries its own trace.
#[tokio::test(flavor = "multi_thread")]
async fn every_log_line_of_a_postgres_service_carries_its_request_trace() {
    let database = TestDatabase::create(Backend::Postgres).await;
    let env = [("DATABASE_URL", database.url.as_str()), ("LOG_LEVEL", "info")];
    assert!(
        run_to_exit("dozen-users", &["migrate"], &env)
            .await
            .status
            .success()
    );
    let mut service = Service::start("dozen-users", &env).await;
    let client = reqwest::Client::new();
    let requests = 40;
    for request in 0..requests {
        // `/readyz` queries the database; `/healthz` does not.
        let path = if request % 2 == 0 { "/readyz" } else { "/healthz" };
        let answer = client
            .get(service.url(path))
            .header(
                "traceparent",
                format!("00-{:032x}-00f067aa0ba902b7-01", request + 1),
            )
            .header("x-request-id", format!("traced-{request}"))
            .send()
            .await
            .expect("traced request");
        assert_eq!(answer.status(), 200, "{path}");
    }
    service
        .process
        .wait_for_line(Duration::from_secs(5), |line| {
            line.contains(&format!("\"traced-{}\"", requests - 1))
        })
        .await;
    let answered: Vec<Value> = service
        .process
        .lines()
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["message"] == "answered")
        .collect();
    for request in 0..requests {
        let request_id = format!("traced-{request}");
        let line = answered
            .iter()
            .find(|line| line["span"]["request_id"] == request_id.as_str());
        let trace_id = line.map(|line| line["trace_id"].clone());
        assert_eq!(
            trace_id,
            Some(Value::from(format!("{:032x}", request + 1))),
            "the answer to request {request} is logged in its span and trace; every answer \
             logged:\n{answered:#?}"
        );
    }
}

/// How many `GET /readyz` requests `service` has answered with 200, by its metrics.
async fn readiness_probes_answered(service: &Service) -> u64 {
    let metrics = reqwest::get(service.url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix(r#"http_requests_total{method="GET",route="/readyz",status="200"} "#)
        })
        .map_or(0, |count| count.parse().expect("a count"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_public_status_page_shows_readiness_and_breakers_only_and_is_cached() {
    let database = TestDatabase::create(Backend::Sqlite).await;
    let env = [("DATABASE_URL", database.url.as_str())];
    assert!(
        run_to_exit("dozen-users", &["migrate"], &env)
            .await
            .status
            .success()
    );
    let users = Service::start("dozen-users", &env).await;
    let users_url = users.url("");
    // Every other service is a port nothing listens on: its probe fails with a connection
    // error.
    let closed = "http://127.0.0.1:9";
    let mut gateway = Service::start(
        "dozen-gateway",
        &[
            ("USERS_URL", users_url.as_str()),
            ("SIGNUP_URL", closed),
            ("PASSWORDS_URL", closed),
            ("VERIFICATION_URL", closed),
            ("FRIENDS_URL", closed),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let probes_before = readiness_probes_answered(&users).await;

    // A burst of requests at once: one round of probes answers them all.
    let burst = (0..20).map(|_| {
        let request = client.get(gateway.url("/ops/status"));
        async move { request.send().await.expect("GET /ops/status") }
    });
    let responses = futures_util::future::join_all(burst).await;
    let probes = readiness_probes_answered(&users).await - probes_before;
    assert!((1..=2).contains(&probes), "{probes} probes for 20 requests");

    for response in responses {
        assert_eq!(response.status(), 200);
        let text = response.text().await.expect("text");
        for leak in ["detail", "last_error", "127.0.0.1", "error", "connect"] {
            assert!(!text.contains(leak), "{leak} in the public status: {text}");
        }
        let status: Value = serde_json::from_str(&text).expect("JSON");
        let services = status["services"].as_array().expect("a list");
        assert_eq!(services.len(), 6, "{status}");
        for service in services {
            let name = service["name"].as_str().expect("a name");
            let mut fields: Vec<&str> = service
                .as_object()
                .expect("an object")
                .keys()
                .map(String::as_str)
                .collect();
            fields.sort_unstable();
            if name == "gateway" {
                assert_eq!(fields, ["name", "ready"], "{service}");
            } else {
                assert_eq!(fields, ["breaker", "name", "ready"], "{service}");
                let breaker = service["breaker"].as_object().expect("a breaker");
                assert_eq!(breaker.keys().collect::<Vec<_>>(), ["state"], "{service}");
            }
            let expected_ready = matches!(name, "gateway" | "users");
            assert_eq!(service["ready"], expected_ready, "{service}");
        }
    }

    // Why a service is not ready is in the gateway's log, not on the page.
    gateway
        .process
        .wait_for_line(Duration::from_secs(5), |line| {
            line.contains("a service is not ready") && line.contains("unreachable")
        })
        .await;
}
