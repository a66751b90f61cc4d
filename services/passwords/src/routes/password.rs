//! Replacing a password: `PUT /me/password`, the caller changing their own (the current
//! password required), and `PUT /credentials/{user_id}/password`, verification's alone, once a
//! reset link was followed (the link is the proof).
//!
//! Either way the new password obeys the signup rules, and in one transaction the hash is
//! replaced, the account's refresh sessions end (all of them after a reset; all but the
//! caller's after a change) and `user.password_changed` goes to the outbox, so that
//! verification mails the owner a notice.
//!
//! `POST /credentials/{user_id}/password-confirmations`, users' alone, checks the password an
//! email change is given, under the same login throttle as a change's current password.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use dozen_bus::contracts::UserPasswordChanged;
use dozen_kit::db::Tx;
use dozen_kit::{ApiError, Json, Problem};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{AppState, ClientAddress, hashing_failed, parse_user_id, too_many_failures};
use crate::domain::keys::SessionCaller;
use crate::domain::password::{MAX_CHARS, Password, PasswordError};
use crate::domain::throttle::{self, Subject};
use crate::store;

/// The body of a reset. No `Debug`: it holds a password.
#[derive(Deserialize, ToSchema)]
pub struct NewPassword {
    /// The new password, under the signup rules.
    password: String,
}

/// Set the password of `user_id` after a reset link was followed: every session of the
/// account ends.
#[utoipa::path(
    put,
    path = "/credentials/{user_id}/password",
    params(("user_id" = Uuid, Path, description = "The user's id")),
    request_body = NewPassword,
    responses(
        (status = 204, description = "Replaced; every session of the account ended"),
        (status = 404, description = "No credential for the user", body = Problem),
        (status = 422, description = "The password breaks the rules", body = Problem),
    )
)]
pub async fn reset(
    State(state): State<AppState>,
    Path(user_id): Path<String>,
    Json(body): Json<NewPassword>,
) -> Result<StatusCode, ApiError> {
    let mut errors = BTreeMap::new();
    let Some(user_id) = parse_user_id(&user_id, &mut errors) else {
        return Err(Problem::validation(errors).into());
    };
    let credential = store::find_by_user(&state.db, user_id)
        .await?
        .ok_or_else(|| Problem::new(StatusCode::NOT_FOUND, "no credential for this user"))?;
    let password = new_password(body.password, "password", &credential.email)?;
    let phc_hash = state
        .hasher
        .hash(password.expose())
        .await
        .map_err(hashing_failed)?;
    replace(&state, user_id, &phc_hash, None, "reset").await?;
    tracing::info!(%user_id, "password reset");
    Ok(StatusCode::NO_CONTENT)
}

/// The body of a change. No `Debug`: it holds passwords.
#[derive(Deserialize, ToSchema)]
pub struct PasswordChange {
    /// The password in use now.
    current_password: String,
    /// The password to use from now on, under the signup rules.
    new_password: String,
}

