//! The verification service's HTTP API: following a link (`POST /verifications/{token}`),
//! asking for a new one (`POST /verifications/resend`), the caller's own state
//! (`GET /verifications/status`, which the gateway's `/api/me` aggregates), and the dev
//! mailbox (`GET /mailbox`). The gateway routes them as `/api/verifications/…` and
//! `/api/dev/mailbox`. Password resets (`POST /password-resets`, `POST /password-resets/{token}`)
//! are in [`resets`], following an email change link (`POST /email-changes/{token}`) in
//! [`email_changes`].

use axum::extract::{FromRef, Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use dozen_bus::Outbox;
use dozen_bus::contracts::UserEmailVerified;
use dozen_kit::Json;
use dozen_kit::auth::{Authenticated, JwtVerifier};
use dozen_kit::db::{Db, Tx};
use dozen_kit::email::Email;
use dozen_kit::paging::{self, Page};
use dozen_kit::trace_context::Handling;
use dozen_kit::{ApiError, Problem};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::domain::Token;
use crate::links::Links;
use crate::mailer::{Mailer, StoredMessage};
use crate::store;

mod email_changes;
mod resets;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The service's database.
    pub db: Db,
    /// Where `user.email_verified` is published.
    pub outbox: Outbox,
    /// Issuing new links.
    pub links: Links,
    /// Where mail goes (the mailbox is listed from it).
    pub mailer: Mailer,
    /// Checks callers' access tokens.
    pub verifier: JwtVerifier,
    /// The passwords service, which sets a reset's new password.
    pub passwords: dozen_kit::http::client::Upstream,
    /// The users service, which applies an email change whose link was followed.
    pub users: dozen_kit::http::client::Upstream,
    /// Runs the work of a reset request after its answer.
    pub lifecycle: dozen_kit::lifecycle::Lifecycle,
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
        .routes(routes!(resend))
        .routes(routes!(status))
        .routes(routes!(verify))
        .routes(routes!(mailbox))
        .routes(routes!(resets::request))
        .routes(routes!(resets::reset))
        .routes(routes!(email_changes::confirm))
}

/// The answer to a followed link.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Verified {
    /// Always `verified`.
    pub status: String,
}

/// Follow a verification link: the token works once, before it expires and before a newer
/// one is issued. An unknown, malformed, used, revoked or expired token gets the same 404, so
/// answers tell nothing about which tokens exist.
#[utoipa::path(
    post,
    path = "/verifications/{token}",
    params(("token" = String, Path, description = "The token from the link")),
    responses(
        (status = 200, description = "The address is verified", body = Verified),
        (status = 404, description = "The link is unknown, used, superseded or expired", body = Problem),
    )
)]
async fn verify(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Result<Json<Verified>, ApiError> {
    // Garbage never reaches the database.
    let token = Token::parse(&token).ok_or_else(invalid_link)?;
    let now = Utc::now();
    let mut tx = Tx::begin(&state.db).await?;
    let used = store::use_token(&mut tx, &token.hash(), now.timestamp_millis())
        .await?
        .ok_or_else(invalid_link)?;
    if used.newly_verified {
        dozen_kit::figures::count(&mut tx, "verifications", now).await?;
        let event = UserEmailVerified {
            user_id: used.user_id,
            email: used.email,
            verified_at: now,
        };
        // The signup's trace goes on from the handler that issued the link (the link itself
        // carries nothing of it), linked to this request's trace.
        let following = Handling::resume(
            tracing::info_span!("verification.link_followed", user_id = %used.user_id),
            used.trace_parent.as_deref(),
        );
        following
            .run(state.outbox.publish(&mut tx, &event))
            .await
            .map_err(anyhow::Error::from)?;
    }
    tx.commit().await?;
    Ok(Json(Verified {
        status: "verified".to_owned(),
    }))
}

/// The caller's verification state.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VerificationStatus {
    /// `verified`, or `pending` until the link is followed.
    pub status: String,
    /// When the address was verified.
    pub verified_at: Option<DateTime<Utc>>,
    /// When the last verification mail was delivered (kept for a week).
    pub last_sent_at: Option<DateTime<Utc>>,
    /// Whether a verification mail is queued and not yet delivered.
    pub mail_pending: bool,
}

