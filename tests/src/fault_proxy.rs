//! A proxy in front of a real service that can be told to lose the answers to some requests,
//! as a crash or a network cut after the service acted would: the request reaches the service,
//! and the caller gets 502 instead of its answer; to add latency to every request, as a slow
//! network does; to reset every connection (TCP RST), as a crashed peer or a middlebox dropping
//! its state does; or to answer nothing at all, as a black hole (a dropped route, a firewall
//! dropping packets) does. Everything else passes through unchanged.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Which requests lose their answers.
#[derive(Debug, Clone, Default)]
struct Fault {
    lose_answers_to: Option<(Method, String)>,
    latency: std::time::Duration,
    reset: bool,
    black_hole: bool,
}

#[derive(Debug, Clone)]
struct Link {
    upstream: String,
    client: reqwest::Client,
    fault: Arc<Mutex<Fault>>,
}

/// A running proxy; stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    url: String,
    fault: Arc<Mutex<Fault>>,
    server: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Start a proxy on a free port passing every request on to `upstream` (a base URL).
    pub async fn start(upstream: &str) -> Self {
        let fault = Arc::new(Mutex::new(Fault::default()));
        let link = Link {
            upstream: upstream.trim_end_matches('/').to_owned(),
            client: reqwest::Client::new(),
            fault: fault.clone(),
        };
        let listener = ResettingListener {
            inner: tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("a free port"),
            fault: fault.clone(),
        };
        let url = format!("http://{}", listener.inner.local_addr().expect("bound"));
        let app = axum::Router::new().fallback(pass_on).with_state(link);
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("the proxy serves");
        });
        Self { url, fault, server }
    }

    /// The proxy's base URL, to give the caller in place of the service's.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// From now on, `method` requests whose path starts with `path_prefix` reach the service
    /// but their callers get 502.
    pub fn lose_answers_to(&self, method: Method, path_prefix: &str) {
        self.fault.lock().expect("fault").lose_answers_to = Some((method, path_prefix.to_owned()));
    }

    /// From now on, every request waits `latency` before it is passed on.
    pub fn add_latency(&self, latency: std::time::Duration) {
        self.fault.lock().expect("fault").latency = latency;
    }

    /// From now on, every connection is reset (RST) as soon as data arrives on it: new ones
    /// once accepted, kept-alive ones at their next request.
    pub fn reset_connections(&self) {
        self.fault.lock().expect("fault").reset = true;
    }

    /// From now on, no request is passed on or answered: each waits until its caller gives up.
    pub fn black_hole(&self) {
        self.fault.lock().expect("fault").black_hole = true;
    }

    /// From now on, every answer reaches its caller.
    pub fn heal(&self) {
        *self.fault.lock().expect("fault") = Fault::default();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The proxy's listener: every connection it accepts can be reset.
struct ResettingListener {
    inner: tokio::net::TcpListener,
    fault: Arc<Mutex<Fault>>,
}

impl axum::serve::Listener for ResettingListener {
    type Io = Resettable;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            // A failed accept (out of descriptors, an aborted handshake) only skips that one.
            if let Ok((stream, address)) = self.inner.accept().await {
                let fault = self.fault.clone();
                return (Resettable { stream, fault }, address);
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// An accepted connection that, while the fault says so, fails its next read or write and is
/// closed with `SO_LINGER` 0: the peer gets a reset, not an orderly close.
struct Resettable {
    stream: tokio::net::TcpStream,
    fault: Arc<Mutex<Fault>>,
}

impl Resettable {
    fn reset_if_told(&self) -> io::Result<()> {
        if self.fault.lock().expect("fault").reset {
            self.stream.set_zero_linger()?;
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        Ok(())
    }
}

impl tokio::io::AsyncRead for Resettable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Err(error) = self.reset_if_told() {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Resettable {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if let Err(error) = self.reset_if_told() {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

async fn pass_on(State(link): State<Link>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let fault = link.fault.lock().expect("fault").clone();
    if fault.black_hole {
        return std::future::pending().await;
    }
    tokio::time::sleep(fault.latency).await;
    let lose_answer = match &fault.lose_answers_to {
        Some((method, prefix)) => *method == parts.method && path.starts_with(prefix.as_str()),
        None => false,
    };
    let body: Bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .expect("the request body");
    let mut headers = parts.headers;
    headers.remove(header::HOST);
    let answer = link
        .client
        .request(parts.method, format!("{}{path}", link.upstream))
        .headers(headers)
        .body(body)
        .send()
        .await;
    let answer = match answer {
        Ok(answer) if !lose_answer => answer,
        _ => return StatusCode::BAD_GATEWAY.into_response(),
    };
    let status = answer.status();
    let mut headers = answer.headers().clone();
    for hop_by_hop in [header::CONNECTION, header::TRANSFER_ENCODING] {
        headers.remove(hop_by_hop);
    }
    let body = answer.bytes().await.unwrap_or_default();
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}
