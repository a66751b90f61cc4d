//! `GET /api/me`: the caller's profile, suggestions and friends, fetched from users and
//! friends in parallel under one deadline. When a service is slow or down the answer is still
//! 200, with what arrived and the names of the services that did not answer in `missing`.

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dozen_kit::Problem;
use dozen_kit::http::client::Upstream;
use reqwest::Method;
use serde::Serialize;
use serde_json::Value;

use crate::Peers;

/// The aggregate.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Me {
    /// The profile (from users); null when users did not answer.
    #[schema(value_type = Object)]
    pub profile: Option<Value>,
    /// People the caller may know (from friends); null when friends did not answer.
    #[schema(value_type = Option<Vec<Object>>)]
    pub suggestions: Option<Value>,
    /// The caller's friends (from friends); null when friends did not answer.
    #[schema(value_type = Option<Vec<Object>>)]
    pub friends: Option<Value>,
    /// The services that did not answer in time.
    pub missing: Vec<&'static str>,
}

/// How one part of the aggregate went.
enum Part {
    Answered(Value),
    /// The token was refused: the whole request is.
    Refused(Response),
    Missing,
}

async fn fetch(upstream: &Upstream, path: &str, token: &HeaderValue, deadline: std::time::Duration) -> Part {
    let call = upstream
        .request(Method::GET, path)
        .header(header::AUTHORIZATION, token)
        .send();
    let Ok(Ok(answer)) = tokio::time::timeout(deadline, call).await else {
        return Part::Missing;
    };
    let status = answer.status();
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
    match tokio::time::timeout(deadline, answer.json::<Value>()).await {
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
    let deadline = peers.me_deadline;
    let (profile, suggestions, friends) = tokio::join!(
        fetch(&peers.users, "/me", token, deadline),
        fetch(&peers.friends, "/suggestions", token, deadline),
        fetch(&peers.friends, "/friends", token, deadline),
    );
    let mut me = Me {
        profile: None,
        suggestions: None,
        friends: None,
        missing: Vec::new(),
    };
    for (part, slot, service) in [
        (profile, &mut me.profile, "users"),
        (suggestions, &mut me.suggestions, "friends"),
        (friends, &mut me.friends, "friends"),
    ] {
        match part {
            Part::Answered(value) => *slot = Some(value),
            Part::Refused(response) => return response,
            Part::Missing if !me.missing.contains(&service) => me.missing.push(service),
            Part::Missing => {}
        }
    }
    Json(me).into_response()
}
