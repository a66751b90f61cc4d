//! What the server does around every request, whatever its handler does, in one layer and one
//! future per request:
//!
//! - a request id: the caller's `x-request-id`, or a new UUID; current while the handler runs
//!   (so outgoing calls carry it on) and echoed on the answer;
//! - the caller's trace (`traceparent`) continued, current while the request is handled (see
//!   [`trace_context`]), and a span, entered whenever the handler runs, when spans are exported
//!   or logged;
//! - a handler's panic answered as a 500 problem, the server serving on;
//! - every 4xx and 5xx as problem+json: an answer made elsewhere (axum's rejections, the body
//!   limit, the timeout, 405) keeps its status and headers, and its text becomes the detail;
//! - a 413 with `Connection: close`;
//! - one log line per answer, and its count and time in `/metrics`.
//!
//! One layer instead of a stack of them: axum clones and boxes every layer's service for every
//! request, and each layer's future is one more allocation.

use std::any::Any;
use std::convert::Infallible;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use opentelemetry::trace::SpanContext;
use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;
use tower::{Layer, Service};
use tracing::Span;

use crate::http::request_id;
use crate::metrics;
use crate::problem::{self, Problem};
use crate::trace_context::{self, Handling};

/// The layer: [`PerRequest`] around the service's routes.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestLayer;

impl<S> Layer<S> for RequestLayer {
    type Service = PerRequest<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PerRequest { inner }
    }
}

/// The service: see the module's documentation.
#[derive(Debug, Clone)]
pub struct PerRequest<S> {
    inner: S,
}

impl<S> Service<Request> for PerRequest<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = TaskLocalFuture<SpanContext, PerRequestFuture<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let started = Instant::now();
        let id = request
            .headers()
            .get(request_id::HEADER)
            .cloned()
            .unwrap_or_else(request_id::new);
        let method = request.method().clone();
        let route = request.extensions().get::<MatchedPath>().cloned();
        let handling = Handling::start(
            request_span(&request, route.as_ref(), &id),
            trace_context::extract_from_headers(request.headers()),
        );
        let state = handling.in_scope(
            || match catch_unwind(AssertUnwindSafe(|| self.inner.call(request))) {
                Ok(future) => State::Handling {
                    future: request_id::scope(id.clone(), future),
                },
                Err(panic) => State::Answered {
                    answer: Some(panic_answer(panic)),
                },
            },
        );
        trace_context::scope(
            handling.context().clone(),
            PerRequestFuture {
                state,
                handling,
                id: Some(id),
                method,
                route,
                started,
            },
        )
    }
}

fn request_span(request: &Request, route: Option<&MatchedPath>, id: &HeaderValue) -> Span {
    tracing::info_span!(
        "request",
        method = %request.method(),
        route = route.map_or("unmatched", MatchedPath::as_str),
        request_id = id.to_str().unwrap_or_default(),
    )
}

pin_project! {
    /// One request's future: the handler's, then, for an error answer that is not a problem
    /// yet, the reading of its text.
    pub struct PerRequestFuture<F> {
        #[pin]
        state: State<F>,
        handling: Handling,
        id: Option<HeaderValue>,
        method: Method,
        route: Option<MatchedPath>,
        started: Instant,
    }
}

type Rewrite = Pin<Box<dyn Future<Output = Response> + Send>>;

pin_project! {
    #[project = StateProjection]
    enum State<F> {
        Handling { #[pin] future: TaskLocalFuture<HeaderValue, F> },
        Rewriting { future: Rewrite },
        Answered { answer: Option<Response> },
    }
}

impl<F> Future for PerRequestFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let _entered = this.handling.span().enter();
        let mut answer = loop {
            let answer = match this.state.as_mut().project() {
                StateProjection::Handling { future } => {
                    match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
                        Ok(Poll::Pending) => return Poll::Pending,
                        Ok(Poll::Ready(Ok(answer))) => answer,
                        Err(panic) => panic_answer(panic),
                    }
                }
                StateProjection::Rewriting { future } => ready!(future.as_mut().poll(cx)),
                StateProjection::Answered { answer } => match answer.take() {
                    Some(answer) => answer,
                    None => panic!("a request's future was polled after it answered"),
                },
            };
            if needs_problem_body(&answer) {
                this.state.set(State::Rewriting {
                    future: Box::pin(problem_body(answer)),
                });
                continue;
            }
            this.state.set(State::Answered { answer: None });
            break answer;
        };
        let status = answer.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            // The body was not read to its end, so the connection cannot carry another request;
            // a client that reused it would find it closed under its next request.
            answer
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(id) = this.id.take() {
            answer.headers_mut().insert(request_id::HEADER, id);
        }
        let took = this.started.elapsed();
        let route = this.route.as_ref().map_or("unmatched", MatchedPath::as_str);
        metrics::record_http(this.method, route, status, took, this.handling.context());
        this.handling
            .set_attribute("http.response.status_code", i64::from(status.as_u16()));
        let latency_ms = took.as_secs_f64() * 1000.0;
        if status.is_server_error() {
            tracing::error!(status = status.as_u16(), latency_ms, "answered");
        } else {
            tracing::info!(status = status.as_u16(), latency_ms, "answered");
        }
        Poll::Ready(Ok(answer))
    }
}

fn panic_answer(panic: Box<dyn Any + Send>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message");
    tracing::error!(panic = message, "the handler panicked");
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the request could not be completed",
    )
    .into_response()
}

fn needs_problem_body(answer: &Response) -> bool {
    let status = answer.status();
    (status.is_client_error() || status.is_server_error())
        && !answer
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|value| value.as_bytes().starts_with(problem::CONTENT_TYPE.as_bytes()))
}

/// The answer as a problem with the same status and headers, its text as the detail.
async fn problem_body(answer: Response) -> Response {
    let status = answer.status();
    let (parts, body) = answer.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let detail = match String::from_utf8_lossy(&text).trim() {
        "" => status.canonical_reason().unwrap_or("error").to_owned(),
        text => text.to_owned(),
    };
    let mut problem = Problem::new(status, detail).into_response();
    // Keep headers such as Allow and Retry-After.
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            problem.headers_mut().insert(name.clone(), value.clone());
        }
    }
    problem
}
