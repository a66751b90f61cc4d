//! Signup records in the signup service's own database. Each statement is written once and
//! runs on SQLite or Postgres.

use chrono::{DateTime, Utc};
use dozen_kit::db::{Db, Tx};
use dozen_kit::email::Email;
use dozen_kit::{with_conn, with_pool};
use sqlx::types::Json;
use uuid::Uuid;

use crate::domain::{IdempotencyKey, Signup, SignupState};

const COLUMNS: &str =
    "idempotency_key, request_hash, user_id, email, display_name, interests, replaced, state, updated_at";

/// A recorded signup.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SignupRecord {
    /// Its Idempotency-Key.
    pub idempotency_key: String,
    /// The fingerprint of the request that made it.
    pub request_hash: String,
    /// The id its user gets.
    pub user_id: Uuid,
    /// The normalised email.
    pub email: String,
    /// The display name asked for.
    pub display_name: String,
    /// The interests: as sent, then as the profile keeps them once it exists.
    pub interests: Json<Vec<String>>,
    /// The unverified accounts its profile replaced for the address, newest first.
    pub replaced: Json<Vec<Uuid>>,
    /// How far it got (see [`SignupRecord::state`]).
    state: String,
    /// When it last moved.
    pub updated_at: DateTime<Utc>,
}

impl SignupRecord {
    /// How far it got.
    pub fn state(&self) -> Result<SignupState, sqlx::Error> {
        SignupState::parse(&self.state)
            .ok_or_else(|| sqlx::Error::Decode(format!("state {}", self.state).into()))
    }

    /// Its email, as the type the rest of the service uses.
    pub fn email(&self) -> Result<Email, sqlx::Error> {
        Email::parse(&self.email).map_err(|e| sqlx::Error::Decode(format!("email {e}").into()))
    }
}

/// Record `signup` under `key` unless the key is known, and return what is recorded under it
/// (a retry gets the first attempt's record).
pub async fn record(
    tx: &mut Tx,
    key: &IdempotencyKey,
    signup: &Signup,
    now: DateTime<Utc>,
) -> Result<SignupRecord, sqlx::Error> {
    // As sent, until users has made the profile (`profile_created`).
    let interests = &signup.request.interests;
    with_conn!(tx.conn(), conn => sqlx::query(
        "INSERT INTO signups (idempotency_key, request_hash, user_id, email, display_name, interests, state, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, 'started', $7, $7) ON CONFLICT DO NOTHING",
    )
    .bind(key.as_str())
    .bind(signup.fingerprint())
    .bind(Uuid::now_v7())
    .bind(signup.email.as_str())
    .bind(signup.request.display_name.trim())
    .bind(Json(interests))
    .bind(now)
    .execute(conn)
    .await
    .map(drop))?;
    let query = sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM signups WHERE idempotency_key = $1"
    ));
    with_conn!(tx.conn(), conn => sqlx::query_as(query).bind(key.as_str()).fetch_one(conn).await)
}

/// Move the signup under `key` to `state`, unless it has reached an end already; whether it
/// moved. Completing twice is thus impossible, and so is publishing twice.
pub async fn advance(
    tx: &mut Tx,
    key: &str,
    state: SignupState,
    now: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    with_conn!(tx.conn(), conn => sqlx::query(
        "UPDATE signups SET state = $2, updated_at = $3
         WHERE idempotency_key = $1 AND state NOT IN ('completed', 'conflict')",
    )
    .bind(key)
    .bind(state.as_str())
    .bind(now)
    .execute(conn)
    .await
    .map(|done| done.rows_affected() == 1))
}

/// The profile of the signup under `key` exists, with `interests` as users keeps them, having
/// replaced the accounts `replaced`; whether it moved.
pub async fn profile_created(
    tx: &mut Tx,
    key: &str,
    interests: &[String],
    replaced: &[Uuid],
    now: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    with_conn!(tx.conn(), conn => sqlx::query(
        "UPDATE signups SET state = $2, interests = $3, replaced = $4, updated_at = $5
         WHERE idempotency_key = $1 AND state NOT IN ('completed', 'conflict')",
    )
    .bind(key)
    .bind(SignupState::ProfileCreated.as_str())
    .bind(Json(interests))
    .bind(Json(replaced))
    .bind(now)
    .execute(conn)
    .await
    .map(|done| done.rows_affected() == 1))
}

/// Forget the signup under `key` (its request was invalid: nothing was created, and the key
/// may be used again with a corrected request).
pub async fn forget(tx: &mut Tx, key: &str) -> Result<(), sqlx::Error> {
    with_conn!(tx.conn(), conn => sqlx::query("DELETE FROM signups WHERE idempotency_key = $1")
        .bind(key)
        .execute(conn)
        .await
        .map(drop))
}

/// Forget every signup of a deleted account: its own, and every other attempt with its
/// email made up to `until` (conflicts, undone tries); a new signup for the freed address may
/// follow at once. How many went.
pub async fn forget_user(tx: &mut Tx, user_id: Uuid, until: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    with_conn!(tx.conn(), conn => sqlx::query(
        "DELETE FROM signups WHERE user_id = $1
            OR (email IN (SELECT email FROM signups WHERE user_id = $1) AND created_at <= $2)",
    )
    .bind(user_id)
    .bind(until)
    .execute(conn)
    .await
    .map(|done| done.rows_affected()))
}

/// Signups that stopped part-way and have not moved since `before`.
pub async fn unfinished(db: &Db, before: DateTime<Utc>) -> Result<Vec<SignupRecord>, sqlx::Error> {
    let query = sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM signups
         WHERE state IN ('started', 'profile_created', 'credential_created') AND updated_at < $1
         ORDER BY updated_at"
    ));
    with_pool!(db, pool => sqlx::query_as(query).bind(before).fetch_all(pool).await)
}
