//! The passwords service's tables: `credentials` and `login_throttle` (keyed by
//! [`Subject::key`]; the rules are the domain's, see `domain::throttle`). One implementation per
//! backend, matching on [`Db`]; nothing else in the crate writes SQL. SQLite keeps user ids as
//! hyphenated text, Postgres as `UUID`.

use dozen_kit::db::{Db, Tx, TxConn};
use dozen_kit::with_pool;
use uuid::Uuid;
use uuid::fmt::Hyphenated;

use crate::domain::throttle::{Count, Reservation, Subject, ThrottlePolicy};

/// A stored credential.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// The user it belongs to.
    pub user_id: Uuid,
    /// The normalised email it logs in with.
    pub email: String,
    /// The argon2id PHC string.
    pub phc_hash: String,
    /// Whether the email has been verified (login is refused until it is).
    pub verified: bool,
}

impl std::fmt::Debug for Credential {
    // The hash is not a secret in the way a password is, but it has no place in logs either.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("user_id", &self.user_id)
            .field("email", &self.email)
            .field("verified", &self.verified)
            .finish_non_exhaustive()
    }
}

type SqliteRow = (Hyphenated, String, String, bool);
type PgRow = (Uuid, String, String, bool);

fn from_sqlite((user_id, email, phc_hash, verified): SqliteRow) -> Credential {
    Credential {
        user_id: user_id.into_uuid(),
        email,
        phc_hash,
        verified,
    }
}

fn from_pg((user_id, email, phc_hash, verified): PgRow) -> Credential {
    Credential {
        user_id,
        email,
        phc_hash,
        verified,
    }
}

const SELECT: &str = "SELECT user_id, email, phc_hash, verified FROM credentials";

/// The credential logged in with `email` (normalised), if any.
pub async fn find_by_email(db: &Db, email: &str) -> Result<Option<Credential>, sqlx::Error> {
    let query = sqlx::AssertSqlSafe(format!("{SELECT} WHERE email = $1"));
    Ok(match db {
        Db::Sqlite(pool) => sqlx::query_as::<_, SqliteRow>(query)
            .bind(email)
            .fetch_optional(pool)
            .await?
            .map(from_sqlite),
        Db::Postgres(pool) => sqlx::query_as::<_, PgRow>(query)
            .bind(email)
            .fetch_optional(pool)
            .await?
            .map(from_pg),
    })
}

/// The credential of `user_id`, if any.
pub async fn find_by_user(db: &Db, user_id: Uuid) -> Result<Option<Credential>, sqlx::Error> {
    let query = sqlx::AssertSqlSafe(format!("{SELECT} WHERE user_id = $1"));
    Ok(match db {
        Db::Sqlite(pool) => sqlx::query_as::<_, SqliteRow>(query)
            .bind(user_id.hyphenated())
            .fetch_optional(pool)
            .await?
            .map(from_sqlite),
        Db::Postgres(pool) => sqlx::query_as::<_, PgRow>(query)
            .bind(user_id)
            .fetch_optional(pool)
            .await?
            .map(from_pg),
    })
}

/// Store a new credential; `false` when the user id or the email is already taken (the caller
/// reads the existing row to tell which).
pub async fn insert(db: &Db, user_id: Uuid, email: &str, phc_hash: &str) -> Result<bool, sqlx::Error> {
    const INSERT: &str = "INSERT INTO credentials (user_id, email, phc_hash) VALUES ($1, $2, $3) \
                          ON CONFLICT DO NOTHING";
    let done = match db {
        Db::Sqlite(pool) => sqlx::query(INSERT)
            .bind(user_id.hyphenated())
            .bind(email)
            .bind(phc_hash)
            .execute(pool)
            .await?
            .rows_affected(),
        Db::Postgres(pool) => sqlx::query(INSERT)
            .bind(user_id)
            .bind(email)
            .bind(phc_hash)
            .execute(pool)
            .await?
            .rows_affected(),
    };
    Ok(done == 1)
}

/// Remove the credential of `user_id`; `false` if there was none.
pub async fn delete(db: &Db, user_id: Uuid) -> Result<bool, sqlx::Error> {
    const DELETE: &str = "DELETE FROM credentials WHERE user_id = $1";
    let done = match db {
        Db::Sqlite(pool) => sqlx::query(DELETE)
            .bind(user_id.hyphenated())
            .execute(pool)
            .await?
            .rows_affected(),
        Db::Postgres(pool) => sqlx::query(DELETE)
            .bind(user_id)
            .execute(pool)
            .await?
            .rows_affected(),
    };
    Ok(done > 0)
}

/// Replace the hash of `user_id` by `new`, only if it is still `old` (another instance may
/// have upgraded it, or the password changed, meanwhile).
pub async fn replace_hash(db: &Db, user_id: Uuid, old: &str, new: &str) -> Result<bool, sqlx::Error> {
    let done = match db {
        Db::Sqlite(pool) => sqlx::query(
            "UPDATE credentials SET phc_hash = $1, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
             WHERE user_id = $2 AND phc_hash = $3",
        )
        .bind(new)
        .bind(user_id.hyphenated())
        .bind(old)
        .execute(pool)
        .await?
        .rows_affected(),
        Db::Postgres(pool) => sqlx::query(
            "UPDATE credentials SET phc_hash = $1, updated_at = now() WHERE user_id = $2 AND phc_hash = $3",
        )
        .bind(new)
        .bind(user_id)
        .bind(old)
        .execute(pool)
        .await?
        .rows_affected(),
    };
    Ok(done == 1)
}

