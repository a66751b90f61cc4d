//! Refresh sessions: a login starts one ([`start`]); `POST /sessions/refresh` rotates its
//! refresh token and answers a new access token; `GET /sessions` lists the caller's sessions;
//! `DELETE /sessions/current` and `DELETE /sessions` end the caller's session or all of them.
//!
//! The refresh token goes to an API client in the body and to a browser as an `HttpOnly`
//! cookie scoped to the public `/api/sessions` routes, so that page scripts never see it and
//! no other route receives it.

use std::net::IpAddr;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dozen_kit::auth::{AuthError, bearer_token};
use dozen_kit::{ApiError, Json, Problem};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{AppState, ClientAddress};
use crate::domain::keys::{self, SessionCaller};
use crate::domain::sessions::{self, RefreshToken};
use crate::domain::throttle;
use crate::store::{self, NewSession, Refresh};

/// The cookie a browser keeps its refresh token in.
const COOKIE: &str = "refresh_token";
/// Where the browser sends the cookie: the public session routes, and nothing else.
const COOKIE_PATH: &str = "/api/sessions";

/// A successful login or refresh.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    /// A JWT signed by the key named in its header's `kid`; its `sid` claim names the session.
    access_token: String,
    /// Always `Bearer`.
    token_type: &'static str,
    /// Seconds until the access token expires.
    expires_in: u64,
    /// Opaque; good for one `POST /sessions/refresh`, which answers the next one. Also set as
    /// the `refresh_token` cookie.
    refresh_token: String,
    /// Seconds until the session ends, however often it is refreshed.
    refresh_expires_in: u64,
}

/// Start a session for `user_id` and answer its first tokens (the login's answer).
pub async fn start(
    state: &AppState,
    user_id: Uuid,
    client: Option<IpAddr>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let token = RefreshToken::generate().map_err(|e| ApiError::Internal(e.into()))?;
    let now = throttle::now_millis();
    let session = NewSession {
        id: Uuid::new_v4(),
        user_id,
        now,
        expires_at: now + throttle::millis(state.sessions.ttl),
        client_address: address_text(client),
        user_agent: user_agent_of(headers),
        token_hash: token.hash(),
    };
    store::start_session(&state.db, &session).await?;
    answer(state, user_id, session.id, &token, session.expires_at, now)
}

/// The tokens of a session, in the body and the cookie.
fn answer(
    state: &AppState,
    user_id: Uuid,
    session_id: Uuid,
    refresh: &RefreshToken,
    expires_at: i64,
    now: i64,
) -> Result<Response, ApiError> {
    let access = keys::issue(&state.keys, user_id, session_id, &state.tokens)
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("signing the access token")))?;
    let refresh_expires_in = u64::try_from((expires_at - now) / 1000).unwrap_or(0);
    let mut response = Json(SessionView {
        access_token: access.token,
        token_type: "Bearer",
        expires_in: access.expires_in,
        refresh_token: refresh.as_str().to_owned(),
        refresh_expires_in,
    })
    .into_response();
    let headers = response.headers_mut();
    // A token is a credential: no cache may keep it (RFC 6749 §5.1).
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::SET_COOKIE, cookie(refresh.as_str(), refresh_expires_in));
    Ok(response)
}

/// The refresh cookie holding `value` for `max_age` seconds (0: remove it).
fn cookie(value: &str, max_age: u64) -> HeaderValue {
    let text =
        format!("{COOKIE}={value}; Path={COOKIE_PATH}; Max-Age={max_age}; HttpOnly; Secure; SameSite=Strict");
    // The value is hex digits or empty: always a valid header.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `response` with the refresh cookie removed from the browser.
fn clearing_cookie(mut response: Response) -> Response {
    response.headers_mut().insert(header::SET_COOKIE, cookie("", 0));
    response
}

fn address_text(client: Option<IpAddr>) -> String {
    client.map_or_else(|| "unknown".to_owned(), |address| address.to_string())
}

fn user_agent_of(headers: &HeaderMap) -> String {
    headers
        .get(header::USER_AGENT)
        .and_then(|value| value.to_str().ok())
        .map_or_else(String::new, sessions::user_agent)
}

/// The refresh token in the `refresh_token` cookie, if any.
fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE).then(|| value.to_owned())
        })
}

/// A refresh request's body. No `Debug`: it holds a token.
#[derive(Deserialize, ToSchema)]
pub struct RefreshRequest {
    /// The refresh token; without it, the `refresh_token` cookie's.
    refresh_token: Option<String>,
}

