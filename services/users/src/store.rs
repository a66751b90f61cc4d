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
    /// It is new; `replaced` are the profiles it replaced, see [`Replacing`].
    New(Replacing),
    /// The same id and email were created before (a retried call): nothing changed.
    AlreadyThere(Replacing),
    /// The email belongs to a verified profile, or the id to another email: nothing changed.
    Conflict,
    /// A newer signup replaced the profile with this id: it is never created again.
    Replaced,
}

/// A created profile, with the chain of unverified profiles it replaced for its address: the
/// one it replaced itself first, then the one that one replaced, and so on.
#[derive(Debug)]
pub struct Replacing {
    /// The profile.
    pub profile: Profile,
    /// The profiles replaced, newest first.
    pub replaced: Vec<Uuid>,
}

/// How often creating a profile tries again when other signups for its address replace its
/// holder meanwhile; past that it gives up as for a taken address.
const ATTEMPTS: usize = 32;

/// Create a profile. An email held by an unverified profile is taken over: that profile is
/// deleted and recorded as replaced by this one, in this transaction, so of concurrent signups
/// each replaces the one before it (a profile is replaced at most once), and a profile verified
/// meanwhile is never replaced. The caller commits only `New` and `AlreadyThere`.
pub async fn create(tx: &mut Tx, new: &NewProfile, now: DateTime<Utc>) -> Result<Created, sqlx::Error> {
    for _ in 0..ATTEMPTS {
        // Checked on every turn: a replacement of this id may have committed while the
        // insert below waited for it.
        if is_replaced(tx, new.id).await? {
            return Ok(Created::Replaced);
        }
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
        match find_in(tx, new.id).await? {
            Some(_) if is_replaced(tx, new.id).await? => return Ok(Created::Replaced),
            Some(profile) if inserted == 1 => {
                let replaced = replaced_by(tx, new.id).await?;
                return Ok(Created::New(Replacing { profile, replaced }));
            }
            Some(profile) if profile.email == new.email => {
                let replaced = replaced_by(tx, new.id).await?;
                return Ok(Created::AlreadyThere(Replacing { profile, replaced }));
            }
            Some(_) => return Ok(Created::Conflict),
            None => {}
        }
        // Another profile holds the email (or did a moment ago: then try again).
        let Some(holder) = find_by_email_in(tx, &new.email).await? else {
            continue;
        };
        if holder.verified {
            return Ok(Created::Conflict);
        }
        // Conditional: a concurrent replacement of the holder, or its verification, wins,
        // and the next turn sees who holds the email then.
        let deleted = with_conn!(tx.conn(), conn => sqlx::query("DELETE FROM profiles WHERE id = $1 AND NOT verified")
            .bind(holder.id)
            .execute(conn)
            .await
            .map(|done| done.rows_affected() == 1))?;
        if deleted {
            with_conn!(tx.conn(), conn => sqlx::query(
                "INSERT INTO replaced_profiles (id, replaced_by) VALUES ($1, $2)",
            )
            .bind(holder.id)
            .bind(new.id)
            .execute(conn)
            .await
            .map(drop))?;
        }
    }
    Ok(Created::Conflict)
}

/// Whether a newer signup replaced the profile with `id`.
async fn is_replaced(tx: &mut Tx, id: Uuid) -> Result<bool, sqlx::Error> {
    let row: Option<(i32,)> = with_conn!(tx.conn(), conn => sqlx::query_as(
        "SELECT 1 FROM replaced_profiles WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(conn)
    .await)?;
    Ok(row.is_some())
}

/// The chain of profiles `id` replaced, newest first.
async fn replaced_by(tx: &mut Tx, id: Uuid) -> Result<Vec<Uuid>, sqlx::Error> {
    let rows: Vec<(Uuid,)> = with_conn!(tx.conn(), conn => sqlx::query_as(
        "WITH RECURSIVE chain (id, depth) AS (
             SELECT id, 1 FROM replaced_profiles WHERE replaced_by = $1
             UNION ALL
             SELECT r.id, c.depth + 1 FROM replaced_profiles r JOIN chain c ON r.replaced_by = c.id
         )
         SELECT id FROM chain ORDER BY depth",
    )
    .bind(id)
    .fetch_all(conn)
    .await)?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// The profile with `email`, read inside `tx`.
async fn find_by_email_in(tx: &mut Tx, email: &Email) -> Result<Option<Profile>, sqlx::Error> {
    let query = sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM profiles WHERE email = $1"));
    let row: Option<ProfileRow> =
        with_conn!(tx.conn(), conn => sqlx::query_as(query).bind(email.as_str()).fetch_optional(conn).await)?;
    row.map(ProfileRow::into_profile).transpose()
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
