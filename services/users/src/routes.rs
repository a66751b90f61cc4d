//! The users service's HTTP API. `/me` acts for the caller named by their access token (the
//! gateway routes `/api/me` here). `/profiles…` is internal: only the signup service may call
//! it (its service identity is required, see `dozen_kit::identity`); it creates profiles (a
//! newer signup replacing an unverified one that holds the address) and deletes those of
//! signups that cannot finish.
//! `PUT /profiles/{id}/email` is the verification service's alone: a followed email change
//! link applies the change (see [`email`]). The gateway routes none of them.

use axum::extract::{FromRef, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use dozen_bus::Outbox;
use dozen_bus::contracts::UserProfileUpdated;
use dozen_kit::Json;
use dozen_kit::auth::{Authenticated, JwtVerifier};
use dozen_kit::db::{Db, Tx};
use dozen_kit::email::Email;
use dozen_kit::identity::Identity;
use dozen_kit::{ApiError, Problem};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::domain::{NewProfileRequest, Profile, ProfileChangesRequest};
use crate::store::{self, Created, Replacing};

mod email;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The service's database.
    pub db: Db,
    /// Where profile changes are published.
    pub outbox: Outbox,
    /// Checks callers' access tokens.
    pub verifier: JwtVerifier,
    /// The passwords service, which confirms the password an email change is given.
    pub passwords: dozen_kit::http::client::Upstream,
}

impl FromRef<AppState> for JwtVerifier {
    fn from_ref(state: &AppState) -> Self {
        state.verifier.clone()
    }
}

/// The service's routes. `/profiles…` is signup's alone, but a followed email change link,
/// verification's alone; `/me` acts for the user whose access token it is given.
pub fn router(state: AppState, identity: &Identity) -> OpenApiRouter {
    let Routes {
        signups,
        email_changes,
        public,
    } = routes();
    signups
        .route_layer(identity.callers(&["signup"]))
        .merge(email_changes.route_layer(identity.callers(&["verification"])))
        .merge(public)
        .with_state(state)
}

/// The service's API as OpenAPI, which the gateway's document of the public API is built from.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let Routes {
        signups,
        email_changes,
        public,
    } = routes();
    signups.merge(email_changes).merge(public).into_openapi()
}

/// The routes, grouped by who may call them.
struct Routes {
    /// Signup's alone.
    signups: OpenApiRouter<AppState>,
    /// Verification's alone.
    email_changes: OpenApiRouter<AppState>,
    /// Anyone's (each authenticates its caller itself).
    public: OpenApiRouter<AppState>,
}

fn routes() -> Routes {
    let signups = OpenApiRouter::new()
        .routes(routes!(create_profile, find_profile))
        .routes(routes!(get_profile, delete_profile));
    let email_changes = OpenApiRouter::new().routes(routes!(email::apply));
    let public = OpenApiRouter::new()
        .routes(routes!(get_me, update_me))
        .routes(routes!(email::request));
    Routes {
        signups,
        email_changes,
        public,
    }
}

/// The event that tells others what a profile now is.
pub fn profile_updated(profile: &Profile) -> UserProfileUpdated {
    UserProfileUpdated {
        user_id: profile.id,
        display_name: profile.display_name.clone(),
        interests: profile.interests.clone(),
        verified: profile.verified,
    }
}

/// A created profile, as signup is answered.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct CreatedProfile {
    /// The profile.
    #[serde(flatten)]
    profile: Profile,
    /// The unverified profiles it replaced for its address, newest first: the one it replaced
    /// itself, then the one that one replaced, and so on. Empty for a free address.
    replaced: Vec<Uuid>,
}

