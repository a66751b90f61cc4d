//! The one way a service calls another: a shared connection pool with timeouts, and every
//! request carrying the caller's trace context and request id.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use reqwest::Method;

use crate::http::request_id;
use crate::trace_context;

/// A pooled HTTP client; cheap to clone.
///
/// The connection pool is built on the first call, not at start-up: building it loads the
/// system's TLS roots, which costs milliseconds and megabytes that a service which calls no
/// one (or not yet) should not pay before it is ready.
#[derive(Debug, Clone)]
pub struct HttpClient {
    timeout: Duration,
    client: Arc<OnceLock<reqwest::Client>>,
}

impl HttpClient {
    /// A client whose every call ends after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            client: Arc::default(),
        }
    }

    fn client(&self) -> &reqwest::Client {
        self.client.get_or_init(|| {
            reqwest::Client::builder()
                .timeout(self.timeout)
                .connect_timeout(self.timeout.min(Duration::from_secs(2)))
                .pool_idle_timeout(Duration::from_secs(30))
                .user_agent(concat!("dozen/", env!("CARGO_PKG_VERSION")))
                .build()
                .unwrap_or_else(|error| {
                    // Only a TLS back end that cannot start fails here; plain HTTP still works.
                    tracing::error!(error = %error, "HTTP client set-up failed; using the defaults");
                    reqwest::Client::new()
                })
        })
    }

    /// A named peer at `base_url` (from its `<PEER>_URL` setting).
    pub fn upstream(&self, name: &'static str, base_url: impl Into<String>) -> Upstream {
        Upstream {
            name,
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            http: self.clone(),
        }
    }
}

/// Another service this one calls.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// The peer's service name, for logs and metrics.
    name: &'static str,
    /// Its base URL, without a trailing slash.
    base_url: String,
    http: HttpClient,
}

impl Upstream {
    /// The peer's service name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The peer's base URL.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// A request to `path` (starting with `/`) carrying trace context and request id.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut headers = http::HeaderMap::new();
        trace_context::inject_into_headers(&mut headers);
        if let Some(id) = request_id::current() {
            headers.insert(request_id::HEADER, id);
        }
        self.http
            .client()
            .request(method, format!("{}{path}", self.base_url))
            .headers(headers)
    }
}
