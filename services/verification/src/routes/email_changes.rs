//! Following an email change link: `POST /email-changes/{token}` takes the token, then asks
//! users (`PUT /profiles/{user_id}/email`, verification's alone) to apply the change it was
//! mailed for. Users applies it only while it is the user's latest request and nobody else has
//! the address, and publishes `user.email_changed`; otherwise nothing changes and the link is
//! spent.

use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use chrono::Utc;
use dozen_kit::{ApiError, Json, Problem};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::AppState;
use crate::domain::{Token, TokenHash};
use crate::store::{self, EmailChangeClaim};

/// The answer to a followed email change link.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EmailChanged {
    /// Always `changed`.
    pub status: String,
}

/// Follow an email change link: the account's address becomes the one the link was mailed
/// to. An unknown, malformed, used, replaced or expired token gets the same 404, and so does
/// a link whose change a newer request superseded; 409 when another account took the
/// address first. Nothing changes on any refusal.
#[utoipa::path(
    post,
    path = "/email-changes/{token}",
    params(("token" = String, Path, description = "The token from the link")),
    responses(
        (status = 200, description = "The address changed", body = EmailChanged),
        (status = 404, description = "The link is unknown, used, superseded or expired", body = Problem),
        (status = 409, description = "Another account has the address now", body = Problem),
    )
)]
pub async fn confirm(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Result<Json<EmailChanged>, ApiError> {
    let token = Token::parse(&token).ok_or_else(invalid_link)?;
    let hash = token.hash();
    let now = Utc::now().timestamp_millis();
    // Taken before the call, so that a link works once even when two requests race; given
    // back below if users cannot be asked.
    let claim = store::claim_email_change_token(&state.db, &hash, now)
        .await?
        .ok_or_else(invalid_link)?;
    match apply(&state, &claim).await {
        Ok(StatusCode::OK) => {
            tracing::info!(user_id = %claim.user_id, "email changed through a link");
            Ok(Json(EmailChanged {
                status: "changed".to_owned(),
            }))
        }
        Ok(StatusCode::CONFLICT) => Err(Problem::typed(
            StatusCode::CONFLICT,
            "email-taken",
            "Email taken",
            "another account uses this address now: nothing was changed",
        )
        .into()),
        Ok(_) => Err(invalid_link().into()),
        Err(error) => {
            give_back(&state, &hash, now).await;
            Err(error)
        }
    }
}

/// Ask users to apply the change; its status (200, 404 or 409), or an error when it could not
/// answer.
async fn apply(state: &AppState, claim: &EmailChangeClaim) -> Result<StatusCode, ApiError> {
    let answer = state
        .users
        .call(Method::PUT, &format!("/profiles/{}/email", claim.user_id))
        .json(&json!({ "change_id": claim.change_id, "email": claim.new_email }))
        .send()
        .await
        .map_err(|error| unavailable(&error.to_string()))?;
    match answer.status() {
        status @ (StatusCode::OK | StatusCode::NOT_FOUND | StatusCode::CONFLICT) => Ok(status),
        status => Err(unavailable(&format!("answered {status}"))),
    }
}

async fn give_back(state: &AppState, hash: &TokenHash, claimed_at: i64) {
    if let Err(error) = store::release_email_change_token(&state.db, hash, claimed_at).await {
        tracing::warn!(error = %error, "cannot give an email change token back");
    }
}

/// users could not apply the change: the client may try again (the link still works).
fn unavailable(reason: &str) -> ApiError {
    tracing::warn!(reason, "users could not apply an email change");
    Problem::typed(
        StatusCode::SERVICE_UNAVAILABLE,
        "service-unavailable",
        "Service unavailable",
        "the address cannot be changed right now; try again later (the link still works)",
    )
    .into()
}

fn invalid_link() -> Problem {
    Problem::typed(
        StatusCode::NOT_FOUND,
        "invalid-email-change-link",
        "Invalid email change link",
        "this link is unknown, already used, replaced by a newer request or expired",
    )
}
