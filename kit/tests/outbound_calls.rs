//! A call made while handling a request carries that request's trace and request id on.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Request};
use axum::routing::get;
use dozen_kit::config::{LogFormat, ServerSettings, TelemetrySettings};
use dozen_kit::http::client::HttpClient;
use dozen_kit::http::server::{self, Readiness};
use dozen_kit::lifecycle::Lifecycle;
use tower::ServiceExt;
use utoipa_axum::router::OpenApiRouter;

fn settings() -> ServerSettings {
    ServerSettings {
        port: 0,
        host: [127, 0, 0, 1].into(),
        request_timeout: Duration::from_secs(5),
        header_read_timeout: Duration::from_secs(60),
        body_limit: 1024,
        drain_delay: Duration::ZERO,
        shutdown_timeout: Duration::from_secs(5),
        worker_threads: 1,
        upstream_timeout: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn an_outgoing_call_continues_the_incoming_trace_and_request_id() {
    continues_the_trace_and_request_id("info").await;
}

#[tokio::test]
async fn the_trace_is_passed_on_whatever_the_log_level() {
    continues_the_trace_and_request_id("warn").await;
}

/// Serve a route that calls a peer, with logs at `log_level`, and check what the peer sees.
async fn continues_the_trace_and_request_id(log_level: &str) {
    let telemetry = TelemetrySettings {
        log_format: LogFormat::Json,
        log_level: Some(log_level.into()),
        otlp_endpoint: None,
    };
    let _guard = dozen_kit::telemetry::init("test", &telemetry).expect("telemetry");

    // The peer records the headers it is called with.
    let seen: Arc<Mutex<Option<HeaderMap>>> = Arc::default();
    let recorder = seen.clone();
    let peer = axum::Router::new().route(
        "/echo",
        get(move |headers: HeaderMap| {
            *recorder.lock().expect("lock") = Some(headers);
            async { "ok" }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let peer_url = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, peer).await });

    let upstream = HttpClient::new(Duration::from_secs(5)).upstream("peer", peer_url);
    let api = OpenApiRouter::new().route(
        "/call",
        get(move || {
            let upstream = upstream.clone();
            async move {
                let answer = upstream
                    .call(http::Method::GET, "/echo")
                    .send()
                    .await
                    .expect("peer answers");
                answer.status().as_u16().to_string()
            }
        }),
    );
    let app = server::router("test", api, Readiness::default(), Lifecycle::new(), &settings());

    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let caller_span = "b7ad6b7169203331";
    let answer = app
        .oneshot(
            Request::get("/call")
                .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
                .header("x-request-id", "req-42")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("answer");
    assert_eq!(answer.status(), 200);

    let headers = seen.lock().expect("lock").clone().expect("the peer was called");
    let traceparent = headers["traceparent"].to_str().expect("ASCII");
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[1], trace_id, "the same trace");
    assert_ne!(
        parts[2], caller_span,
        "a new span of this service, child of the caller's"
    );
    assert_eq!(headers["x-request-id"], "req-42");
}
