//! The friends service's HTTP API, every route acting for the caller named by their access
//! token: requests, acceptances, removals, the friend list, pending requests and suggestions.

use axum::extract::{FromRef, Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use dozen_bus::Outbox;
use dozen_kit::Json;
use dozen_kit::auth::{Authenticated, JwtVerifier};
use dozen_kit::db::Db;
use dozen_kit::paging::{self, Page};
use dozen_kit::{ApiError, Problem};
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::commands;
use crate::domain::{self, Friendship};
use crate::store;
use crate::suggestions::{self, Suggestion};

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The service's database.
    pub db: Db,
    /// Where `friend.connected` is published.
    pub outbox: Outbox,
    /// Checks callers' access tokens.
    pub verifier: JwtVerifier,
}

impl FromRef<AppState> for JwtVerifier {
    fn from_ref(state: &AppState) -> Self {
        state.verifier.clone()
    }
}

/// The service's routes.
pub fn router(state: AppState) -> OpenApiRouter {
    routes().with_state(state)
}

/// The service's API as OpenAPI, which the gateway's document of the public API is built from.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().into_openapi()
}

fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_friends))
        .routes(routes!(list_requests))
        .routes(routes!(request_friend, remove_friend))
        .routes(routes!(accept_friend))
        .routes(routes!(list_suggestions))
}

/// Where a pair stands, as the API says it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PairStatus {
    /// `none`, `requested` (waiting for the other) or `friends`.
    pub status: &'static str,
}

fn status_of(state: Friendship) -> PairStatus {
    PairStatus {
        status: match state {
            Friendship::None => "none",
            Friendship::Requested { .. } => "requested",
            Friendship::Friends { .. } => "friends",
        },
    }
}

/// A friend, or a pending request.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Relation {
    /// The other user.
    pub id: Uuid,
    /// Their display name.
    pub display_name: String,
    /// Friends since (or asked at).
    pub since: DateTime<Utc>,
}

impl From<store::Relation> for Relation {
    fn from(relation: store::Relation) -> Self {
        Self {
            id: relation.id,
            display_name: relation.display_name,
            since: relation.since,
        }
    }
}

/// Ask a user to be friends (if they already asked you, this accepts).
#[utoipa::path(
    post,
    path = "/friends/{user_id}",
    params(("user_id" = Uuid, Path, description = "Whom to ask")),
    responses(
        (status = 200, body = PairStatus),
        (status = 400, description = "The id is not a UUID", body = Problem),
        (status = 401, body = Problem),
        (status = 404, description = "No such user", body = Problem),
        (status = 422, description = "Yourself", body = Problem),
    ),
    security(("bearer" = []))
)]
async fn request_friend(
    caller: Authenticated,
    State(state): State<AppState>,
    Path(user_id): Path<Uuid>,
) -> Result<Json<PairStatus>, ApiError> {
    let actor = caller.user_id;
    let outcome = commands::run(&state.db, &state.outbox, actor, user_id, |pair| {
        domain::request(pair, actor)
    })
    .await?;
    Ok(Json(status_of(outcome)))
}

/// Accept a user's request.
#[utoipa::path(
    post,
    path = "/friends/{user_id}/accept",
    params(("user_id" = Uuid, Path, description = "Whose request")),
    responses(
        (status = 200, body = PairStatus),
        (status = 400, description = "The id is not a UUID", body = Problem),
        (status = 401, body = Problem),
        (status = 404, description = "No such user", body = Problem),
        (status = 409, description = "No request from that user", body = Problem),
        (status = 422, description = "Yourself", body = Problem),
    ),
    security(("bearer" = []))
)]
async fn accept_friend(
    caller: Authenticated,
    State(state): State<AppState>,
    Path(user_id): Path<Uuid>,
) -> Result<Json<PairStatus>, ApiError> {
    let actor = caller.user_id;
    let outcome = commands::run(&state.db, &state.outbox, actor, user_id, |pair| {
        domain::accept(pair, actor)
    })
    .await?;
    Ok(Json(status_of(outcome)))
}

/// Withdraw or decline a request, or end a friendship.
#[utoipa::path(
    delete,
    path = "/friends/{user_id}",
    params(("user_id" = Uuid, Path, description = "The other user")),
    responses(
        (status = 204, description = "Nothing between you now"),
        (status = 400, description = "The id is not a UUID", body = Problem),
        (status = 401, body = Problem),
        (status = 404, description = "No such user", body = Problem),
        (status = 422, description = "Yourself", body = Problem),
    ),
    security(("bearer" = []))
)]
async fn remove_friend(
    caller: Authenticated,
    State(state): State<AppState>,
    Path(user_id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    commands::run(&state.db, &state.outbox, caller.user_id, user_id, domain::remove).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Your friends, oldest friendship first, a page at a time (`?limit=`, `?after=<id>`).
#[utoipa::path(
    get,
    path = "/friends",
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 200, description = "Page size, 1 to 200 (default 50)"),
        ("after" = Option<Uuid>, Query, description = "The id of the previous page's last friend"),
    ),
    responses((status = 200, body = [Relation]), (status = 400, body = Problem), (status = 401, body = Problem)),
    security(("bearer" = []))
)]
async fn list_friends(
    caller: Authenticated,
    State(state): State<AppState>,
    page: Page,
) -> Result<Json<Vec<Relation>>, ApiError> {
    let friends = store::friends_of(&state.db, caller.user_id, page)
        .await?
        .ok_or_else(paging::unknown_cursor)?;
    Ok(Json(friends.into_iter().map(Relation::from).collect()))
}

/// Requests waiting for your answer, oldest first, a page at a time (`?limit=`, `?after=<id>`).
#[utoipa::path(
    get,
    path = "/friends/requests",
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 200, description = "Page size, 1 to 200 (default 50)"),
        ("after" = Option<Uuid>, Query, description = "The id of the previous page's last requester"),
    ),
    responses((status = 200, body = [Relation]), (status = 400, body = Problem), (status = 401, body = Problem)),
    security(("bearer" = []))
)]
async fn list_requests(
    caller: Authenticated,
    State(state): State<AppState>,
    page: Page,
) -> Result<Json<Vec<Relation>>, ApiError> {
    let requests = store::requests_to(&state.db, caller.user_id, page)
        .await?
        .ok_or_else(paging::unknown_cursor)?;
    Ok(Json(requests.into_iter().map(Relation::from).collect()))
}

/// People you may know: verified users ranked by friends in common, then shared interests.
#[utoipa::path(
    get,
    path = "/suggestions",
    responses((status = 200, body = [Suggestion]), (status = 401, body = Problem)),
    security(("bearer" = []))
)]
async fn list_suggestions(
    caller: Authenticated,
    State(state): State<AppState>,
) -> Result<Json<Vec<Suggestion>>, ApiError> {
    Ok(Json(suggestions::for_user(&state.db, caller.user_id).await?))
}