/// Allow `user_id` to log in: their email is verified. Runs inside the caller's transaction
/// (the `user.email_verified` handler's, with its inbox entry). Idempotent; `false` when the
/// user has no credential (yet, or any more).
pub async fn mark_verified(tx: &mut Tx, user_id: Uuid) -> Result<bool, sqlx::Error> {
    // `verified` is set even when already set, so that "no such row" is the only `false`.
    let done = match tx.conn() {
        TxConn::Sqlite(conn) => sqlx::query(
            "UPDATE credentials SET verified = 1, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
             WHERE user_id = $1",
        )
        .bind(user_id.hyphenated())
        .execute(&mut *conn)
        .await?
        .rows_affected(),
        TxConn::Postgres(conn) => {
            sqlx::query("UPDATE credentials SET verified = TRUE, updated_at = now() WHERE user_id = $1")
                .bind(user_id)
                .execute(&mut *conn)
                .await?
                .rows_affected()
        }
    };
    Ok(done > 0)
}

/// Count a login attempt against each of `subjects` before its password is hashed: allowed
/// when none is locked, and then counted against all of them; refused with the latest lockout
/// end otherwise, counting nothing. One transaction holding the subjects' rows (Postgres: row
/// locks, taken in the order given; SQLite: the write lock), so that concurrent attempts on
/// any instance are counted one after the other.
pub async fn reserve(
    db: &Db,
    subjects: &[Subject],
    now: i64,
    policy: &ThrottlePolicy,
) -> Result<Result<(), i64>, sqlx::Error> {
    // The row is made first so that there is one to lock; a count of zero changes nothing.
    const ENSURE: &str = "INSERT INTO login_throttle (key, failures, window_started_at, locked_until) \
                          VALUES ($1, 0, 0, 0) ON CONFLICT (key) DO NOTHING";
    const SELECT: &str =
        "SELECT failures, window_started_at, locked_until FROM login_throttle WHERE key = $1";
    const SAVE: &str = "UPDATE login_throttle SET failures = $2, window_started_at = $3, locked_until = $4 \
                        WHERE key = $1";
    let mut tx = Tx::begin(db).await?;
    let mut counts = Vec::with_capacity(subjects.len());
    let mut locked_until = None;
    for subject in subjects {
        let key = subject.key();
        let (failures, window_started_at, stored_lock): (i64, i64, i64) = match tx.conn() {
            TxConn::Sqlite(conn) => {
                sqlx::query(ENSURE).bind(&key).execute(&mut *conn).await?;
                sqlx::query_as(SELECT).bind(&key).fetch_one(&mut *conn).await?
            }
            TxConn::Postgres(conn) => {
                sqlx::query(ENSURE).bind(&key).execute(&mut *conn).await?;
                let select = sqlx::AssertSqlSafe(format!("{SELECT} FOR UPDATE"));
                sqlx::query_as(select).bind(&key).fetch_one(&mut *conn).await?
            }
        };
        let stored = Count {
            failures,
            window_started_at,
            locked_until: stored_lock,
        };
        match stored.reserve(subject, now, policy) {
            Reservation::Allowed(count) => counts.push((key, count)),
            Reservation::Locked(until) => locked_until = locked_until.max(Some(until)),
        }
    }
    if let Some(until) = locked_until {
        tx.rollback().await?;
        return Ok(Err(until));
    }
    for (key, count) in counts {
        match tx.conn() {
            TxConn::Sqlite(conn) => sqlx::query(SAVE)
                .bind(key)
                .bind(count.failures)
                .bind(count.window_started_at)
                .bind(count.locked_until)
                .execute(&mut *conn)
                .await?
                .rows_affected(),
            TxConn::Postgres(conn) => sqlx::query(SAVE)
                .bind(key)
                .bind(count.failures)
                .bind(count.window_started_at)
                .bind(count.locked_until)
                .execute(&mut *conn)
                .await?
                .rows_affected(),
        };
    }
    tx.commit().await?;
    Ok(Ok(()))
}

/// The attempt reserved against `subjects` was a success: forget the failures of the pair,
/// give the address its attempt back (lifting a lock that attempt set).
pub async fn release(db: &Db, subjects: &[Subject], policy: &ThrottlePolicy) -> Result<(), sqlx::Error> {
    const FORGET: &str = "DELETE FROM login_throttle WHERE key = $1";
    // One statement: its right-hand sides read the row as it was.
    const GIVE_BACK: &str = "UPDATE login_throttle SET \
          failures = CASE WHEN failures > 0 THEN failures - 1 ELSE 0 END, \
          locked_until = CASE WHEN failures - 1 < $2 THEN 0 ELSE locked_until END \
        WHERE key = $1";
    for subject in subjects {
        let key = subject.key();
        with_pool!(db, pool => match subject {
            Subject::Pair { .. } => sqlx::query(FORGET).bind(key).execute(pool).await?.rows_affected(),
            Subject::Address(_) => sqlx::query(GIVE_BACK)
                .bind(key)
                .bind(i64::from(policy.max_per_address))
                .execute(pool)
                .await?
                .rows_affected(),
        });
    }
    Ok(())
}

/// Delete the rows that no longer count: no failure since `quiet_since`, and no lockout
/// ending after it. Returns how many went.
pub async fn purge_throttle(db: &Db, quiet_since: i64) -> Result<u64, sqlx::Error> {
    Ok(with_pool!(db, pool => {
        sqlx::query("DELETE FROM login_throttle WHERE locked_until < $1 AND window_started_at < $1")
            .bind(quiet_since)
            .execute(pool)
            .await?
            .rows_affected()
    }))
}