/// Create a profile (internal: the signup service). A retry with the same id and email
/// answers 200 with the profile. An email held by an unverified profile is taken over: that
/// profile is replaced (deleted, and its id never used again), atomically and only while it
/// is unverified; a verified one answers 409, and so does an id with another email.
#[utoipa::path(
    post,
    path = "/profiles",
    request_body = NewProfileRequest,
    responses(
        (status = 201, description = "Created", body = CreatedProfile),
        (status = 200, description = "Created before, by the same call", body = CreatedProfile),
        (status = 409, description = "The email belongs to a verified profile, or the id to another email", body = Problem),
        (status = 410, description = "A newer signup replaced the profile with this id", body = Problem),
        (status = 422, description = "A field is invalid", body = Problem),
    )
)]
async fn create_profile(
    State(state): State<AppState>,
    Json(request): Json<NewProfileRequest>,
) -> Result<Response, ApiError> {
    let new = request.validate()?;
    let mut tx = Tx::begin(&state.db).await?;
    let created = store::create(&mut tx, &new, Utc::now()).await?;
    let (status, Replacing { profile, replaced }) = match created {
        Created::New(created) => (StatusCode::CREATED, created),
        Created::AlreadyThere(created) => (StatusCode::OK, created),
        Created::Conflict => {
            tx.rollback().await?;
            return Ok(Problem::typed(
                StatusCode::CONFLICT,
                "profile-exists",
                "Profile exists",
                "a profile with this email or id already exists",
            )
            .into_response());
        }
        Created::Replaced => {
            tx.rollback().await?;
            return Ok(Problem::typed(
                StatusCode::GONE,
                "profile-replaced",
                "Profile replaced",
                "a newer signup for the address replaced this profile",
            )
            .into_response());
        }
    };
    tx.commit().await?;
    if let Some(previous) = replaced.first() {
        tracing::info!(user_id = %profile.id, replaced = %previous, "a newer signup replaced an unverified profile");
    }
    Ok((status, Json(CreatedProfile { profile, replaced })).into_response())
}

/// Which profile to find.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
struct ProfileQuery {
    /// The email address (any case; compared normalised).
    email: String,
}

/// The profile with an email address (internal: the signup service names the owner of an
/// address that signs up again).
#[utoipa::path(
    get,
    path = "/profiles",
    params(ProfileQuery),
    responses((status = 200, body = Profile), (status = 404, body = Problem), (status = 422, body = Problem))
)]
async fn find_profile(
    State(state): State<AppState>,
    Query(query): Query<ProfileQuery>,
) -> Result<Json<Profile>, ApiError> {
    let email = Email::parse(&query.email).map_err(|error| {
        Problem::validation(std::iter::once(("email".to_owned(), error.to_owned())).collect())
    })?;
    store::find_by_email(&state.db, &email)
        .await?
        .map(Json)
        .ok_or_else(|| not_found().into())
}

/// A profile by id (internal).
#[utoipa::path(
    get,
    path = "/profiles/{id}",
    params(("id" = Uuid, Path, description = "The user's id")),
    responses((status = 200, body = Profile), (status = 404, body = Problem))
)]
async fn get_profile(State(state): State<AppState>, Path(id): Path<Uuid>) -> Result<Json<Profile>, ApiError> {
    store::find(&state.db, id)
        .await?
        .map(Json)
        .ok_or_else(|| not_found().into())
}

/// Delete a profile (internal: undoing a signup that could not finish). Deleting one that
/// is not there is not an error, so the undo can be retried.
#[utoipa::path(
    delete,
    path = "/profiles/{id}",
    params(("id" = Uuid, Path, description = "The user's id")),
    responses((status = 204, description = "Gone"))
)]
async fn delete_profile(State(state): State<AppState>, Path(id): Path<Uuid>) -> Result<StatusCode, ApiError> {
    let mut tx = Tx::begin(&state.db).await?;
    store::delete(&mut tx, id).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's profile.
#[utoipa::path(
    get,
    path = "/me",
    responses((status = 200, body = Profile), (status = 401, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = []))
)]
async fn get_me(caller: Authenticated, State(state): State<AppState>) -> Result<Json<Profile>, ApiError> {
    store::find(&state.db, caller.user_id)
        .await?
        .map(Json)
        .ok_or_else(|| not_found().into())
}

/// Change the caller's display name and/or interests; `user.profile_updated` is published
/// with the change, in the same transaction.
#[utoipa::path(
    patch,
    path = "/me",
    request_body = ProfileChangesRequest,
    responses(
        (status = 200, body = Profile),
        (status = 401, body = Problem),
        (status = 404, body = Problem),
        (status = 422, description = "A field is invalid", body = Problem),
    ),
    security(("bearer" = []))
)]
async fn update_me(
    caller: Authenticated,
    State(state): State<AppState>,
    Json(request): Json<ProfileChangesRequest>,
) -> Result<Json<Profile>, ApiError> {
    let changes = request.validate()?;
    let mut tx = Tx::begin(&state.db).await?;
    let Some(profile) = store::update(&mut tx, caller.user_id, &changes, Utc::now()).await? else {
        return Err(not_found().into());
    };
    state
        .outbox
        .publish(&mut tx, &profile_updated(&profile))
        .await
        .map_err(anyhow::Error::from)?;
    tx.commit().await?;
    Ok(Json(profile))
}

pub(crate) fn not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "no such profile")
}
