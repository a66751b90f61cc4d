//! Changing a user's email address. `POST /me/email` takes the new address and the password
//! (confirmed by passwords over its internal route), records the change as pending and
//! publishes `user.email_change_requested`, on which verification mails a link to the new
//! address and a notice to the old. Following the link, verification calls the internal
//! `PUT /profiles/{id}/email` (its alone): the address changes if the change is still the
//! user's latest and nobody took the address meanwhile, and `user.email_changed` tells the
//! services that keep the address.
//!
//! The request's answer is the same 202 whether or not another account has the address: only
//! that account's owner hears of it (a notice), so the route cannot tell who is registered.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use dozen_bus::contracts::{UserEmailChangeRequested, UserEmailChanged};
use dozen_kit::auth::{AuthError, Authenticated};
use dozen_kit::db::Tx;
use dozen_kit::email::Email;
use dozen_kit::{ApiError, Json, Problem};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use uuid::Uuid;

use super::{AppState, not_found};
use crate::domain::Profile;
use crate::store::{self, EmailChange};

/// The body of `POST /me/email`. No `Debug`: it holds a password.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct EmailChangeRequest {
    /// The new address.
    email: String,
    /// The caller's password.
    password: String,
}

/// The answer to an email change request, whatever happened.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EmailChangeAccepted {
    /// Always `accepted`: the change takes effect once the link mailed to the new address is
    /// followed.
    pub status: String,
}

/// Ask to change the caller's address. The password must be right (a wrong one counts as a
/// failed login and is throttled alike). The answer is the same 202 whether the new address
/// is free or another account has it; the change takes effect when the link mailed to it is
/// followed, and a newer request makes the older link do nothing.
#[utoipa::path(
    post,
    path = "/me/email",
    request_body = EmailChangeRequest,
    responses(
        (status = 202, description = "A link goes to the new address (if nobody has it), a notice to the old", body = EmailChangeAccepted),
        (status = 401, description = "No valid access token, or a wrong password", body = Problem),
        (status = 422, description = "Invalid fields, or the address is the caller's already", body = Problem),
        (status = 429, description = "Too many wrong passwords; see Retry-After", body = Problem),
    ),
    security(("bearer" = []))
)]
pub async fn request(
    caller: Authenticated,
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<EmailChangeRequest>,
) -> Result<Response, ApiError> {
    let mut errors = BTreeMap::new();
    let email = Email::parse(&body.email)
        .map_err(|error| errors.insert("email".to_owned(), error.to_owned()))
        .ok();
    if body.password.is_empty() {
        errors.insert("password".to_owned(), "must not be empty".to_owned());
    }
    let Some(profile) = store::find(&state.db, caller.user_id).await? else {
        // A token whose profile is gone (the signup undone) is as good as no token.
        return Ok(AuthError::Invalid.into_response());
    };
    if email.as_ref() == Some(&profile.email) {
        errors.insert("email".to_owned(), "is your address already".to_owned());
    }
    let (Some(email), true) = (email, errors.is_empty()) else {
        return Err(Problem::validation(errors).into());
    };
    if let Some(refusal) = confirm_password(&state, &headers, caller.user_id, &body.password).await? {
        return Ok(refusal);
    }

    let now = Utc::now();
    let change_id = Uuid::now_v7();
    let mut tx = Tx::begin(&state.db).await?;
    let taken = store::find_by_email(&state.db, &email)
        .await?
        .is_some_and(|owner| owner.id != caller.user_id);
    if taken {
        // No link can work for a taken address, and the request still supersedes earlier ones.
        store::drop_email_change(&mut tx, caller.user_id).await?;
    } else {
        store::request_email_change(&mut tx, caller.user_id, change_id, &email, now).await?;
    }
    let event = UserEmailChangeRequested {
        user_id: caller.user_id,
        change_id,
        old_email: profile.email.as_str().to_owned(),
        new_email: email.as_str().to_owned(),
        new_email_taken: taken,
        requested_at: now,
    };
    state
        .outbox
        .publish(&mut tx, &event)
        .await
        .map_err(anyhow::Error::from)?;
    tx.commit().await?;
    tracing::info!(user_id = %caller.user_id, %change_id, "email change requested");
    let accepted = EmailChangeAccepted {
        status: "accepted".to_owned(),
    };
    Ok((StatusCode::ACCEPTED, Json(accepted)).into_response())
}

