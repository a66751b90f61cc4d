//! What the kit's server does to every request, whatever its handler answers: a request id
//! (the caller's, or a new one) that handlers and answers share, problem+json for every error
//! (a panic, a timeout, a body too large, a plain-text error, no such route), and metrics.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use dozen_kit::config::ServerSettings;
use dozen_kit::http::request_id;
use dozen_kit::http::server::{self, Readiness};
use dozen_kit::lifecycle::Lifecycle;
use tower::ServiceExt;
use utoipa_axum::router::OpenApiRouter;

fn app() -> axum::Router {
    let settings = ServerSettings {
        port: 0,
        host: [127, 0, 0, 1].into(),
        request_timeout: Duration::from_millis(200),
        header_read_timeout: Duration::from_secs(60),
        body_limit: 1024,
        drain_delay: Duration::ZERO,
        shutdown_timeout: Duration::from_secs(5),
        worker_threads: 1,
        upstream_timeout: Duration::from_secs(5),
    };
    let api = OpenApiRouter::new()
        .route(
            "/request-id",
            get(|| async {
                request_id::current()
                    .and_then(|id| id.to_str().ok().map(str::to_owned))
                    .unwrap_or_default()
            }),
        )
        .route("/boom", get(boom))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "too late"
            }),
        )
        .route(
            "/plain-error",
            get(|| async { (StatusCode::CONFLICT, "taken already") }),
        )
        .route(
            "/upload",
            post(|body: Bytes| async move { body.len().to_string() }),
        );
    server::router("test", api, Readiness::default(), Lifecycle::new(), &settings)
}

async fn boom() -> &'static str {
    panic!("a handler's bug")
}

async fn send(request: Request<Body>) -> (Response, String) {
    let answer = app().oneshot(request).await.expect("an answer");
    let (parts, body) = answer.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20).await.expect("a body");
    (
        Response::from_parts(parts, Body::empty()),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

fn get_request(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).expect("a request")
}

/// The problem's status and detail, after checking it is one.
fn problem(answer: &Response, body: &str) -> (u64, String) {
    assert_eq!(
        answer.headers()["content-type"],
        "application/problem+json",
        "{body}"
    );
    let problem: serde_json::Value = serde_json::from_str(body).expect("JSON");
    (
        problem["status"].as_u64().expect("a status"),
        problem["detail"].as_str().expect("a detail").to_owned(),
    )
}

#[tokio::test]
async fn a_request_without_an_id_gets_one_that_its_handler_and_its_answer_share() {
    let (answer, body) = send(get_request("/request-id")).await;
    assert_eq!(answer.status(), StatusCode::OK);
    let id = answer.headers()["x-request-id"].to_str().expect("ASCII");
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    assert_eq!(body, id, "the handler sees the id the answer carries");

    let (answer, body) = send(
        Request::get("/request-id")
            .header("x-request-id", "caller-7")
            .body(Body::empty())
            .expect("a request"),
    )
    .await;
    assert_eq!(answer.headers()["x-request-id"], "caller-7");
    assert_eq!(body, "caller-7");
}

#[tokio::test]
async fn a_panicking_handler_is_a_500_problem_and_the_server_goes_on() {
    let (answer, body) = send(get_request("/boom")).await;
    assert_eq!(answer.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        problem(&answer, &body),
        (500, "the request could not be completed".to_owned())
    );
    assert!(answer.headers().contains_key("x-request-id"));
    let (answer, _) = send(get_request("/request-id")).await;
    assert_eq!(answer.status(), StatusCode::OK);
}

#[tokio::test]
async fn errors_made_elsewhere_become_problems_with_their_status() {
    let (answer, body) = send(get_request("/plain-error")).await;
    assert_eq!(problem(&answer, &body), (409, "taken already".to_owned()));

    let (answer, body) = send(get_request("/slow")).await;
    assert_eq!(problem(&answer, &body).0, 503);

    let (answer, body) = send(get_request("/no/such/route")).await;
    assert_eq!(problem(&answer, &body).0, 404);

    let (answer, body) = send(
        Request::post("/request-id")
            .body(Body::empty())
            .expect("a request"),
    )
    .await;
    assert_eq!(problem(&answer, &body).0, 405);
    assert!(answer.headers().contains_key("allow"), "the Allow header is kept");
}

#[tokio::test]
async fn a_body_too_large_is_a_413_problem_that_closes_the_connection() {
    let (answer, body) = send(
        Request::post("/upload")
            .body(Body::from(vec![b'x'; 2048]))
            .expect("a request"),
    )
    .await;
    assert_eq!(problem(&answer, &body).0, 413);
    assert_eq!(answer.headers()["connection"], "close");

    let (answer, body) = send(
        Request::post("/upload")
            .body(Body::from(vec![b'x'; 1000]))
            .expect("a request"),
    )
    .await;
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(body, "1000");
}

#[tokio::test]
async fn every_answer_is_counted_by_route_and_status() {
    for _ in 0..3 {
        send(get_request("/plain-error")).await;
    }
    let (_, metrics) = send(get_request("/metrics")).await;
    let line = metrics
        .lines()
        .find(|line| {
            line.starts_with("http_requests_total{")
                && line.contains(r#"route="/plain-error""#)
                && line.contains(r#"status="409""#)
        })
        .unwrap_or_else(|| panic!("no count of /plain-error in {metrics}"));
    let count: f64 = line
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a count");
    assert!(count >= 3.0, "{line}");
}
