//! Deleting an account: `DELETE /me`, the caller leaving for good with their password.
//!
//! Passwords owns the credential, so it is where an account ends: the password is checked
//! under the login throttle (so the route is no cheaper password oracle than login), then in
//! one transaction the credential, every refresh session and the login failures counted
//! against the email go, and `user.deleted` goes to the outbox, on which every other service
//! erases what it holds. Access tokens already issued live on until they expire (`JWT_TTL`),
//! as after a logout, but their owner is gone from every service they could act on.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use dozen_bus::contracts::UserDeleted;
use dozen_kit::db::Tx;
use dozen_kit::{ApiError, Json, Problem};
use serde::Deserialize;
use utoipa::ToSchema;

use super::password::{Current, check_current, wrong_password};
use super::{AppState, ClientAddress};
use crate::domain::keys::SessionCaller;
use crate::domain::password::{MAX_CHARS, PasswordError};
use crate::store;

/// The body of a deletion. No `Debug`: it holds a password.
#[derive(Deserialize, ToSchema)]
pub struct AccountDeletion {
    /// The account's password, proving the caller is its owner and not someone at an
    /// unattended browser.
    password: String,
}

/// Delete the caller's account: the credential and every session at once, and everything
/// the other services hold about the caller once they handle `user.deleted`.
#[utoipa::path(
    delete,
    path = "/me",
    request_body = AccountDeletion,
    responses(
        (status = 202, description = "Deleted here; the other services erase the rest shortly"),
        (status = 401, description = "No valid access token, the account is gone already, or the password is wrong", body = Problem),
        (status = 422, description = "Invalid fields", body = Problem),
        (status = 429, description = "Too many wrong passwords; see Retry-After", body = Problem),
    ),
    security(("bearer" = []))
)]
pub async fn delete(
    State(state): State<AppState>,
    caller: SessionCaller,
    ClientAddress(address): ClientAddress,
    Json(body): Json<AccountDeletion>,
) -> Result<Response, ApiError> {
    // A token whose account is gone (deleted, or the signup undone) is as good as no token,
    // so a replayed deletion changes nothing.
    let Some(credential) = store::find_by_user(&state.db, caller.user_id).await? else {
        return Ok(dozen_kit::auth::AuthError::Invalid.into_response());
    };
    if body.password.is_empty() {
        return Err(invalid_password("must not be empty").into());
    }
    if body.password.chars().count() > MAX_CHARS {
        return Err(invalid_password(&PasswordError::TooLong.to_string()).into());
    }

    // The same throttle as a login: guessing the password here is no cheaper.
    match check_current(&state, &credential, &body.password, address).await? {
        Current::Right => {}
        Current::Throttled(response) => return Ok(response),
        Current::Wrong => return Err(wrong_password(StatusCode::UNAUTHORIZED).into()),
    }

    let mut tx = Tx::begin(&state.db).await?;
    if !store::delete_account(&mut tx, caller.user_id, &credential.email, &credential.phc_hash).await? {
        // Deleted or changed by a concurrent request meanwhile: that one decided.
        tx.rollback().await?;
        return Ok(dozen_kit::auth::AuthError::Invalid.into_response());
    }
    let event = UserDeleted {
        user_id: caller.user_id,
        occurred_at: Utc::now(),
    };
    state
        .outbox
        .publish(&mut tx, &event)
        .await
        .map_err(anyhow::Error::from)?;
    tx.commit().await?;
    metrics::counter!("passwords_accounts_deleted_total").increment(1);
    tracing::info!(user_id = %caller.user_id, "account deleted");
    Ok(StatusCode::ACCEPTED.into_response())
}

fn invalid_password(message: &str) -> Problem {
    Problem::validation(BTreeMap::from([("password".to_owned(), message.to_owned())]))
}
