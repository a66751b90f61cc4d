//! `GET /api/me`: the caller's profile, suggestions, friends and verification state, fetched
//! from users, friends and verification in parallel under one deadline (`ME_DEADLINE`, which
//! bounds each call's retries too). When a service is slow, down or behind an open circuit
//! breaker the answer is still 200, with what arrived and the names of the services that did
//! not answer in `missing`.

use axum::Json;
use axum::http::Method;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dozen_kit::Problem;
use dozen_kit::http::client::Upstream;
use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

use crate::Peers;

/// The aggregate.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Me {
    /// The profile (from users); null when users did not answer.
    #[schema(value_type = Option<dozen_users::domain::Profile>)]
    pub profile: Option<Value>,
    /// People the caller may know (from friends); null when friends did not answer.
    #[schema(value_type = Option<Vec<dozen_friends::suggestions::Suggestion>>)]
    pub suggestions: Option<Value>,
    /// The caller's friends (from friends); null when friends did not answer.
    #[schema(value_type = Option<Vec<dozen_friends::routes::Relation>>)]
    pub friends: Option<Value>,
    /// Whether the caller's address is verified, and when the last link was mailed (from
    /// verification); null when verification did not answer or does not know the caller yet.
    #[schema(value_type = Option<dozen_verification::routes::VerificationStatus>)]
    pub verification: Option<Value>,
    /// The services that did not answer in time (down, slow, or behind an open breaker).
    #[schema(value_type = Vec<String>)]
    pub missing: Vec<&'static str>,
}

/// How one part of the aggregate went.
enum Part {
    Answered(Value),
    /// The token was refused: the whole request is.
    Refused(Response),
    /// The service knows nothing of the caller (yet): the part is null, and not missing.
    Empty,
    Missing,
}

/// What a 404 from a part means.
#[derive(Clone, Copy, PartialEq, Eq)]
enum NotFound {
    /// The caller has no account: the whole request is refused.
    Refuses,
    /// The service does not know the caller (yet): the part is null, and not missing.
    IsEmpty,
}

async fn fetch(
    upstream: &Upstream,
    path: &str,
    token: &HeaderValue,
    deadline: Instant,
    not_found: NotFound,
) -> Part {
    let call = upstream
        .call(Method::GET, path)
        .header(header::AUTHORIZATION, token)
        .timeout(deadline.saturating_duration_since(Instant::now()))
        .send();
    let Ok(answer) = call.await else {
        return Part::Missing;
    };
    let status = answer.status();
    if status == StatusCode::NOT_FOUND && not_found == NotFound::IsEmpty {
        return Part::Empty;
    }
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::NOT_FOUND {
        let mut headers = HeaderMap::new();
        if let Some(challenge) = answer.headers().get(header::WWW_AUTHENTICATE) {
            headers.insert(header::WWW_AUTHENTICATE, challenge.clone());
        }
        let body = answer.bytes().await.unwrap_or_default();
        let mut refused = (status, headers, body).into_response();
        refused.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(dozen_kit::problem::CONTENT_TYPE),
        );
        return Part::Refused(refused);
    }
    if !status.is_success() {
        return Part::Missing;
    }
    match tokio::time::timeout_at(deadline, answer.json::<Value>()).await {
        Ok(Ok(value)) => Part::Answered(value),
        _ => Part::Missing,
    }
}

/// Build the aggregate for the caller whose `Authorization` header is in `headers`.
pub async fn aggregate(peers: &Peers, headers: &HeaderMap) -> Response {
    let Some(token) = headers.get(header::AUTHORIZATION) else {
        let mut refused =
            Problem::new(StatusCode::UNAUTHORIZED, "an access token is required").into_response();
        refused
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return refused;
    };
    let deadline = Instant::now() + peers.me_deadline;
    let (profile, suggestions, friends, verification) = tokio::join!(
        fetch(&peers.users, "/me", token, deadline, NotFound::Refuses),
        fetch(&peers.friends, "/suggestions", token, deadline, NotFound::Refuses),
        fetch(&peers.friends, "/friends", token, deadline, NotFound::Refuses),
        fetch(
            &peers.verification,
            "/verifications/status",
            token,
            deadline,
            NotFound::IsEmpty
        ),
    );
    let mut me = Me {
        profile: None,
        suggestions: None,
        friends: None,
        verification: None,
        missing: Vec::new(),
    };
    for (part, slot, service) in [
        (profile, &mut me.profile, "users"),
        (suggestions, &mut me.suggestions, "friends"),
        (friends, &mut me.friends, "friends"),
        (verification, &mut me.verification, "verification"),
    ] {
        match part {
            Part::Empty => {}
            Part::Answered(value) => *slot = Some(value),
            Part::Refused(response) => return response,
            Part::Missing if !me.missing.contains(&service) => me.missing.push(service),
            Part::Missing => {}
        }
    }
    Json(me).into_response()
}
