//! The passwords service's tables: `credentials` and `login_throttle`. One implementation per
//! backend, matching on [`Db`]; nothing else in the crate writes SQL. SQLite keeps user ids as
//! hyphenated text, Postgres as `UUID`.

use dozen_kit::db::{Db, Tx, TxConn};
use dozen_kit::with_pool;
use uuid::Uuid;
use uuid::fmt::Hyphenated;

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

/// [`mark_verified`] in a transaction of its own.
pub async fn mark_verified_now(db: &Db, user_id: Uuid) -> Result<bool, sqlx::Error> {
    let mut tx = Tx::begin(db).await?;
    let found = mark_verified(&mut tx, user_id).await?;
    tx.commit().await?;
    Ok(found)
}

/// The latest end of a lockout among `keys` (0 when none is locked).
pub async fn locked_until(db: &Db, keys: &[String]) -> Result<i64, sqlx::Error> {
    let mut latest = 0;
    for key in keys {
        let until: Option<(i64,)> = with_pool!(db, pool => {
            sqlx::query_as("SELECT locked_until FROM login_throttle WHERE key = $1")
                .bind(key)
                .fetch_optional(pool)
                .await?
        });
        latest = latest.max(until.map_or(0, |(until,)| until));
    }
    Ok(latest)
}

/// Count one failed login for `key` at `now`, forgetting failures older than `window_start`;
/// when the count reaches `limit`, lock the key until `lock_until` and start counting afresh.
/// Returns whether the key is now locked.
pub async fn record_failure(
    db: &Db,
    key: &str,
    now: i64,
    window_start: i64,
    limit: u32,
    lock_until: i64,
) -> Result<bool, sqlx::Error> {
    // One statement, so that concurrent failures on several instances all count.
    const COUNT: &str = "INSERT INTO login_throttle (key, failures, window_started_at) VALUES ($1, 1, $2) \
        ON CONFLICT (key) DO UPDATE SET \
          failures = CASE WHEN login_throttle.window_started_at < $3 THEN 1 \
                          ELSE login_throttle.failures + 1 END, \
          window_started_at = CASE WHEN login_throttle.window_started_at < $3 THEN $2 \
                                   ELSE login_throttle.window_started_at END \
        RETURNING failures";
    const LOCK: &str =
        "UPDATE login_throttle SET locked_until = $2, failures = 0, window_started_at = $3 WHERE key = $1";
    let (failures,): (i64,) = with_pool!(db, pool => {
        sqlx::query_as(COUNT).bind(key).bind(now).bind(window_start).fetch_one(pool).await?
    });
    if failures < i64::from(limit) {
        return Ok(false);
    }
    with_pool!(db, pool => {
        sqlx::query(LOCK).bind(key).bind(lock_until).bind(now).execute(pool).await?.rows_affected()
    });
    Ok(true)
}

/// Forget the failures of `key` (after a successful login).
pub async fn clear_failures(db: &Db, key: &str) -> Result<(), sqlx::Error> {
    with_pool!(db, pool => {
        sqlx::query("DELETE FROM login_throttle WHERE key = $1")
            .bind(key)
            .execute(pool)
            .await?
            .rows_affected()
    });
    Ok(())
}

/// Delete rows whose lockout is over and whose window started before `window_start`; returns
/// how many went.
pub async fn purge_throttle(db: &Db, now: i64, window_start: i64) -> Result<u64, sqlx::Error> {
    Ok(with_pool!(db, pool => {
        sqlx::query("DELETE FROM login_throttle WHERE locked_until < $1 AND window_started_at < $2")
            .bind(now)
            .bind(window_start)
            .execute(pool)
            .await?
            .rows_affected()
    }))
}
