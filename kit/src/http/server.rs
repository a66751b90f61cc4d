//! The HTTP server every service runs: the service's routes plus `/healthz`, `/readyz`,
//! `/metrics` and `/openapi.json`, behind one stack of middleware (request id, a span per
//! request continuing the caller's trace, metrics, panic and timeout handling, body limit, and
//! problem+json bodies on every error), served by one thread or several ([`serve`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceBuilder};
use tower_http::timeout::TimeoutLayer;
use utoipa_axum::router::OpenApiRouter;

use crate::config::ServerSettings;
use crate::http::middleware::RequestLayer;
use crate::lifecycle::Lifecycle;
use crate::metrics;
use crate::problem::Problem;

type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type Check = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

/// What `/readyz` checks besides draining: each dependency the service cannot work without.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(&'static str, Check)>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.checks.iter().map(|(name, _)| *name).collect();
        f.debug_struct("Readiness").field("checks", &names).finish()
    }
}

impl Readiness {
    /// Add a named check; it fails with a reason.
    pub fn add<F, Fut>(&mut self, name: &'static str, check: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks.push((name, Arc::new(move || Box::pin(check()))));
    }

    async fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        for (name, check) in &self.checks {
            if let Err(reason) = check().await {
                failures.push(format!("{name}: {reason}"));
            }
        }
        failures
    }
}

/// Everything the ops endpoints need.
#[derive(Debug, Clone)]
struct Ops {
    lifecycle: Lifecycle,
    readiness: Readiness,
    openapi: Arc<String>,
}

/// Assemble the service's router: its API, the ops endpoints and the middleware stack.
pub fn router(
    service: &'static str,
    api: OpenApiRouter,
    readiness: Readiness,
    lifecycle: Lifecycle,
    settings: &ServerSettings,
) -> Router {
    let (api, mut openapi) = api.split_for_parts();
    openapi.info = utoipa::openapi::InfoBuilder::new()
        .title(format!("dozen {service}"))
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(format!("The HTTP API of dozen's {service} service.")))
        .build();
    let ops = Ops {
        lifecycle: lifecycle.clone(),
        readiness,
        openapi: Arc::new(openapi.to_pretty_json().unwrap_or_else(|_| "{}".to_owned())),
    };
    let ops_routes = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi_json))
        .with_state(ops);

    // One stack, applied once: axum boxes (and clones for every request) each `layer` call
    // separately. The first layer here is the outermost.
    let middleware = ServiceBuilder::new()
        .layer(RequestLayer)
        .layer(axum::middleware::map_response_with_state(
            lifecycle,
            close_while_draining,
        ))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            settings.request_timeout,
        ))
        .layer(DefaultBodyLimit::max(settings.body_limit));
    api.merge(ops_routes)
        .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "no such route") })
        .layer(middleware)
}

/// While the service drains, every answer tells its client to close the connection: a client
/// that reused it after the answer could otherwise send its next request just as the service
/// closes it, and see the connection reset instead of an answer. Told so, it opens a new one,
/// which another instance accepts.
async fn close_while_draining(
    axum::extract::State(lifecycle): axum::extract::State<Lifecycle>,
    mut response: Response,
) -> Response {
    if lifecycle.is_draining() {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "alive" }))
}

async fn readyz(axum::extract::State(ops): axum::extract::State<Ops>) -> Response {
    if ops.lifecycle.is_draining() {
        return Problem::new(StatusCode::SERVICE_UNAVAILABLE, "draining: shutting down").into_response();
    }
    let failures = ops.readiness.failures().await;
    if failures.is_empty() {
        axum::Json(serde_json::json!({ "status": "ready" })).into_response()
    } else {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, failures.join("; ")).into_response()
    }
}

async fn metrics_text(headers: HeaderMap) -> Response {
    let format = metrics::Format::negotiate(headers.get(header::ACCEPT));
    let mut response = metrics::render(format).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    headers.insert(header::VARY, HeaderValue::from_static("accept"));
    response
}

