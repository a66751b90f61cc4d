//! The public API: each route passed on to the service that owns it (see ARCHITECTURE.md,
//! "The public API"). Internal service routes are not reachable from here: only these are.
//!
//! Each route is registered with its description, so `/openapi.json` lists exactly the routes
//! served here ([`crate::openapi`]). Adding a route passed on to a service is one line below,
//! naming the service's route; one the gateway answers itself is a handler with
//! `#[utoipa::path]`.

use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRef, OriginalUri, Path, State};
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use dozen_kit::Problem;
use utoipa::openapi::HttpMethod::{Delete, Get, Patch, Post, Put};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::client_address::ClientAddress;
use crate::limits::RateLimits;
use crate::openapi::{self, Documents, Forwarded};
use crate::proxy::{self, Outgoing};
use crate::{Peers, figures, me, ops};

/// The gateway's routes, those that invite abuse behind their rate limits, and their
/// description; the dev mailbox only when `dev_mailbox` is on (otherwise `/api/dev/mailbox` is
/// an unknown path: 404).
pub fn router(
    peers: Peers,
    figures: Arc<figures::FiguresPage>,
    limits: &RateLimits,
    dev_mailbox: bool,
) -> OpenApiRouter {
    let services = Documents::of_services();
    let (signup, users, passwords) = (&services.signup, &services.users, &services.passwords);
    let (verification, friends) = (&services.verification, &services.friends);
    let state = Shared {
        status_page: Arc::new(ops::StatusPage::new(&peers)),
        figures,
        peers: Arc::new(peers),
    };
    let api = OpenApiRouter::with_openapi(openapi::base())
        .routes(Forwarded::to(signup, Post, "/signups").at("/api/signups", signups, Some(&limits.signups)))
        .routes(Forwarded::to(verification, Post, "/verifications/resend").at(
            "/api/verifications/resend",
            verification_resend,
            Some(&limits.verifications),
        ))
        .routes(Forwarded::to(verification, Post, "/verifications/{token}").at(
            "/api/verifications/{token}",
            verifications,
            Some(&limits.verifications),
        ))
        .routes(Forwarded::to(verification, Post, "/password-resets").at(
            "/api/password-resets",
            password_resets,
            Some(&limits.verifications),
        ))
        .routes(Forwarded::to(verification, Post, "/password-resets/{token}").at(
            "/api/password-resets/{token}",
            password_reset,
            Some(&limits.verifications),
        ))
        .routes(Forwarded::to(verification, Post, "/email-changes/{token}").at(
            "/api/email-changes/{token}",
            email_change,
            Some(&limits.verifications),
        ))
        .routes(Forwarded::to(passwords, Post, "/sessions").at(
            "/api/sessions",
            sessions,
            Some(&limits.sessions),
        ))
        .routes(Forwarded::to(passwords, Get, "/sessions").at("/api/sessions", sessions, Some(&limits.reads)))
        .routes(Forwarded::to(passwords, Delete, "/sessions").at("/api/sessions", sessions, None))
        .routes(Forwarded::to(passwords, Post, "/sessions/refresh").at(
            "/api/sessions/refresh",
            sessions,
            Some(&limits.sessions),
        ))
        .routes(Forwarded::to(passwords, Delete, "/sessions/current").at(
            "/api/sessions/current",
            sessions,
            None,
        ))
        .routes(openapi::own(routes!(me_aggregate), Some(&limits.reads)))
        .routes(Forwarded::to(users, Patch, "/me").at("/api/me", me_update, None))
        // A password change costs a hash or two and guesses a password, as a login does.
        // A deletion checks a password: a hash, and a guess, as a login is.
        .routes(Forwarded::to(passwords, Delete, "/me").at("/api/me", me_delete, Some(&limits.sessions)))
        .routes(Forwarded::to(passwords, Put, "/me/password").at(
            "/api/me/password",
            me_password,
            Some(&limits.sessions),
        ))
        // An email change guesses the password too.
        .routes(Forwarded::to(users, Post, "/me/email").at("/api/me/email", me_email, Some(&limits.sessions)))
        .routes(Forwarded::to(friends, Get, "/suggestions").at(
            "/api/suggestions",
            forward_to_friends,
            Some(&limits.reads),
        ))
        .routes(Forwarded::to(friends, Get, "/friends").at(
            "/api/friends",
            forward_to_friends,
            Some(&limits.reads),
        ))
        .routes(Forwarded::to(friends, Get, "/friends/requests").at(
            "/api/friends/requests",
            forward_to_friends,
            Some(&limits.reads),
        ))
        .routes(Forwarded::to(friends, Post, "/friends/{user_id}").at(
            "/api/friends/{user_id}",
            forward_to_friends,
            None,
        ))
        .routes(Forwarded::to(friends, Delete, "/friends/{user_id}").at(
            "/api/friends/{user_id}",
            forward_to_friends,
            None,
        ))
        .routes(Forwarded::to(friends, Post, "/friends/{user_id}/accept").at(
            "/api/friends/{user_id}/accept",
            forward_to_friends,
            None,
        ))
        .routes(openapi::own(routes!(ops_status), None))
        .routes(openapi::own(routes!(ops_figures), None));
    let api = if dev_mailbox {
        api.routes(Forwarded::to(verification, Get, "/mailbox").at("/api/dev/mailbox", mailbox, None))
    } else {
        api
    };
    api.with_state(state)
        .merge(OpenApiRouter::from(crate::ui::router()))
}

