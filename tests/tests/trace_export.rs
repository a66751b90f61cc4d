//! With `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans are exported over OTLP/HTTP; the caller's
//! trace id reaches the collector, and the service called next is named the exported span as
//! its parent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use dozen_tests::process::Service;
use nix::sys::signal::Signal;

#[derive(Debug, Clone)]
struct Export {
    content_type: String,
    body: Bytes,
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_reach_an_otlp_collector_with_the_callers_trace_id() {
    let exports: Arc<Mutex<Vec<Export>>> = Arc::default();
    let recorder = exports.clone();
    let collector = axum::Router::new().route(
        "/v1/traces",
        post(move |headers: HeaderMap, body: Bytes| {
            let content_type = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            recorder.lock().expect("lock").push(Export { content_type, body });
            async { "" }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, collector).await });

    // Friends, as the gateway's upstream: it records the trace context it is called with.
    let received: Arc<Mutex<Vec<String>>> = Arc::default();
    let recorder = received.clone();
    let friends = axum::Router::new().route(
        "/friends",
        get(move |headers: HeaderMap| {
            let traceparent = headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            recorder.lock().expect("lock").push(traceparent);
            async { axum::Json(serde_json::json!([])) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let friends_url = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, friends).await });

    let mut gateway = Service::start(
        "dozen-gateway",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("FRIENDS_URL", &friends_url),
        ],
    )
    .await;
    let trace_id = "5b8efff798038103d269b633813fc60c";
    let answer = reqwest::Client::new()
        .get(gateway.url("/api/friends"))
        .header("traceparent", format!("00-{trace_id}-eee19b7ec3c1b174-01"))
        .header("authorization", "Bearer passed-on")
        .send()
        .await
        .expect("friends through the gateway");
    assert_eq!(answer.status(), 200);
    let passed_on = received.lock().expect("lock").clone();
    assert_eq!(passed_on.len(), 1, "{passed_on:?}");
    let parts: Vec<&str> = passed_on[0].split('-').collect();
    assert_eq!(parts.len(), 4, "{passed_on:?}");
    assert_eq!(parts[1], trace_id, "friends is called in the caller's trace");
    let parent_span_id = parts[2];
    assert_ne!(
        parent_span_id, "eee19b7ec3c1b174",
        "the gateway's own span is the parent"
    );

    // Stopping flushes what is still batched.
    gateway.process.signal(Signal::SIGTERM);
    assert!(gateway.process.wait(Duration::from_secs(15)).await.success());

    let exports = exports.lock().expect("lock").clone();
    assert!(!exports.is_empty(), "nothing was exported");
    assert!(
        exports
            .iter()
            .all(|export| export.content_type == "application/x-protobuf")
    );
    let exported = |hex: &str| {
        let raw: Vec<u8> = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
            .collect();
        exports.iter().any(|export| {
            export
                .body
                .windows(raw.len())
                .any(|window| window == raw.as_slice())
        })
    };
    assert!(
        exported(trace_id),
        "the request's span carries the caller's trace id"
    );
    assert!(
        exported(parent_span_id),
        "the span named to friends as its parent is the one exported"
    );
    let status = b"http.response.status_code";
    assert!(
        exports
            .iter()
            .any(|export| export.body.windows(status.len()).any(|window| window == status)),
        "the request's span carries its answer's status"
    );
}
