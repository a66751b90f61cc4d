//! Password resets: `POST /password-resets` mails a link to a verified address, and
//! `POST /password-resets/{token}` sets the new password through passwords' internal
//! `PUT /credentials/{user_id}/password`, which checks it, replaces the hash, ends every session
//! and publishes `user.password_changed` (whose handler here mails the notice).
//!
//! The request's answer tells nothing about accounts: the same 202 and body for any address,
//! given before the work is done (in the background), so that neither the answer nor its time
//! says whether a mail went out.

use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use chrono::Utc;
use dozen_kit::db::Tx;
use dozen_kit::email::Email;
use dozen_kit::http::client::Upstream;
use dozen_kit::{ApiError, Json, Problem};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::AppState;
use crate::domain::{Token, TokenHash};
use crate::links::Links;
use crate::store;

/// The body of `POST /password-resets`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    /// The account's address.
    pub email: String,
}

/// The answer to a reset request, whatever happened.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ResetAccepted {
    /// Always `accepted`.
    pub status: String,
}

/// Ask for a password reset link. The answer is 202, with the same body, whether or not the
/// address has an account, is verified, or is throttled (at most one reset mail per
/// `RESEND_INTERVAL` and `RESEND_DAILY_LIMIT` a day): it tells nothing about accounts. When the
/// address is an account's verified one and the throttle allows, the account's earlier reset
/// links stop working and a new one is mailed, valid for `RESET_TOKEN_TTL`.
#[utoipa::path(
    post,
    path = "/password-resets",
    request_body = ResetRequest,
    responses(
        (status = 202, description = "A link is mailed if the address is an account's verified one", body = ResetAccepted),
        (status = 422, description = "The address is not valid", body = Problem),
    )
)]
pub async fn request(
    State(state): State<AppState>,
    Json(request): Json<ResetRequest>,
) -> Result<(StatusCode, Json<ResetAccepted>), ApiError> {
    let email = Email::parse(&request.email).map_err(|error| {
        Problem::validation(std::iter::once(("email".to_owned(), error.to_owned())).collect())
    })?;
    // After the answer: its time is the same whatever the address.
    let (db, links) = (state.db.clone(), state.links.clone());
    state.lifecycle.spawn(async move {
        if let Err(error) = issue_reset(&db, &links, &email).await {
            tracing::warn!(error = format!("{error:#}"), "cannot issue a password reset link");
        }
    });
    Ok((
        StatusCode::ACCEPTED,
        Json(ResetAccepted {
            status: "accepted".to_owned(),
        }),
    ))
}

async fn issue_reset(db: &dozen_kit::db::Db, links: &Links, email: &Email) -> anyhow::Result<()> {
    let now = Utc::now().timestamp_millis();
    let mut tx = Tx::begin(db).await?;
    let Some(user_id) = store::verified_account(&mut tx, email.as_str()).await? else {
        tx.rollback().await?;
        return Ok(());
    };
    if links.issue_reset(&mut tx, user_id, email.as_str(), now).await? {
        tx.commit().await?;
        tracing::info!(%user_id, "password reset link issued");
    } else {
        tx.rollback().await?;
        tracing::info!(%user_id, "password reset link throttled");
    }
    Ok(())
}

/// The body of `POST /password-resets/{token}`. No `Debug`: it holds a password.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct ResetPassword {
    /// The new password, under the signup rules.
    pub password: String,
}

/// Follow a reset link with a new password: it must obey the signup rules (a refusal is a 422
/// and the link still works). The password is replaced, every session of the account ends,
/// the link is used up and the owner gets a notice. An unknown, malformed, used, replaced or
/// expired token gets the same 404.
#[utoipa::path(
    post,
    path = "/password-resets/{token}",
    params(("token" = String, Path, description = "The token from the link")),
    request_body = ResetPassword,
    responses(
        (status = 204, description = "The password is replaced; every session of the account ended"),
        (status = 404, description = "The link is unknown, used, replaced or expired", body = Problem),
        (status = 422, description = "The new password breaks the rules", body = Problem),
    )
)]
pub async fn reset(
    State(state): State<AppState>,
    Path(token): Path<String>,
    Json(body): Json<ResetPassword>,
) -> Result<StatusCode, ApiError> {
    let token = Token::parse(&token).ok_or_else(invalid_link)?;
    if body.password.is_empty() {
        let errors = std::iter::once(("password".to_owned(), "must not be empty".to_owned())).collect();
        return Err(Problem::validation(errors).into());
    }
    let hash = token.hash();
    let now = Utc::now().timestamp_millis();
    // Taken before the call, so that a link works once even when two requests race; given
    // back below if the password does not change.
    let user_id = store::claim_reset_token(&state.db, &hash, now)
        .await?
        .ok_or_else(invalid_link)?;
    match set_password(&state.passwords, user_id, &body.password).await {
        Ok(SetPassword::Done) => {
            tracing::info!(%user_id, "password reset through a link");
            Ok(StatusCode::NO_CONTENT)
        }
        Ok(SetPassword::NoCredential) => Err(invalid_link().into()),
        Ok(SetPassword::Refused(problem)) => {
            give_back(&state, &hash, now).await;
            Err(problem.into())
        }
        Err(error) => {
            give_back(&state, &hash, now).await;
            Err(error)
        }
    }
}

async fn give_back(state: &AppState, hash: &TokenHash, claimed_at: i64) {
    if let Err(error) = store::release_reset_token(&state.db, hash, claimed_at).await {
        tracing::warn!(error = %error, "cannot give a reset token back");
    }
}

/// What passwords said to a new password.
enum SetPassword {
    Done,
    /// The user has no credential (their signup was undone).
    NoCredential,
    /// The password breaks the rules: the problem names why.
    Refused(Problem),
}

async fn set_password(passwords: &Upstream, user_id: Uuid, password: &str) -> Result<SetPassword, ApiError> {
    let answer = passwords
        .call(Method::PUT, &format!("/credentials/{user_id}/password"))
        .json(&json!({ "password": password }))
        .send()
        .await
        .map_err(|error| unavailable(&error.to_string()))?;
    match answer.status() {
        status if status.is_success() => Ok(SetPassword::Done),
        StatusCode::NOT_FOUND => Ok(SetPassword::NoCredential),
        StatusCode::UNPROCESSABLE_ENTITY => {
            let problem = answer
                .json::<Problem>()
                .await
                .map_err(|error| unavailable(&error.to_string()))?;
            Ok(SetPassword::Refused(problem))
        }
        status => Err(unavailable(&format!("answered {status}"))),
    }
}

/// passwords could not set the password: the client may try again (the link still works).
fn unavailable(reason: &str) -> ApiError {
    tracing::warn!(reason, "passwords could not set a reset password");
    Problem::typed(
        StatusCode::SERVICE_UNAVAILABLE,
        "service-unavailable",
        "Service unavailable",
        "the password cannot be set right now; try again later (the link still works)",
    )
    .into()
}

fn invalid_link() -> Problem {
    Problem::typed(
        StatusCode::NOT_FOUND,
        "invalid-reset-link",
        "Invalid password reset link",
        "this link is unknown, already used, replaced by a newer one or expired; ask for a new one",
    )
}
