//! Profiles in the users service's own database. Each statement is written once and runs on
//! SQLite or Postgres (`with_conn!`, `with_pool!`); ids are UUIDs on both.

use chrono::{DateTime, Utc};
use dozen_kit::db::{Db, Tx};
use dozen_kit::email::Email;
use dozen_kit::{with_conn, with_pool};
use sqlx::types::Json;
use uuid::Uuid;

use crate::domain::{NewProfile, Profile, ProfileChanges};

const COLUMNS: &str = "id, email, display_name, interests, verified, created_at, updated_at";

#[derive(sqlx::FromRow)]
struct ProfileRow {
    id: Uuid,
    email: String,
    display_name: String,
    interests: Json<Vec<String>>,
    verified: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl ProfileRow {
    fn into_profile(self) -> Result<Profile, sqlx::Error> {
        // Only valid addresses are ever written; a bad one means the row was edited by hand.
        let email =
            Email::parse(&self.email).map_err(|e| sqlx::Error::Decode(format!("email {e}").into()))?;
        Ok(Profile {
            id: self.id,
            email,
            display_name: self.display_name,
            interests: self.interests.0,
            verified: self.verified,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

/// What creating a profile came to.
#[derive(Debug)]
pub enum Created {
    /// It is new.
    New(Profile),
    /// The same id and email were created before (a retried call): nothing changed.
    AlreadyThere(Profile),
    /// The email belongs to another id, or the id to another email: nothing changed.
    Conflict,
}

/// Create a profile, unless one with its id or email exists.
pub async fn create(tx: &mut Tx, new: &NewProfile, now: DateTime<Utc>) -> Result<Created, sqlx::Error> {
    let inserted = with_conn!(tx.conn(), conn => sqlx::query(
        "INSERT INTO profiles (id, email, display_name, interests, verified, created_at, updated_at)
         VALUES ($1, $2, $3, $4, FALSE, $5, $5) ON CONFLICT DO NOTHING",
    )
    .bind(new.id)
    .bind(new.email.as_str())
    .bind(new.display_name.as_str())
    .bind(Json(new.interests.as_slice()))
    .bind(now)
    .execute(conn)
    .await
    .map(|done| done.rows_affected()))?;
    let stored = find_in(tx, new.id).await?;
    Ok(match stored {
        Some(profile) if inserted == 1 => Created::New(profile),
        Some(profile) if profile.email == new.email => Created::AlreadyThere(profile),
        _ => Created::Conflict,
    })
}

/// The profile with `id`, read inside `tx`.
pub async fn find_in(tx: &mut Tx, id: Uuid) -> Result<Option<Profile>, sqlx::Error> {
    let query = sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM profiles WHERE id = $1"));
    let row: Option<ProfileRow> =
        with_conn!(tx.conn(), conn => sqlx::query_as(query).bind(id).fetch_optional(conn).await)?;
    row.map(ProfileRow::into_profile).transpose()
}

/// The profile with `id`.
pub async fn find(db: &Db, id: Uuid) -> Result<Option<Profile>, sqlx::Error> {
    let query = sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM profiles WHERE id = $1"));
    let row: Option<ProfileRow> =
        with_pool!(db, pool => sqlx::query_as(query).bind(id).fetch_optional(pool).await)?;
    row.map(ProfileRow::into_profile).transpose()
}

/// The profile with `email`.
pub async fn find_by_email(db: &Db, email: &Email) -> Result<Option<Profile>, sqlx::Error> {
    let query = sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM profiles WHERE email = $1"));
    let row: Option<ProfileRow> =
        with_pool!(db, pool => sqlx::query_as(query).bind(email.as_str()).fetch_optional(pool).await)?;
    row.map(ProfileRow::into_profile).transpose()
}

/// Apply `changes`; `None` when there is no such profile.
pub async fn update(
    tx: &mut Tx,
    id: Uuid,
    changes: &ProfileChanges,
    now: DateTime<Utc>,
) -> Result<Option<Profile>, sqlx::Error> {
    let Some(mut profile) = find_in(tx, id).await? else {
        return Ok(None);
    };
    if let Some(name) = &changes.display_name {
        profile.display_name = name.as_str().to_owned();
    }
    if let Some(interests) = &changes.interests {
        profile.interests = interests.as_slice().to_vec();
    }
    profile.updated_at = now;
    with_conn!(tx.conn(), conn => sqlx::query(
        "UPDATE profiles SET display_name = $2, interests = $3, updated_at = $4 WHERE id = $1",
    )
    .bind(id)
    .bind(&profile.display_name)
    .bind(Json(&profile.interests))
    .bind(now)
    .execute(conn)
    .await
    .map(drop))?;
    Ok(Some(profile))
}

/// Mark the profile verified. `None` when there is no such profile; the profile, with whether
/// it changed, otherwise.
pub async fn mark_verified(
    tx: &mut Tx,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<Option<(Profile, bool)>, sqlx::Error> {
    let changed = with_conn!(tx.conn(), conn => sqlx::query(
        "UPDATE profiles SET verified = TRUE, updated_at = $2 WHERE id = $1 AND NOT verified",
    )
    .bind(id)
    .bind(now)
    .execute(conn)
    .await
    .map(|done| done.rows_affected() == 1))?;
    Ok(find_in(tx, id).await?.map(|profile| (profile, changed)))
}

/// Delete the profile (undoing a signup that could not finish, or a deleted account); whether
/// there was one.
pub async fn delete(tx: &mut Tx, id: Uuid) -> Result<bool, sqlx::Error> {
    with_conn!(tx.conn(), conn => sqlx::query("DELETE FROM profiles WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await
        .map(|done| done.rows_affected() == 1))
}

/// Record `change_id` as `id`'s pending email change to `new_email`, replacing any earlier one.
pub async fn request_email_change(
    tx: &mut Tx,
    id: Uuid,
    change_id: Uuid,
    new_email: &Email,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    with_conn!(tx.conn(), conn => sqlx::query(
        "INSERT INTO email_changes (user_id, change_id, new_email, requested_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (user_id) DO UPDATE
         SET change_id = excluded.change_id, new_email = excluded.new_email, requested_at = excluded.requested_at",
    )
    .bind(id)
    .bind(change_id)
    .bind(new_email.as_str())
    .bind(now)
    .execute(conn)
    .await
    .map(drop))
}

/// Forget `id`'s pending email change, if any: a newer request supersedes it.
pub async fn drop_email_change(tx: &mut Tx, id: Uuid) -> Result<(), sqlx::Error> {
    with_conn!(tx.conn(), conn => sqlx::query("DELETE FROM email_changes WHERE user_id = $1")
        .bind(id)
        .execute(conn)
        .await
        .map(drop))
}

/// What applying an email change came to.
#[derive(Debug)]
pub enum EmailChange {
    /// The profile has the new address; the old one is given.
    Applied { old_email: Email, profile: Profile },
    /// The change is not `id`'s pending one (superseded, or applied already): nothing changed.
    NotPending,
    /// Another profile has the address: nothing changed.
    Taken,
}

/// Give `id` the address of its pending change `change_id`, and forget the change. Of two
/// profiles racing for one address the unique email lets one win; the other gets `Taken`.
pub async fn apply_email_change(
    tx: &mut Tx,
    id: Uuid,
    change_id: Uuid,
    new_email: &Email,
    now: DateTime<Utc>,
) -> Result<EmailChange, sqlx::Error> {
    let pending = with_conn!(tx.conn(), conn => sqlx::query(
        "DELETE FROM email_changes WHERE user_id = $1 AND change_id = $2 AND new_email = $3",
    )
    .bind(id)
    .bind(change_id)
    .bind(new_email.as_str())
    .execute(conn)
    .await
    .map(|done| done.rows_affected() == 1))?;
    let Some(mut profile) = find_in(tx, id).await?.filter(|_| pending) else {
        return Ok(EmailChange::NotPending);
    };
    let updated = with_conn!(tx.conn(), conn => sqlx::query(
        "UPDATE profiles SET email = $2, updated_at = $3 WHERE id = $1",
    )
    .bind(id)
    .bind(new_email.as_str())
    .bind(now)
    .execute(conn)
    .await
    .map(drop));
    match updated {
        Ok(_) => {}
        Err(sqlx::Error::Database(error)) if error.is_unique_violation() => return Ok(EmailChange::Taken),
        Err(error) => return Err(error),
    }
    let old_email = std::mem::replace(&mut profile.email, new_email.clone());
    profile.updated_at = now;
    Ok(EmailChange::Applied { old_email, profile })
}
