//! HEADER_READ_TIMEOUT: a client that leaves a request's head unfinished, or a kept-alive
//! connection idle, past it loses the connection; one that finishes in time is answered.

use std::time::{Duration, Instant};

use dozen_tests::process::Service;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FIXTURE: &str = "dozen-fixture-slow";

/// The timeout the service runs with here: long enough for a test on a busy machine to send
/// a head in two parts within it, short enough to wait for.
const TIMEOUT: Duration = Duration::from_millis(700);

async fn service() -> Service {
    Service::start(FIXTURE, &[("HEADER_READ_TIMEOUT", "700ms")]).await
}

/// A connection to `service`, on which `sent` has been written.
async fn connected(service: &Service, sent: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", service.port))
        .await
        .expect("connect");
    stream.write_all(sent).await.expect("write");
    stream
}

/// Read until the service closes the connection; what it sent, and how long that took.
async fn read_until_closed(stream: &mut TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut chunk))
            .await
            .expect("the service closes the connection");
        match read {
            Ok(0) | Err(_) => break,
            Ok(read) => received.extend_from_slice(&chunk[..read]),
        }
    }
    (String::from_utf8_lossy(&received).into_owned(), started.elapsed())
}

/// The service answers an ordinary request (it outlived the slow client).
async fn still_answers(service: &Service) {
    let answer = reqwest::get(service.url("/healthz"))
        .await
        .expect("healthz answers");
    assert_eq!(answer.status(), 200);
}

#[tokio::test]
async fn a_client_that_never_finishes_its_request_head_is_disconnected() {
    let service = service().await;
    let mut stream = connected(&service, b"GET /healthz HTTP/1.1\r\nHost: test\r\n").await;
    let (received, took) = read_until_closed(&mut stream).await;
    assert!(
        !received.contains("alive"),
        "an unfinished request was answered: {received}"
    );
    assert!(
        took >= TIMEOUT - Duration::from_millis(100),
        "closed after {took:?}, before the timeout"
    );
    still_answers(&service).await;
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_after_the_timeout() {
    let service = service().await;
    let mut stream = connected(&service, b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n").await;
    let (received, took) = read_until_closed(&mut stream).await;
    assert!(received.starts_with("HTTP/1.1 200"), "{received}");
    assert!(received.contains("alive"), "{received}");
    assert!(
        took >= TIMEOUT - Duration::from_millis(100),
        "closed after {took:?}, before the timeout"
    );
    still_answers(&service).await;
}

#[tokio::test]
async fn a_head_that_arrives_in_parts_within_the_timeout_is_answered() {
    let service = service().await;
    let mut stream = connected(&service, b"GET /healthz HTTP/1.1\r\n").await;
    tokio::time::sleep(TIMEOUT / 4).await;
    stream
        .write_all(b"Host: test\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let (received, _) = read_until_closed(&mut stream).await;
    assert!(received.starts_with("HTTP/1.1 200"), "{received}");
    assert!(received.contains("alive"), "{received}");
}
