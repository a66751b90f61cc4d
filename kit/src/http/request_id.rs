//! The `x-request-id` of the request being handled, so outgoing calls carry it on.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

/// The header that carries a request id.
pub const HEADER: &str = "x-request-id";

tokio::task_local! {
    static CURRENT: HeaderValue;
}

/// The id of the request this task is handling, if any.
pub fn current() -> Option<HeaderValue> {
    CURRENT.try_with(HeaderValue::clone).ok()
}

/// Middleware: make the request's id (set by `SetRequestIdLayer` further out) current while
/// its handler runs.
pub async fn scope(request: Request, next: Next) -> Response {
    match request.headers().get(HEADER).cloned() {
        Some(id) => CURRENT.scope(id, next.run(request)).await,
        None => next.run(request).await,
    }
}