/// Trade a refresh token for a new access token and a new refresh token. A token that was
/// rotated already is a copy someone else holds: its whole session ends.
#[utoipa::path(
    post,
    path = "/sessions/refresh",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "Refreshed; the old refresh token no longer works", body = SessionView),
        (status = 401, description = "No refresh token, or one that no live session has", body = Problem),
        (status = 422, description = "Invalid fields", body = Problem),
    )
)]
pub async fn refresh(
    State(state): State<AppState>,
    ClientAddress(client): ClientAddress,
    headers: HeaderMap,
    Json(body): Json<RefreshRequest>,
) -> Result<Response, ApiError> {
    let Some(presented) = body.refresh_token.or_else(|| cookie_token(&headers)) else {
        return Ok(refresh_refused(
            "a refresh token is required, in the body or the cookie",
        ));
    };
    let Some(old) = RefreshToken::parse(&presented) else {
        return Ok(refresh_refused("the refresh token is not valid; log in again"));
    };
    let new = RefreshToken::generate().map_err(|e| ApiError::Internal(e.into()))?;
    let now = throttle::now_millis();
    let outcome = store::refresh_session(
        &state.db,
        &old.hash(),
        &new.hash(),
        now,
        &address_text(client),
        &user_agent_of(&headers),
    )
    .await?;
    match outcome {
        Refresh::Rotated {
            session_id,
            user_id,
            expires_at,
        } => answer(&state, user_id, session_id, &new, expires_at, now),
        Refresh::Reused => {
            tracing::warn!("a rotated refresh token was used again: its session is ended");
            metrics::counter!("passwords_refresh_reuses_total").increment(1);
            Ok(refresh_refused("the refresh token is not valid; log in again"))
        }
        Refresh::Unknown => Ok(refresh_refused("the refresh token is not valid; log in again")),
    }
}

/// 401 for a refresh, removing the browser's cookie: it is no use any more.
fn refresh_refused(detail: &str) -> Response {
    clearing_cookie(
        Problem::typed(
            StatusCode::UNAUTHORIZED,
            "invalid-refresh-token",
            "Invalid refresh token",
            detail,
        )
        .into_response(),
    )
}

/// One of the caller's sessions.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionInfo {
    id: Uuid,
    /// RFC 3339.
    created_at: String,
    /// RFC 3339: the last refresh, or the login.
    last_used_at: String,
    /// The client's address at the last use.
    client_address: String,
    /// The client's user agent at the last use.
    user_agent: String,
    /// Whether this is the session of the token the request was made with.
    current: bool,
}

/// The caller's live sessions, most recently used first.
#[utoipa::path(
    get,
    path = "/sessions",
    responses(
        (status = 200, description = "The caller's sessions", body = [SessionInfo]),
        (status = 401, description = "No valid access token", body = Problem),
    )
)]
pub async fn list(State(state): State<AppState>, caller: SessionCaller) -> Result<Response, ApiError> {
    let rows = store::sessions_of(&state.db, caller.user_id, throttle::now_millis()).await?;
    let sessions: Vec<SessionInfo> = rows
        .into_iter()
        .map(|row| SessionInfo {
            id: row.id,
            created_at: rfc3339(row.created_at),
            last_used_at: rfc3339(row.last_used_at),
            client_address: row.client_address,
            user_agent: row.user_agent,
            current: row.id == caller.session_id,
        })
        .collect();
    Ok(Json(sessions).into_response())
}

fn rfc3339(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Log out: the caller's session ends, its refresh token stops working at once (its access
/// tokens live until they expire). 204 also when it had ended already.
#[utoipa::path(
    delete,
    path = "/sessions/current",
    responses(
        (status = 204, description = "Logged out"),
        (status = 401, description = "No valid access token", body = Problem),
    )
)]
pub async fn end_current(State(state): State<AppState>, caller: SessionCaller) -> Result<Response, ApiError> {
    store::end_session(&state.db, caller.user_id, caller.session_id).await?;
    Ok(clearing_cookie(StatusCode::NO_CONTENT.into_response()))
}

/// Log out everywhere: every session of the caller ends.
#[utoipa::path(
    delete,
    path = "/sessions",
    responses(
        (status = 204, description = "Every session ended"),
        (status = 401, description = "No valid access token", body = Problem),
    )
)]
pub async fn end_all(State(state): State<AppState>, caller: SessionCaller) -> Result<Response, ApiError> {
    let mut tx = dozen_kit::db::Tx::begin(&state.db).await?;
    store::end_sessions(&mut tx, caller.user_id, None).await?;
    tx.commit().await?;
    Ok(clearing_cookie(StatusCode::NO_CONTENT.into_response()))
}

impl FromRequestParts<AppState> for SessionCaller {
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        keys::verify(&state.keys, bearer_token(parts)?, &state.tokens)
    }
}
