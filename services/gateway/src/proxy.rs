//! Passing a public request on to the service that owns it: only the headers that service
//! needs go along (the caller's token, content type, idempotency key, user agent; cookies only
//! where [`Outgoing::cookies`] says so), plus the trace
//! context, request id and the client's address, which the kit's client and this module add.
//! The service's answer comes back as it is; an unreachable service (or one whose circuit
//! breaker is open) is a 503 problem naming it, with `Retry-After`; one that does not answer in
//! time is a 504.

use std::net::IpAddr;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dozen_kit::Problem;
use dozen_kit::http::client::{CallError, Upstream};

/// Request headers passed on.
const FORWARDED_REQUEST_HEADERS: [HeaderName; 4] = [
    header::AUTHORIZATION,
    header::CONTENT_TYPE,
    header::ACCEPT,
    HeaderName::from_static("idempotency-key"),
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Answer headers passed back. Only the session routes' service sets a cookie (the refresh
/// token's).
const FORWARDED_ANSWER_HEADERS: [HeaderName; 5] = [
    header::CONTENT_TYPE,
    header::RETRY_AFTER,
    header::WWW_AUTHENTICATE,
    header::CACHE_CONTROL,
    header::SET_COOKIE,
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
    /// Whether the browser's cookies go along: only to the session routes, the one place a
    /// cookie (the refresh token) is meant for.
    pub cookies: bool,
}

/// Send `outgoing` to `upstream` and return its answer.
pub async fn forward(upstream: &Upstream, outgoing: Outgoing<'_>) -> Response {
    // A client at the edge waits one attempt's time at most, retries included: retrying after
    // a timeout would make it wait several.
    let mut request = upstream
        .call(outgoing.method, &outgoing.path)
        .timeout(upstream.attempt_timeout())
        .body(outgoing.body);
    for name in FORWARDED_REQUEST_HEADERS {
        if let Some(value) = outgoing.headers.get(&name) {
            request = request.header(name, value);
        }
    }
    // The client's agent, in place of the gateway's own: the sessions list shows it.
    if let Some(agent) = outgoing.headers.get(header::USER_AGENT) {
        request = request.replace_header(header::USER_AGENT, agent.clone());
    }
    if outgoing.cookies {
        for value in outgoing.headers.get_all(header::COOKIE) {
            request = request.header(header::COOKIE, value);
        }
    }
    if let Some(client) = outgoing.client {
        request = request.header(X_FORWARDED_FOR, forwarded_for(client));
    }
    match request.send().await {
        Ok(answer) => {
            let status = answer.status();
            // Room for these, the request id and the edge's security headers: the answer is
            // built around this map, which then never grows.
            let mut headers = HeaderMap::with_capacity(12);
            for name in FORWARDED_ANSWER_HEADERS {
                if let Some(value) = answer.headers().get(&name) {
                    headers.insert(name, value.clone());
                }
            }
            match answer.bytes().await {
                Ok(body) => {
                    let mut response = Response::new(Body::from(body));
                    *response.status_mut() = status;
                    *response.headers_mut() = headers;
                    response
                }
                Err(error) => {
                    tracing::warn!(upstream = upstream.name(), error = %error, "reading an answer failed");
                    unavailable(
                        upstream.name(),
                        StatusCode::SERVICE_UNAVAILABLE,
                        Duration::from_secs(1),
                    )
                }
            }
        }
        Err(error) => {
            // The breaker logged its opening once: each call it refuses is not news.
            if matches!(error, CallError::Rejected { .. }) {
                tracing::debug!(upstream = upstream.name(), error = %error, "upstream call refused");
            } else {
                tracing::warn!(upstream = upstream.name(), error = %error, "upstream call failed");
            }
            let status = if error.is_timeout() {
                StatusCode::GATEWAY_TIMEOUT
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            unavailable(upstream.name(), status, error.retry_after())
        }
    }
}

/// `client` as an `x-forwarded-for` value. An IPv4 address is written digit by digit:
/// through `Display` it cost more instructions than building the rest of the call.
fn forwarded_for(client: IpAddr) -> String {
    let IpAddr::V4(address) = client else {
        return client.to_string();
    };
    let mut text = String::with_capacity(15);
    for (index, octet) in address.octets().into_iter().enumerate() {
        if index > 0 {
            text.push('.');
        }
        if octet >= 100 {
            text.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            text.push(char::from(b'0' + octet / 10 % 10));
        }
        text.push(char::from(b'0' + octet % 10));
    }
    text
}

/// The problem answered when `service` could not be asked: `status`, and `Retry-After` in
/// whole seconds (at least one).
fn unavailable(service: &str, status: StatusCode, retry_after: Duration) -> Response {
    let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    let mut response = Problem::new(
        status,
        format!("the {service} service is unavailable; try again shortly"),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forwarded_address_reads_as_display_writes_it() {
        for address in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.100.255",
            "203.0.113.9",
            "2001:db8::7",
        ] {
            let address: IpAddr = address.parse().expect("an address");
            assert_eq!(forwarded_for(address), address.to_string());
        }
    }
}
