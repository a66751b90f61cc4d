//! The kit's client keeps its connections to an upstream: calls one after another share one
//! connection, calls at once each get their own, and a connection the upstream closed while it
//! was kept costs no call anything, not even a POST, which is never retried.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dozen_kit::http::client::HttpClient;
use http::Method;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// A plain HTTP/1.1 upstream on 127.0.0.1 that answers each request `200 ok` after `delay`,
/// counts the connections it accepted, and closes each connection after `answers_per_connection`
/// answers (without saying so in the answer, as a server whose idle timeout ran out would).
struct Upstream {
    port: u16,
    connections: Arc<AtomicUsize>,
}

impl Upstream {
    async fn start(answers_per_connection: usize, delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = connections.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(answer(stream, answers_per_connection, delay));
            }
        });
        Self { port, connections }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn answer(stream: tokio::net::TcpStream, answers: usize, delay: Duration) {
    let mut stream = BufReader::new(stream);
    for _ in 0..answers {
        let mut content_length = 0;
        loop {
            let mut line = String::new();
            if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                content_length = value.trim().parse().expect("a length");
            }
        }
        let mut body = vec![0; content_length];
        stream.read_exact(&mut body).await.expect("the body");
        tokio::time::sleep(delay).await;
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        if stream.get_mut().write_all(answer).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn calls_one_after_another_share_one_connection() {
    let upstream = Upstream::start(usize::MAX, Duration::ZERO).await;
    let peer = HttpClient::new(Duration::from_secs(5)).upstream("peer", upstream.url());
    for _ in 0..20 {
        let answer = peer.call(Method::GET, "/").send().await.expect("an answer");
        assert_eq!(answer.bytes().await.expect("the body"), "ok");
    }
    assert_eq!(upstream.connections(), 1);
}

#[tokio::test]
async fn calls_at_once_each_get_a_connection_and_keep_it() {
    let upstream = Upstream::start(usize::MAX, Duration::from_millis(50)).await;
    let peer = HttpClient::new(Duration::from_secs(5)).upstream("peer", upstream.url());
    for _ in 0..3 {
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let peer = peer.clone();
            calls.spawn(async move {
                let answer = peer.call(Method::GET, "/").send().await.expect("an answer");
                answer.bytes().await.expect("the body")
            });
        }
        for body in calls.join_all().await {
            assert_eq!(body, "ok");
        }
    }
    assert_eq!(
        upstream.connections(),
        4,
        "four at once, then the same four again"
    );
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_kept_costs_no_call() {
    let upstream = Upstream::start(1, Duration::ZERO).await;
    let peer = HttpClient::new(Duration::from_secs(5)).upstream("peer", upstream.url());
    for _ in 0..5 {
        let answer = peer
            .call(Method::POST, "/")
            .body("once")
            .send()
            .await
            .expect("an answer on a new connection");
        assert_eq!(answer.bytes().await.expect("the body"), "ok");
        // The upstream closes the connection after its answer; the client sees it while idle.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(upstream.connections(), 5);
}
