//! What every gateway answer tells the browser: the security headers, and CORS for the origins
//! allowed by `CORS_ALLOWED_ORIGINS` (none by default: the web UI is served from the gateway
//! itself, so it needs none).
//!
//! The content security policy allows scripts, styles, images, fonts and fetches from the
//! gateway's own origin only: no inline script or style, no `eval`, no plugins, no framing.
//! The web UI (static files under `/`) is written to work within it.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::response::Response;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The content security policy of every answer.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; base-uri 'none'; object-src 'none'; \
     frame-ancestors 'none'; form-action 'self'";

/// Browsers that once reached the gateway over HTTPS use nothing else for two years (ignored
/// over plain HTTP, as on a laptop).
const STRICT_TRANSPORT_SECURITY: &str = "max-age=63072000; includeSubDomains";

/// The security headers, each set on every answer (replacing any from a service). Values made
/// at compile time: made per answer, each would be checked byte by byte again.
pub const SECURITY_HEADERS: [(HeaderName, HeaderValue); 6] = [
    (
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    ),
    (
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static(STRICT_TRANSPORT_SECURITY),
    ),
    (
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    ),
    (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
    (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    (
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    ),
];

/// The web origins allowed to call the API from a browser (`CORS_ALLOWED_ORIGINS`).
#[derive(Debug, Clone, Default)]
pub struct AllowedOrigins(Vec<HeaderValue>);

impl AllowedOrigins {
    /// Parse a comma-separated list of origins such as `https://app.example.com`; an empty
    /// list turns CORS off.
    pub fn parse(text: &str) -> Result<Self, String> {
        text.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(parse_origin)
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }
}

/// One origin: scheme, host and optional port, nothing else; kept as browsers send it
/// (lower case, no trailing slash).
fn parse_origin(text: &str) -> Result<HeaderValue, String> {
    let refused = || format!("'{text}' is not an origin such as https://app.example.com");
    let uri: axum::http::Uri = text.parse().map_err(|_| refused())?;
    let scheme = uri.scheme_str().ok_or_else(refused)?;
    let authority = uri.authority().ok_or_else(refused)?;
    let bare = matches!(uri.path(), "" | "/") && uri.query().is_none();
    if !(matches!(scheme, "http" | "https") && bare) || authority.as_str().contains('@') {
        return Err(refused());
    }
    let origin = format!("{scheme}://{}", authority.as_str().to_ascii_lowercase());
    HeaderValue::from_str(&origin).map_err(|_| refused())
}

/// CORS for `origins`; none when there are none.
pub fn cors(origins: &AllowedOrigins) -> Option<CorsLayer> {
    (!origins.0.is_empty()).then(|| {
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins.0.iter().cloned()))
            .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("idempotency-key"),
            ])
            .expose_headers([
                header::RETRY_AFTER,
                header::WWW_AUTHENTICATE,
                HeaderName::from_static("x-request-id"),
            ])
            .max_age(Duration::from_secs(600))
    })
}

/// The security headers on `response`, replacing any a service set.
pub fn with_security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        headers.insert(name, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_kept_as_browsers_send_them() {
        let origins =
            AllowedOrigins::parse("https://App.Example.com/, http://localhost:3000").expect("two origins");
        assert_eq!(origins.0, ["https://app.example.com", "http://localhost:3000"]);
        assert!(AllowedOrigins::parse("").expect("none").0.is_empty());
    }

    #[test]
    fn anything_but_an_origin_is_refused_by_name() {
        for bad in [
            "*",
            "app.example.com",
            "https://app.example.com/path",
            "ftp://x.org",
            "https://u@x.org",
        ] {
            let error = AllowedOrigins::parse(&format!("https://ok.org,{bad}")).expect_err(bad);
            assert!(error.contains(&format!("'{bad}'")), "{error}");
        }
    }
}