/// Change the caller's password: the current one must be given (a wrong one counts as a
/// failed login, and is throttled alike). Every other session of the caller ends; this one
/// goes on.
#[utoipa::path(
    put,
    path = "/me/password",
    request_body = PasswordChange,
    responses(
        (status = 204, description = "Changed; every other session of the caller ended"),
        (status = 401, description = "No valid access token", body = Problem),
        (status = 403, description = "The current password is wrong", body = Problem),
        (status = 409, description = "The password was changed meanwhile by another request", body = Problem),
        (status = 422, description = "Invalid fields: the new password breaks the rules", body = Problem),
        (status = 429, description = "Too many wrong passwords; see Retry-After", body = Problem),
    ),
    security(("bearer" = []))
)]
pub async fn change(
    State(state): State<AppState>,
    caller: SessionCaller,
    ClientAddress(address): ClientAddress,
    Json(body): Json<PasswordChange>,
) -> Result<Response, ApiError> {
    // A token whose credential is gone (the signup undone) is as good as no token.
    let Some(credential) = store::find_by_user(&state.db, caller.user_id).await? else {
        return Ok(dozen_kit::auth::AuthError::Invalid.into_response());
    };
    // Cheap checks first: a refused new password costs no hash and counts no failure.
    let mut errors = BTreeMap::new();
    if body.current_password.is_empty() {
        errors.insert("current_password".to_owned(), "must not be empty".to_owned());
    } else if body.current_password.chars().count() > MAX_CHARS {
        errors.insert("current_password".to_owned(), PasswordError::TooLong.to_string());
    }
    let new = Password::parse(body.new_password, &[&credential.email])
        .map_err(|error| errors.insert("new_password".to_owned(), error.to_string()))
        .ok();
    let (Some(new), true) = (new, errors.is_empty()) else {
        return Err(Problem::validation(errors).into());
    };

    match check_current(&state, &credential, &body.current_password, address).await? {
        Current::Right => {}
        Current::Throttled(response) => return Ok(response),
        Current::Wrong => return Err(wrong_password(StatusCode::FORBIDDEN).into()),
    }

    let phc_hash = state.hasher.hash(new.expose()).await.map_err(hashing_failed)?;
    let replaced = replace(
        &state,
        caller.user_id,
        &phc_hash,
        Some((&credential.phc_hash, caller.session_id)),
        "change",
    )
    .await?;
    if !replaced {
        return Err(Problem::typed(
            StatusCode::CONFLICT,
            "password-changed-meanwhile",
            "Password changed meanwhile",
            "the password was changed by another request meanwhile; log in again",
        )
        .into());
    }
    tracing::info!(user_id = %caller.user_id, "password changed");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// What the password given as the current one came to.
pub(super) enum Current {
    Right,
    Wrong,
    /// Too many wrong ones: the 429 to answer, nothing hashed.
    Throttled(Response),
}

/// Check `password` against the credential under the login throttle: guessing it here is no
/// cheaper than at login, and a wrong one counts as a failed login.
pub(super) async fn check_current(
    state: &AppState,
    credential: &store::Credential,
    password: &str,
    address: Option<IpAddr>,
) -> Result<Current, ApiError> {
    let client = address.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let subjects = Subject::of_login(&credential.email, client);
    let now = throttle::now_millis();
    if let Err(locked_until) = store::reserve(&state.db, &subjects, now, &state.throttle).await? {
        return Ok(Current::Throttled(too_many_failures(throttle::retry_after_secs(
            locked_until,
            now,
        ))));
    }
    let matches = state
        .hasher
        .verify(password, &credential.phc_hash)
        .await
        .map_err(hashing_failed)?;
    if !matches {
        // The reservation counted it as a failure already.
        return Ok(Current::Wrong);
    }
    store::release(&state.db, &subjects, &state.throttle).await?;
    Ok(Current::Right)
}

pub(super) fn wrong_password(status: StatusCode) -> Problem {
    Problem::typed(
        status,
        "wrong-password",
        "Wrong password",
        "the password is wrong",
    )
}

/// The body of a password confirmation. No `Debug`: it holds a password.
#[derive(Deserialize, ToSchema)]
pub struct PasswordConfirmation {
    /// The password the user gave as theirs.
    password: String,
}

/// Confirm that `password` is `user_id`'s (internal, users' alone: an email change needs the
/// password). A wrong one counts as a failed login from the client address that users passes
/// on (`X-Forwarded-For`), and is throttled alike.
#[utoipa::path(
    post,
    path = "/credentials/{user_id}/password-confirmations",
    params(("user_id" = Uuid, Path, description = "The user's id")),
    request_body = PasswordConfirmation,
    responses(
        (status = 204, description = "It is the user's password"),
        (status = 401, description = "The password is wrong", body = Problem),
        (status = 404, description = "No credential for the user", body = Problem),
        (status = 422, description = "The password is empty or too long", body = Problem),
        (status = 429, description = "Too many wrong passwords; see Retry-After", body = Problem),
    )
)]
pub async fn confirm(
    State(state): State<AppState>,
    Path(user_id): Path<String>,
    ClientAddress(address): ClientAddress,
    Json(body): Json<PasswordConfirmation>,
) -> Result<Response, ApiError> {
    let mut errors = BTreeMap::new();
    let user_id = parse_user_id(&user_id, &mut errors);
    if body.password.is_empty() {
        errors.insert("password".to_owned(), "must not be empty".to_owned());
    } else if body.password.chars().count() > MAX_CHARS {
        errors.insert("password".to_owned(), PasswordError::TooLong.to_string());
    }
    let (Some(user_id), true) = (user_id, errors.is_empty()) else {
        return Err(Problem::validation(errors).into());
    };
    let credential = store::find_by_user(&state.db, user_id)
        .await?
        .ok_or_else(|| Problem::new(StatusCode::NOT_FOUND, "no credential for this user"))?;
    match check_current(&state, &credential, &body.password, address).await? {
        Current::Right => Ok(StatusCode::NO_CONTENT.into_response()),
        Current::Throttled(response) => Ok(response),
        Current::Wrong => Err(wrong_password(StatusCode::UNAUTHORIZED).into()),
    }
}

/// A password under the signup rules (knowing the account's email), or a 422 naming `field`.
fn new_password(text: String, field: &str, email: &str) -> Result<Password, Problem> {
    Password::parse(text, &[email])
        .map_err(|error| Problem::validation(BTreeMap::from([(field.to_owned(), error.to_string())])))
}

/// In one transaction: store `phc_hash` (only over `expected.0` when given), end the account's
/// sessions (but `expected.1` when given) and publish `user.password_changed`. `false`, with
/// nothing changed, when the expected hash was replaced meanwhile.
async fn replace(
    state: &AppState,
    user_id: Uuid,
    phc_hash: &str,
    expected: Option<(&str, Uuid)>,
    method: &str,
) -> Result<bool, ApiError> {
    let mut tx = Tx::begin(&state.db).await?;
    if !store::set_hash(&mut tx, user_id, phc_hash, expected.map(|(old, _)| old)).await? {
        tx.rollback().await?;
        return Ok(false);
    }
    let ended = store::end_sessions(&mut tx, user_id, expected.map(|(_, keep)| keep)).await?;
    let event = UserPasswordChanged {
        user_id,
        occurred_at: Utc::now(),
        method: method.to_owned(),
    };
    state
        .outbox
        .publish(&mut tx, &event)
        .await
        .map_err(anyhow::Error::from)?;
    tx.commit().await?;
    metrics::counter!("passwords_password_changes_total", "method" => method.to_owned()).increment(1);
    tracing::debug!(%user_id, sessions_ended = ended, "sessions ended by a password change");
    Ok(true)
}
