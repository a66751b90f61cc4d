//! A proxy in front of a real service that can be told to lose the answers to some requests,
//! as a crash or a network cut after the service acted would: the request reaches the service,
//! and the caller gets 502 instead of its answer; to add latency to every request, as a slow
//! network does; or to answer nothing at all, as a black hole (a dropped route, a firewall
//! dropping packets) does. Everything else passes through unchanged.

use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Which requests lose their answers.
#[derive(Debug, Clone, Default)]
struct Fault {
    lose_answers_to: Option<(Method, String)>,
    latency: std::time::Duration,
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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let url = format!("http://{}", listener.local_addr().expect("bound"));
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
