//! The `x-request-id` of the request being handled, so outgoing calls carry it on.

use std::future::Future;

use axum::http::{HeaderName, HeaderValue};
use tokio::task::futures::TaskLocalFuture;

/// The header that carries a request id.
pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

tokio::task_local! {
    static CURRENT: HeaderValue;
}

/// The id of the request this task is handling, if any.
pub fn current() -> Option<HeaderValue> {
    CURRENT.try_with(HeaderValue::clone).ok()
}

/// Run `future` with `id` as the current request id.
pub fn scope<F: Future>(id: HeaderValue, future: F) -> TaskLocalFuture<HeaderValue, F> {
    CURRENT.scope(id, future)
}

/// A new id, for a request that came without one: a random UUID.
pub fn new() -> HeaderValue {
    let mut text = uuid::Uuid::encode_buffer();
    let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
    HeaderValue::from_str(text).expect("a UUID is a valid header value")
}
