//! Passing a public request on to the service that owns it: only the headers that service
//! needs go along (the caller's token, content type, idempotency key), plus the trace
//! context, request id and the client's address, which the kit's client and this module add.
//! The service's answer comes back as it is; an unreachable service is a 503 problem naming it.

use std::net::IpAddr;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dozen_kit::Problem;
use dozen_kit::http::client::Upstream;

/// Request headers passed on.
const FORWARDED_REQUEST_HEADERS: [HeaderName; 4] = [
    header::AUTHORIZATION,
    header::CONTENT_TYPE,
    header::ACCEPT,
    HeaderName::from_static("idempotency-key"),
];

/// Answer headers passed back.
const FORWARDED_ANSWER_HEADERS: [HeaderName; 3] = [
    header::CONTENT_TYPE,
    header::RETRY_AFTER,
    header::WWW_AUTHENTICATE,
];

/// A public request, as the gateway passes it on.
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    /// The method.
    pub method: Method,
    /// The path on the service, with its query.
    pub path: String,
    /// The public request's headers.
    pub headers: &'a HeaderMap,
    /// Who called, as resolved by [`crate::client_address`].
    pub client: Option<IpAddr>,
    /// The body.
    pub body: Bytes,
}

/// Send `outgoing` to `upstream` and return its answer.
pub async fn forward(upstream: &Upstream, outgoing: Outgoing<'_>) -> Response {
    let mut request = upstream
        .request(outgoing.method, &outgoing.path)
        .body(outgoing.body);
    for name in FORWARDED_REQUEST_HEADERS {
        if let Some(value) = outgoing.headers.get(&name) {
            request = request.header(name, value);
        }
    }
    if let Some(client) = outgoing.client {
        request = request.header("x-forwarded-for", client.to_string());
    }
    match request.send().await {
        Ok(answer) => {
            let status = answer.status();
            let mut headers = HeaderMap::new();
            for name in FORWARDED_ANSWER_HEADERS {
                if let Some(value) = answer.headers().get(&name) {
                    headers.insert(name, value.clone());
                }
            }
            match answer.bytes().await {
                Ok(body) => (status, headers, Body::from(body)).into_response(),
                Err(error) => unavailable(upstream, &error),
            }
        }
        Err(error) => unavailable(upstream, &error),
    }
}

fn unavailable(upstream: &Upstream, error: &reqwest::Error) -> Response {
    tracing::warn!(upstream = upstream.name(), error = %error, "upstream call failed");
    let status = if error.is_timeout() {
        StatusCode::GATEWAY_TIMEOUT
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut response = Problem::new(
        status,
        format!(
            "the {} service is unavailable; try again shortly",
            upstream.name()
        ),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
    response
}