/// Have passwords confirm the caller's password. `None` when it is right; the answer to give
/// otherwise (401 for a wrong one, passwords' 429 with its `Retry-After` when throttled). The
/// client's address, which the gateway put in `X-Forwarded-For`, goes on with the call: the
/// throttle counts per address.
async fn confirm_password(
    state: &AppState,
    headers: &HeaderMap,
    user_id: Uuid,
    password: &str,
) -> Result<Option<Response>, ApiError> {
    let mut call = state
        .passwords
        .call(
            Method::POST,
            &format!("/credentials/{user_id}/password-confirmations"),
        )
        .json(&json!({ "password": password }));
    if let Some(client) = headers.get("x-forwarded-for") {
        call = call.header("x-forwarded-for", client.clone());
    }
    let answer = call
        .send()
        .await
        .map_err(|error| unavailable(&error.to_string()))?;
    match answer.status() {
        status if status.is_success() => Ok(None),
        // No credential: the signup was undone, the token is as good as none.
        StatusCode::NOT_FOUND => Ok(Some(AuthError::Invalid.into_response())),
        StatusCode::UNAUTHORIZED | StatusCode::UNPROCESSABLE_ENTITY | StatusCode::TOO_MANY_REQUESTS => {
            let retry_after = answer.headers().get(axum::http::header::RETRY_AFTER).cloned();
            let problem = answer
                .json::<Problem>()
                .await
                .map_err(|error| unavailable(&error.to_string()))?;
            let mut response = problem.into_response();
            if let Some(retry_after) = retry_after {
                response
                    .headers_mut()
                    .insert(axum::http::header::RETRY_AFTER, retry_after);
            }
            Ok(Some(response))
        }
        status => Err(unavailable(&format!("answered {status}"))),
    }
}

fn unavailable(reason: &str) -> ApiError {
    tracing::warn!(reason, "passwords could not confirm a password");
    ApiError::Unavailable(anyhow::anyhow!(
        "passwords could not confirm the password: {reason}"
    ))
}

/// The body of `PUT /profiles/{id}/email`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailChangeProof {
    /// The change the followed link was mailed for.
    pub change_id: Uuid,
    /// The address the link was mailed to.
    pub email: String,
}

/// Apply a pending email change whose link was followed (internal: the verification
/// service). 404 when it is not the user's latest pending change (superseded, or applied
/// already), 409 when another account took the address first; nothing changes then.
#[utoipa::path(
    put,
    path = "/profiles/{id}/email",
    params(("id" = Uuid, Path, description = "The user's id")),
    request_body = EmailChangeProof,
    responses(
        (status = 200, description = "The address changed", body = Profile),
        (status = 404, description = "No such pending change", body = Problem),
        (status = 409, description = "Another account has the address", body = Problem),
        (status = 422, body = Problem),
    )
)]
pub async fn apply(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Json(proof): Json<EmailChangeProof>,
) -> Result<Json<Profile>, ApiError> {
    let email = Email::parse(&proof.email).map_err(|error| {
        Problem::validation(std::iter::once(("email".to_owned(), error.to_owned())).collect())
    })?;
    let now = Utc::now();
    let mut tx = Tx::begin(&state.db).await?;
    let (old_email, profile) =
        match store::apply_email_change(&mut tx, id, proof.change_id, &email, now).await? {
            EmailChange::Applied { old_email, profile } => (old_email, profile),
            EmailChange::NotPending => return Err(not_found().into()),
            EmailChange::Taken => {
                return Err(Problem::typed(
                    StatusCode::CONFLICT,
                    "email-taken",
                    "Email taken",
                    "another account has this address",
                )
                .into());
            }
        };
    let event = UserEmailChanged {
        user_id: id,
        old_email: old_email.as_str().to_owned(),
        new_email: email.as_str().to_owned(),
        changed_at: now,
    };
    state
        .outbox
        .publish(&mut tx, &event)
        .await
        .map_err(anyhow::Error::from)?;
    tx.commit().await?;
    tracing::info!(user_id = %id, change_id = %proof.change_id, "email changed");
    Ok(Json(profile))
}
