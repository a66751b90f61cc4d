//! With `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans are exported over OTLP/HTTP; the caller's
//! trace id reaches the collector.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::post;
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

    let mut gateway = Service::start("dozen-gateway", &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)]).await;
    let trace_id = "5b8efff798038103d269b633813fc60c";
    let answer = reqwest::Client::new()
        .get(gateway.url("/healthz"))
        .header("traceparent", format!("00-{trace_id}-eee19b7ec3c1b174-01"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(answer.status(), 200);

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
    let raw_trace_id: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace_id[2 * i..2 * i + 2], 16).expect("hex"))
        .collect();
    assert!(
        exports.iter().any(|export| export
            .body
            .windows(16)
            .any(|window| window == raw_trace_id.as_slice())),
        "the request's span carries the caller's trace id"
    );
}
