//! `GET /ops/status`: every service's readiness, asked in parallel with a short timeout, and
//! the state of the gateway's circuit breaker for it.
//!
//! The readiness probe is sent unguarded ([`dozen_kit::http::client::Call::unguarded`]): it
//! reaches the service even while the breaker is open, so the page shows when a service is
//! back before the breaker's next probe, and its failures never count towards opening the
//! breaker — only user traffic decides that. The `breaker` object is therefore the breaker as
//! user traffic last found it.

use std::time::Duration;

use axum::Json;
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use dozen_kit::http::breaker::BreakerHealth;
use dozen_kit::http::client::Upstream;
use serde::Serialize;

use crate::Peers;

/// How long a service's `/readyz` may take before the service is reported not ready.
const READINESS_TIMEOUT: Duration = Duration::from_secs(1);

/// One service's state.
#[derive(Debug, Serialize)]
pub struct ServiceStatus {
    /// Its name.
    pub name: &'static str,
    /// Whether its `/readyz` answered 200.
    pub ready: bool,
    /// What `/readyz` said when not ready, or why it could not be asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The gateway's circuit breaker for it (none for the gateway itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaker: Option<BreakerHealth>,
}

async fn readiness(upstream: &Upstream) -> ServiceStatus {
    let asked = upstream
        .call(Method::GET, "/readyz")
        .timeout(READINESS_TIMEOUT)
        .unguarded()
        .send()
        .await;
    let (ready, detail) = match asked {
        Ok(answer) if answer.status().is_success() => (true, None),
        Ok(answer) => {
            let status = answer.status();
            let problem = answer
                .json::<dozen_kit::Problem>()
                .await
                .map(|p| p.detail)
                .unwrap_or_default();
            (false, Some(format!("{status}: {problem}")))
        }
        Err(error) => (false, Some(error.to_string())),
    };
    ServiceStatus {
        name: upstream.name(),
        ready,
        detail,
        breaker: Some(upstream.health()),
    }
}

/// The status of the gateway and every service behind it.
pub async fn status(peers: &Peers) -> Response {
    let (signup, users, passwords, verification, friends) = tokio::join!(
        readiness(&peers.signup),
        readiness(&peers.users),
        readiness(&peers.passwords),
        readiness(&peers.verification),
        readiness(&peers.friends),
    );
    let gateway = ServiceStatus {
        name: "gateway",
        ready: true,
        detail: None,
        breaker: None,
    };
    Json(serde_json::json!({ "services": [gateway, signup, users, passwords, verification, friends] }))
        .into_response()
}