/// What the handlers share; each takes its part. Shared, not copied: axum clones the state for
/// every request.
#[derive(Clone)]
struct Shared {
    peers: Arc<Peers>,
    status_page: Arc<ops::StatusPage>,
    figures: Arc<figures::FiguresPage>,
}

impl FromRef<Shared> for Arc<Peers> {
    fn from_ref(shared: &Shared) -> Self {
        shared.peers.clone()
    }
}

impl FromRef<Shared> for Arc<ops::StatusPage> {
    fn from_ref(shared: &Shared) -> Self {
        shared.status_page.clone()
    }
}

impl FromRef<Shared> for Arc<figures::FiguresPage> {
    fn from_ref(shared: &Shared) -> Self {
        shared.figures.clone()
    }
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

async fn password_resets(State(peers): State<Arc<Peers>>, public: Public) -> Response {
    proxy::forward(&peers.verification, public.to("/password-resets".to_owned())).await
}

async fn password_reset(
    State(peers): State<Arc<Peers>>,
    Path(token): Path<String>,
    public: Public,
) -> Response {
    let token: String = url_segment(&token);
    proxy::forward(
        &peers.verification,
        public.to(format!("/password-resets/{token}")),
    )
    .await
}

async fn email_change(
    State(peers): State<Arc<Peers>>,
    Path(token): Path<String>,
    public: Public,
) -> Response {
    let token: String = url_segment(&token);
    proxy::forward(&peers.verification, public.to(format!("/email-changes/{token}"))).await
}

async fn me_email(State(peers): State<Arc<Peers>>, public: Public) -> Response {
    proxy::forward(&peers.users, public.to("/me/email".to_owned())).await
}

async fn me_password(State(peers): State<Arc<Peers>>, public: Public) -> Response {
    proxy::forward(&peers.passwords, public.to("/me/password".to_owned())).await
}

async fn sessions(State(peers): State<Arc<Peers>>, uri: OriginalUri, public: Public) -> Response {
    proxy::forward(&peers.passwords, public.to_sessions(&service_path(&uri))).await
}

/// The caller's profile, suggestions, friends and verification state in one body; a part whose
/// service did not answer in time is null and named in `missing`.
#[utoipa::path(
    get,
    path = "/api/me",
    tag = "gateway",
    responses(
        (status = 200, body = me::Me),
        (status = 401, description = "No access token, or one that is not valid", body = Problem),
    ),
    security(("bearer" = []))
)]
async fn me_aggregate(State(peers): State<Arc<Peers>>, headers: HeaderMap) -> Response {
    me::aggregate(&peers, &headers).await
}

async fn me_update(State(peers): State<Arc<Peers>>, public: Public) -> Response {
    proxy::forward(&peers.users, public.to("/me".to_owned())).await
}

async fn me_delete(State(peers): State<Arc<Peers>>, public: Public) -> Response {
    proxy::forward(&peers.passwords, public.to("/me".to_owned())).await
}

async fn forward_to_friends(State(peers): State<Arc<Peers>>, uri: OriginalUri, public: Public) -> Response {
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

/// Every service's readiness and the gateway's circuit breaker for it, nothing more.
#[utoipa::path(
    get,
    path = "/ops/status",
    tag = "gateway",
    responses((status = 200, body = ops::Status))
)]
async fn ops_status(State(status_page): State<Arc<ops::StatusPage>>) -> Response {
    status_page.response().await
}

/// Each service's request rate, 5xx share, p99 latency, bus backlog and dead letters over the
/// last ten minutes, sampled every `FIGURES_INTERVAL`: numbers only.
#[utoipa::path(
    get,
    path = "/ops/figures",
    tag = "gateway",
    responses((status = 200, body = figures::Figures))
)]
async fn ops_figures(State(figures): State<Arc<figures::FiguresPage>>) -> Response {
    figures.response()
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
