//! `GET /ops/status`: every service's readiness, asked in parallel with a short timeout, and
//! the state of the gateway's circuit breaker for it.
//!
//! The page is public, so it says only what the public needs: per service, ready or not, and
//! the breaker's state. Why a service is not ready (its problem detail, a connection error
//! naming a host, the breaker's last error) goes to the log, at warn. The result is kept for
//! [`FRESH_FOR`], and requests that arrive while it is being made wait for it: a flood of
//! requests costs the services one round of probes a second, not one per request.
//!
//! The readiness probe is sent unguarded ([`dozen_kit::http::client::Call::unguarded`]): it
//! reaches the service even while the breaker is open, so the page shows when a service is
//! back before the breaker's next probe, and its failures never count towards opening the
//! breaker — only user traffic decides that. The breaker state is therefore the breaker as
//! user traffic last found it.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use dozen_kit::http::breaker::BreakerState;
use dozen_kit::http::client::Upstream;
use serde::Serialize;
use tokio::sync::Mutex;

use crate::Peers;

/// How long a service's `/readyz` may take before the service is reported not ready.
const READINESS_TIMEOUT: Duration = Duration::from_secs(1);

/// How long one round of probes answers `/ops/status`.
const FRESH_FOR: Duration = Duration::from_secs(1);

/// The page: every service's state, the gateway's first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Status {
    /// The gateway, then each service behind it.
    pub services: Vec<ServiceStatus>,
}

/// One service's state, as the public sees it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ServiceStatus {
    /// Its name.
    #[schema(value_type = String)]
    pub name: &'static str,
    /// Whether its `/readyz` answered 200.
    pub ready: bool,
    /// The gateway's circuit breaker for it (none for the gateway itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaker: Option<Breaker>,
}

/// A circuit breaker, as the public sees it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Breaker {
    /// Closed, open or half-open.
    pub state: BreakerState,
}

/// The status page: the services to probe and the latest result.
#[derive(Debug)]
pub struct StatusPage {
    /// The services behind the gateway, in the order they are listed.
    upstreams: [Upstream; 5],
    /// The last body made and when; held while a new one is made, so that concurrent
    /// requests wait for it instead of probing again.
    latest: Mutex<Option<(Instant, Bytes)>>,
}

impl StatusPage {
    /// A page for `peers`, nothing probed yet.
    pub fn new(peers: &Peers) -> Self {
        Self {
            upstreams: [
                peers.signup.clone(),
                peers.users.clone(),
                peers.passwords.clone(),
                peers.verification.clone(),
                peers.friends.clone(),
            ],
            latest: Mutex::new(None),
        }
    }

    /// The status of the gateway and every service behind it, at most [`FRESH_FOR`] old.
    pub async fn response(&self) -> Response {
        let mut latest = self.latest.lock().await;
        let body = match &*latest {
            Some((made, body)) if made.elapsed() < FRESH_FOR => body.clone(),
            _ => {
                let body = self.probe().await;
                *latest = Some((Instant::now(), body.clone()));
                body
            }
        };
        drop(latest);
        let mut response = body.into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }

    async fn probe(&self) -> Bytes {
        let gateway = ServiceStatus {
            name: "gateway",
            ready: true,
            breaker: None,
        };
        let [signup, users, passwords, verification, friends] = &self.upstreams;
        let (signup, users, passwords, verification, friends) = tokio::join!(
            readiness(signup),
            readiness(users),
            readiness(passwords),
            readiness(verification),
            readiness(friends),
        );
        let status = Status {
            services: vec![gateway, signup, users, passwords, verification, friends],
        };
        Bytes::from(serde_json::to_string(&status).unwrap_or_default())
    }
}

async fn readiness(upstream: &Upstream) -> ServiceStatus {
    let asked = upstream
        .call(Method::GET, "/readyz")
        .timeout(READINESS_TIMEOUT)
        .unguarded()
        .send()
        .await;
    let not_ready = match asked {
        Ok(response) if response.status().is_success() => None,
        Ok(response) => {
            let status = response.status();
            let detail = response
                .json::<dozen_kit::Problem>()
                .await
                .map(|problem| problem.detail)
                .unwrap_or_default();
            Some(format!("{status}: {detail}"))
        }
        Err(error) => Some(error.to_string()),
    };
    if let Some(why) = &not_ready {
        tracing::warn!(service = upstream.name(), why, "a service is not ready");
    }
    ServiceStatus {
        name: upstream.name(),
        ready: not_ready.is_none(),
        breaker: Some(Breaker {
            state: upstream.health().state,
        }),
    }
}