async fn openapi_json(axum::extract::State(ops): axum::extract::State<Ops>) -> Response {
    let mut response = ops.openapi.as_str().to_owned().into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The HTTP server running: on this thread's runtime, and on threads of their own.
#[derive(Debug)]
pub struct Serving {
    /// Each serving thread's outcome, this thread's first.
    outcomes: Vec<oneshot::Receiver<std::io::Result<()>>>,
    /// Tells the extra threads that the process is done with their runtimes.
    done: CancellationToken,
}

/// Serve `router` on `listener` until `stopping` is cancelled, then let in-flight requests
/// finish. With `threads` above one, this thread's runtime serves and so do `threads - 1`
/// more threads, each with a single-threaded runtime of its own accepting from the same
/// socket: a connection stays on the thread that accepted it, so none of its requests waits
/// for another thread to wake, as they do in a work-stealing runtime, where the gateway spent
/// far more CPU per proxied request (BENCHMARKS.md).
///
/// Whatever a request opened on an extra thread (a pooled connection to a peer or to the
/// database) stays registered with that thread's runtime, so the threads keep running their
/// runtimes after the server stops, until [`Serving::finish`].
pub fn serve(
    listener: TcpListener,
    router: Router,
    threads: usize,
    header_read_timeout: Duration,
    stopping: CancellationToken,
) -> std::io::Result<Serving> {
    let done = CancellationToken::new();
    let mut outcomes = Vec::with_capacity(threads);
    let mut extra_listeners = Vec::with_capacity(threads.saturating_sub(1));
    let listener = if threads > 1 {
        let listener = listener.into_std()?;
        for _ in 1..threads {
            extra_listeners.push(listener.try_clone()?);
        }
        TcpListener::from_std(listener)?
    } else {
        listener
    };
    for (index, listener) in extra_listeners.into_iter().enumerate() {
        let (outcome, outcome_receiver) = oneshot::channel();
        let (router, stopping, done) = (router.clone(), stopping.clone(), done.clone());
        std::thread::Builder::new()
            .name(format!("http-{}", index + 1))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = outcome.send(Err(error));
                        return;
                    }
                };
                let served = runtime.block_on(async move {
                    serve_connections(
                        TcpListener::from_std(listener)?,
                        router,
                        header_read_timeout,
                        stopping,
                    )
                    .await
                });
                let _ = outcome.send(served);
                runtime.block_on(done.cancelled_owned());
            })?;
        outcomes.push(outcome_receiver);
    }
    let (outcome, outcome_receiver) = oneshot::channel();
    tokio::spawn(async move {
        let _ = outcome.send(serve_connections(listener, router, header_read_timeout, stopping).await);
    });
    outcomes.insert(0, outcome_receiver);
    Ok(Serving { outcomes, done })
}

impl Serving {
    /// Wait until every thread has stopped serving; the first failure, if any.
    pub async fn stopped(&mut self) -> std::io::Result<()> {
        let mut outcome = Ok(());
        for receiver in &mut self.outcomes {
            let served = receiver.await.unwrap_or_else(|_| {
                Err(std::io::Error::other(
                    "a serving thread stopped without an outcome",
                ))
            });
            if outcome.is_ok() {
                outcome = served;
            }
        }
        outcome
    }

    /// Let the extra threads end: nothing will use what they opened any more.
    pub fn finish(self) {
        self.done.cancel();
    }
}

/// One thread's accept loop: each connection served by hyper's HTTP/1 (keep-alive, no
/// protocol upgrades), the client's address given to handlers as `ConnectInfo` (login
/// throttling, rate limits). A connection whose next request's head has not all arrived
/// within `header_read_timeout` (`HEADER_READ_TIMEOUT`) is closed. Once `stopping` is
/// cancelled, nothing more is accepted, and each open connection finishes the request it is
/// serving, then closes.
///
/// hyper's own connection, not `axum::serve`: that serves through hyper-util's protocol
/// detection and upgrade support (an extension on every request) and a per-connection service
/// made to add the address, none of which any service here uses, and all of which cost every
/// request something (BENCHMARKS.md).
async fn serve_connections(
    listener: TcpListener,
    router: Router,
    header_read_timeout: Duration,
    stopping: CancellationToken,
) -> std::io::Result<()> {
    let connections = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    loop {
        let (stream, client) = tokio::select! {
            () = stopping.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    wait_after_accept_error(&error).await;
                    continue;
                }
            },
        };
        // Answers go out whole, at once: none waits for an acknowledgement of the one before.
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(client));
            router.clone().call(request.map(LingeringBody::new))
        });
        let connection = connections.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %error, "a connection ended on an error");
            }
        });
    }
    drop(listener);
    connections.shutdown().await;
    Ok(())
}

/// How much of a request body left unread (a 413, say) is still read and thrown away, and for
/// how long at most, before the connection closes.
const LINGER_BYTES: usize = 8 * 1024 * 1024;
const LINGER_TIME: Duration = Duration::from_secs(5);

/// A request body that, dropped before its end, goes on being read (and thrown away) in the
/// background, up to [`LINGER_BYTES`] within [`LINGER_TIME`], as nginx's lingering close does.
/// Closing a connection with unread data makes the kernel reset it, and a client still
/// sending its body would then see a broken pipe instead of the response (a 413) waiting for
/// it; read to its end, the connection closes cleanly after the response.
struct LingeringBody(Option<Incoming>);

impl LingeringBody {
    fn new(body: Incoming) -> Self {
        Self(Some(body))
    }
}

impl Body for LingeringBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.0.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.0
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Incoming::size_hint)
    }
}

impl Drop for LingeringBody {
    fn drop(&mut self) {
        let Some(body) = self.0.take() else { return };
        if body.is_end_stream() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(drain(body));
        }
    }
}

/// Read `body` to its end and throw it away, within the lingering bounds; past them it is
/// dropped, and the connection closes.
async fn drain(mut body: Incoming) {
    let mut left = LINGER_BYTES;
    let _ = tokio::time::timeout(LINGER_TIME, async {
        while let Some(Ok(frame)) = body.frame().await {
            let read = frame.data_ref().map_or(0, Bytes::len);
            match left.checked_sub(read) {
                Some(rest) => left = rest,
                None => return,
            }
        }
    })
    .await;
}

/// After a failed accept: nothing to wait for when the failure was the client's (it reset or
/// aborted the connection); otherwise (out of file descriptors, say) a second, so the loop
/// does not spin while the process has none to spare.
async fn wait_after_accept_error(error: &std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %error, "cannot accept a connection");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