/// The caller's verification state: verified or not, and when the last link was mailed. 404
/// while this service does not know the caller (their signup is still on its way).
#[utoipa::path(
    get,
    path = "/verifications/status",
    responses(
        (status = 200, body = VerificationStatus),
        (status = 401, body = Problem),
        (status = 404, description = "No account of the caller is known here (yet)", body = Problem),
    ),
    security(("bearer" = []))
)]
async fn status(
    caller: Authenticated,
    State(state): State<AppState>,
) -> Result<Json<VerificationStatus>, ApiError> {
    let account = store::account_status(&state.db, caller.user_id)
        .await?
        .ok_or_else(|| Problem::new(StatusCode::NOT_FOUND, "no account of yours is known here yet"))?;
    let time = |millis: Option<i64>| millis.and_then(DateTime::from_timestamp_millis);
    Ok(Json(VerificationStatus {
        status: if account.verified_at.is_some() {
            "verified"
        } else {
            "pending"
        }
        .to_owned(),
        verified_at: time(account.verified_at),
        last_sent_at: time(account.last_sent_at),
        mail_pending: account.mail_pending,
    }))
}

/// The body of `POST /verifications/resend`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResendRequest {
    /// The address that signed up.
    pub email: String,
}

/// The answer to a resend request, whatever happened.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ResendAccepted {
    /// Always `accepted`.
    pub status: String,
}

/// Ask for a new verification link. The answer is 202 whether or not the address has an
/// account, is verified already, or is throttled (at most one mail per `RESEND_INTERVAL` and
/// `RESEND_DAILY_LIMIT` a day, the first one included): it tells nothing about accounts. When
/// the address has an unverified account and the throttle allows, its older links stop
/// working and a new one is mailed.
#[utoipa::path(
    post,
    path = "/verifications/resend",
    request_body = ResendRequest,
    responses(
        (status = 202, description = "A link is mailed if the address awaits verification", body = ResendAccepted),
        (status = 422, description = "The address is not valid", body = Problem),
    )
)]
async fn resend(
    State(state): State<AppState>,
    Json(request): Json<ResendRequest>,
) -> Result<(StatusCode, Json<ResendAccepted>), ApiError> {
    let email = Email::parse(&request.email).map_err(|error| {
        Problem::validation(std::iter::once(("email".to_owned(), error.to_owned())).collect())
    })?;
    let now = Utc::now().timestamp_millis();
    let mut tx = Tx::begin(&state.db).await?;
    if let Some(user_id) = store::unverified_account(&mut tx, email.as_str()).await?
        && store::take_resend_slot(&mut tx, user_id, state.links.throttle, now).await?
    {
        state.links.issue(&mut tx, user_id, email.as_str(), now).await?;
        tx.commit().await?;
        tracing::info!(%user_id, "verification link issued again");
    } else {
        tx.rollback().await?;
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(ResendAccepted {
            status: "accepted".to_owned(),
        }),
    ))
}

/// The dev mailbox: the mails written to the mailbox folder, newest first, a page at a time
/// (`?limit=`, `?after=<id>`). Only when `MAIL_URL` is a `file://` folder; over SMTP it answers
/// 404.
#[utoipa::path(
    get,
    path = "/mailbox",
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 200, description = "Page size, 1 to 200 (default 50)"),
        ("after" = Option<Uuid>, Query, description = "The id of the previous page's last mail"),
    ),
    responses(
        (status = 200, description = "The messages, newest first", body = [StoredMessage]),
        (status = 400, description = "A bad limit or cursor", body = Problem),
        (status = 404, description = "Mail goes over SMTP: there is no mailbox", body = Problem),
    )
)]
async fn mailbox(State(state): State<AppState>, page: Page) -> Result<Json<Vec<StoredMessage>>, ApiError> {
    let Some(listed) = state.mailer.list().await else {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "there is no mailbox: mail goes over SMTP (MAIL_URL is not a file:// folder)",
        )
        .into());
    };
    let messages = listed.map_err(anyhow::Error::from)?;
    let start = match page.after {
        None => 0,
        Some(after) => {
            messages
                .iter()
                .position(|message| message.id == after)
                .ok_or_else(paging::unknown_cursor)?
                + 1
        }
    };
    let limit = usize::try_from(page.limit).unwrap_or(usize::MAX);
    Ok(Json(messages.into_iter().skip(start).take(limit).collect()))
}

fn invalid_link() -> Problem {
    Problem::typed(
        StatusCode::NOT_FOUND,
        "invalid-verification-link",
        "Invalid verification link",
        "this link is unknown, already used, replaced by a newer one or expired; ask for a new one",
    )
}
