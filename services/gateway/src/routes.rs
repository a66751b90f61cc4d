//! The public API: each route passed on to the service that owns it (see ARCHITECTURE.md,
//! "The public API"). Internal service routes are not reachable from here: only these are.

use std::net::IpAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{OriginalUri, Path, State};
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use axum::routing::{delete, get, post};

use crate::client_address::ClientAddress;
use crate::limits::RateLimits;
use crate::proxy::{self, Outgoing};
use crate::{Peers, me, ops};

/// The gateway's routes, those that invite abuse behind their rate limits.
pub fn router(peers: Peers, limits: &RateLimits) -> Router {
    let status_page = Arc::new(ops::StatusPage::new(&peers));
    Router::new()
        .merge(crate::ui::router())
        .route("/api/signups", limits.signups.guard(post(signups)))
        .route(
            "/api/verifications/resend",
            limits.verifications.guard(post(verification_resend)),
        )
        .route(
            "/api/verifications/{token}",
            limits.verifications.guard(post(verifications)),
        )
        .route(
            "/api/sessions",
            limits
                .sessions
                .guard(post(sessions))
                .merge(limits.reads.guard(get(sessions)))
                .delete(sessions),
        )
        .route("/api/sessions/refresh", limits.sessions.guard(post(sessions)))
        .route("/api/sessions/current", delete(sessions))
        .route("/api/me", limits.reads.guard(get(me_aggregate)).patch(me_update))
        .route("/api/suggestions", limits.reads.guard(get(friends)))
        .route("/api/friends", limits.reads.guard(get(friends)))
        .route("/api/friends/requests", limits.reads.guard(get(friends)))
        .route("/api/friends/{user_id}", post(friends).delete(friends))
        .route("/api/friends/{user_id}/accept", post(friends))
        .route("/api/dev/mailbox", get(mailbox))
        .route(
            "/ops/status",
            get(move || async move { status_page.response().await }),
        )
        // Shared, not copied: axum clones the state for every request.
        .with_state(Arc::new(peers))
}

/// The parts of a public request that are passed on.
struct Public {
    method: Method,
    headers: HeaderMap,
    client: Option<IpAddr>,
    body: Bytes,
}

impl Public {
    fn to(&self, path: String) -> Outgoing<'_> {
        Outgoing {
            method: self.method.clone(),
            path,
            headers: &self.headers,
            client: self.client,
            body: self.body.clone(),
            cookies: false,
        }
    }

    /// To the session routes, with the browser's cookies (the refresh token).
    fn to_sessions(&self, path: &str) -> Outgoing<'_> {
        Outgoing {
            cookies: true,
            ..self.to(path.to_owned())
        }
    }
}

impl<S: Send + Sync> axum::extract::FromRequest<S> for Public {
    type Rejection = Response;

    async fn from_request(mut request: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        use axum::body::HttpBody as _;
        use axum::response::IntoResponse;
        let client = request.extensions().get::<ClientAddress>().map(|client| client.0);
        let method = request.method().clone();
        // Taken, not copied: reading the body needs none of them.
        let headers = std::mem::take(request.headers_mut());
        // Most requests (every GET) have no body: nothing to read, limit or collect.
        let body = if request.body().is_end_stream() {
            Bytes::new()
        } else {
            Bytes::from_request(request, state)
                .await
                .map_err(IntoResponse::into_response)?
        };
        Ok(Self {
            method,
            headers,
            client,
            body,
        })
    }
}

/// `/api/<rest>` → `/<rest>` on the service, query included.
fn service_path(uri: &OriginalUri) -> String {
    let path_and_query = uri.0.path_and_query().map_or("/", |p| p.as_str());
    path_and_query
        .strip_prefix("/api")
        .unwrap_or(path_and_query)
        .to_owned()
}

async fn signups(State(peers): State<Arc<Peers>>, public: Public) -> Response {
    proxy::forward(&peers.signup, public.to("/signups".to_owned())).await
}

async fn verifications(
    State(peers): State<Arc<Peers>>,
    Path(token): Path<String>,
    public: Public,
) -> Response {
    // The token goes on percent-encoded, exactly as one path segment.
    let token: String = url_segment(&token);
    proxy::forward(&peers.verification, public.to(format!("/verifications/{token}"))).await
}

async fn verification_resend(State(peers): State<Arc<Peers>>, public: Public) -> Response {
    proxy::forward(&peers.verification, public.to("/verifications/resend".to_owned())).await
}

async fn sessions(State(peers): State<Arc<Peers>>, uri: OriginalUri, public: Public) -> Response {
    proxy::forward(&peers.passwords, public.to_sessions(&service_path(&uri))).await
}

async fn me_aggregate(State(peers): State<Arc<Peers>>, headers: HeaderMap) -> Response {
    me::aggregate(&peers, &headers).await
}

async fn me_update(State(peers): State<Arc<Peers>>, public: Public) -> Response {
    proxy::forward(&peers.users, public.to("/me".to_owned())).await
}

async fn friends(State(peers): State<Arc<Peers>>, uri: OriginalUri, public: Public) -> Response {
    proxy::forward(&peers.friends, public.to(service_path(&uri))).await
}

async fn mailbox(State(peers): State<Arc<Peers>>, uri: OriginalUri, public: Public) -> Response {
    // The page asked for (`?limit=`, `?after=`) goes on with the path.
    let query = uri
        .0
        .query()
        .map_or_else(String::new, |query| format!("?{query}"));
    proxy::forward(&peers.verification, public.to(format!("/mailbox{query}"))).await
}

/// Percent-encode everything but unreserved characters (RFC 3986), for one path segment.
fn url_segment(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (byte as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}
