//! The passwords service's tables: `credentials`, `login_throttle` (keyed by
//! [`Subject::key`]; the rules are the domain's, see `domain::throttle`), and the refresh
//! sessions, `sessions` and `refresh_tokens`. One implementation per
//! backend, matching on [`Db`]; nothing else in the crate writes SQL. SQLite keeps user ids as
//! hyphenated text, Postgres as `UUID`.

use dozen_kit::archive::ArchiveTable;
use dozen_kit::db::{Db, Tx, TxConn};
use dozen_kit::figures;
use dozen_kit::{with_conn, with_pool};
use uuid::Uuid;
use uuid::fmt::Hyphenated;

use crate::domain::sessions::MAX_SESSIONS_PER_USER;
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

/// What storing a new credential came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// It is stored.
    Stored,
    /// The user id or the email is already taken (the caller reads the existing row to tell
    /// which): nothing changed.
    Taken,
    /// A newer signup replaced the user's account: it never gets a credential.
    Replaced,
}

/// Store a new credential, unless the user was replaced (see [`replace`]) or the user id or
/// the email is taken.
pub async fn insert(db: &Db, user_id: Uuid, email: &str, phc_hash: &str) -> Result<Inserted, sqlx::Error> {
    const INSERT: &str = "INSERT INTO credentials (user_id, email, phc_hash) VALUES ($1, $2, $3) \
                          ON CONFLICT DO NOTHING";
    let mut tx = Tx::begin(db).await?;
    lock_user(&mut tx, user_id).await?;
    if is_replaced(&mut tx, user_id).await? {
        tx.rollback().await?;
        return Ok(Inserted::Replaced);
    }
    let done = match tx.conn() {
        TxConn::Sqlite(conn) => sqlx::query(INSERT)
            .bind(user_id.hyphenated())
            .bind(email)
            .bind(phc_hash)
            .execute(&mut *conn)
            .await?
            .rows_affected(),
        TxConn::Postgres(conn) => sqlx::query(INSERT)
            .bind(user_id)
            .bind(email)
            .bind(phc_hash)
            .execute(&mut *conn)
            .await?
            .rows_affected(),
    };
    tx.commit().await?;
    Ok(if done == 1 {
        Inserted::Stored
    } else {
        Inserted::Taken
    })
}

/// Remove the credential of `user_id` for good: a newer signup for its address replaced the
/// account, so it is never given one again, even by its own signup still on its way.
/// Idempotent.
pub async fn replace(db: &Db, user_id: Uuid) -> Result<(), sqlx::Error> {
    const REPLACED: &str = "INSERT INTO replaced_credentials (user_id) VALUES ($1) ON CONFLICT DO NOTHING";
    const DELETE: &str = "DELETE FROM credentials WHERE user_id = $1";
    let mut tx = Tx::begin(db).await?;
    lock_user(&mut tx, user_id).await?;
    for statement in [REPLACED, DELETE] {
        match tx.conn() {
            TxConn::Sqlite(conn) => sqlx::query(statement)
                .bind(user_id.hyphenated())
                .execute(&mut *conn)
                .await
                .map(drop)?,
            TxConn::Postgres(conn) => sqlx::query(statement)
                .bind(user_id)
                .execute(&mut *conn)
                .await
                .map(drop)?,
        }
    }
    tx.commit().await
}

/// Whether a newer signup replaced `user_id`'s account (see [`replace`]).
pub async fn was_replaced(db: &Db, user_id: Uuid) -> Result<bool, sqlx::Error> {
    let mut tx = Tx::begin(db).await?;
    let replaced = is_replaced(&mut tx, user_id).await?;
    tx.rollback().await?;
    Ok(replaced)
}

/// Whether `user_id`'s account was replaced, read inside `tx`.
async fn is_replaced(tx: &mut Tx, user_id: Uuid) -> Result<bool, sqlx::Error> {
    const SELECT: &str = "SELECT 1 FROM replaced_credentials WHERE user_id = $1";
    let row: Option<(i32,)> = match tx.conn() {
        TxConn::Sqlite(conn) => {
            sqlx::query_as(SELECT)
                .bind(user_id.hyphenated())
                .fetch_optional(&mut *conn)
                .await?
        }
        TxConn::Postgres(conn) => {
            sqlx::query_as(SELECT)
                .bind(user_id)
                .fetch_optional(&mut *conn)
                .await?
        }
    };
    Ok(row.is_some())
}

/// Take `user_id`'s lock until `tx` ends, so that storing its credential and replacing it
/// happen one after the other: the credential's row cannot be locked before it exists.
/// SQLite's write lock (`BEGIN IMMEDIATE`) does this already; on Postgres it is a
/// transaction-scoped advisory lock keyed by the id's random half (a collision only waits).
async fn lock_user(tx: &mut Tx, user_id: Uuid) -> Result<(), sqlx::Error> {
    if let TxConn::Postgres(conn) = tx.conn() {
        let key = i64::from_ne_bytes(user_id.as_u64_pair().1.to_ne_bytes());
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(key)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
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

/// Log `user_id` in with `email` from now on (their address changed). Runs inside the
/// `user.email_changed` handler's transaction; `false` when the user has no credential.
pub async fn set_email(tx: &mut Tx, user_id: Uuid, email: &str) -> Result<bool, sqlx::Error> {
    let done = match tx.conn() {
        TxConn::Sqlite(conn) => sqlx::query(
            "UPDATE credentials SET email = $1, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
             WHERE user_id = $2",
        )
        .bind(email)
        .bind(user_id.hyphenated())
        .execute(&mut *conn)
        .await?
        .rows_affected(),
        TxConn::Postgres(conn) => {
            sqlx::query("UPDATE credentials SET email = $1, updated_at = now() WHERE user_id = $2")
                .bind(email)
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
    // Whether this attempt locks a subject that was not locked: a lockout, in the day's figures.
    let mut locks = false;
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
            Reservation::Allowed(count) => {
                locks |= count.locked_until > now;
                counts.push((key, count));
            }
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
    if locks {
        figures::count(&mut tx, "lockouts", at(now)).await?;
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

/// A session to start, with the hash of its first refresh token.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// Its id (the `sid` of its access tokens).
    pub id: Uuid,
    /// Whose.
    pub user_id: Uuid,
    /// Now, in milliseconds since the Unix epoch.
    pub now: i64,
    /// When it ends, however often it is refreshed.
    pub expires_at: i64,
    /// Who logged in: the client's address.
    pub client_address: String,
    /// Who logged in: the client's user agent.
    pub user_agent: String,
    /// SHA-256 of its first refresh token.
    pub token_hash: String,
}

/// Start a session; the user's least recently used sessions beyond
/// [`MAX_SESSIONS_PER_USER`] end.
pub async fn start_session(db: &Db, session: &NewSession) -> Result<(), sqlx::Error> {
    let (id, user_id) = (session.id.to_string(), session.user_id.to_string());
    let mut tx = Tx::begin(db).await?;
    with_conn!(tx.conn(), conn => {
        sqlx::query(
            "INSERT INTO sessions (id, user_id, created_at, last_used_at, expires_at, client_address, \
             user_agent, current_token) VALUES ($1, $2, $3, $3, $4, $5, $6, $7)",
        )
        .bind(&id)
        .bind(&user_id)
        .bind(session.now)
        .bind(session.expires_at)
        .bind(&session.client_address)
        .bind(&session.user_agent)
        .bind(&session.token_hash)
        .execute(&mut *conn)
        .await?;
        sqlx::query("INSERT INTO refresh_tokens (token_hash, session_id) VALUES ($1, $2)")
            .bind(&session.token_hash)
            .bind(&id)
            .execute(&mut *conn)
            .await?;
        sqlx::query(
            "DELETE FROM sessions WHERE user_id = $1 AND id NOT IN \
             (SELECT id FROM sessions WHERE user_id = $1 ORDER BY last_used_at DESC, id LIMIT $2)",
        )
        .bind(&user_id)
        .bind(MAX_SESSIONS_PER_USER)
        .execute(&mut *conn)
        .await?;
    });
    // Sessions start at login alone: a new one is a successful login.
    figures::count(&mut tx, "logins", at(session.now)).await?;
    tx.commit().await
}

/// A time in milliseconds since the epoch, as the day's figures take it.
fn at(millis: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(millis).unwrap_or_default()
}

/// What presenting a refresh token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refresh {
    /// It was its session's current token: the session now has the new one.
    Rotated {
        /// The session.
        session_id: Uuid,
        /// Whose.
        user_id: Uuid,
        /// When the session ends.
        expires_at: i64,
    },
    /// It had been rotated already: someone holds a copy, so the session has ended.
    Reused,
    /// No live session has it (never issued, or its session ended or expired).
    Unknown,
}

/// Present the refresh token hashed `old`: rotate it to `new` if it is its session's current
/// token, end the session if it is an older one. One transaction holding the session's row,
/// so that of two concurrent uses of one token exactly one rotates it.
pub async fn refresh_session(
    db: &Db,
    old: &str,
    new: &str,
    now: i64,
    client_address: &str,
    user_agent: &str,
) -> Result<Refresh, sqlx::Error> {
    const FIND: &str = "SELECT s.id, s.user_id, s.current_token, s.expires_at FROM refresh_tokens t \
                        JOIN sessions s ON s.id = t.session_id WHERE t.token_hash = $1";
    let mut tx = Tx::begin(db).await?;
    let found: Option<(String, String, String, i64)> = match tx.conn() {
        TxConn::Sqlite(conn) => sqlx::query_as(FIND).bind(old).fetch_optional(&mut *conn).await?,
        TxConn::Postgres(conn) => {
            let locked = sqlx::AssertSqlSafe(format!("{FIND} FOR UPDATE OF s"));
            sqlx::query_as(locked)
                .bind(old)
                .fetch_optional(&mut *conn)
                .await?
        }
    };
    let Some((id, user_id, current, expires_at)) = found else {
        return Ok(Refresh::Unknown);
    };
    let (Ok(session_id), Ok(user)) = (Uuid::parse_str(&id), Uuid::parse_str(&user_id)) else {
        return Err(sqlx::Error::Decode("a session id that is not a UUID".into()));
    };
    if current != old || expires_at <= now {
        with_conn!(tx.conn(), conn => {
            sqlx::query("DELETE FROM sessions WHERE id = $1").bind(&id).execute(&mut *conn).await?;
        });
        tx.commit().await?;
        return Ok(if current == old {
            Refresh::Unknown
        } else {
            Refresh::Reused
        });
    }
    with_conn!(tx.conn(), conn => {
        sqlx::query(
            "UPDATE sessions SET current_token = $2, last_used_at = $3, client_address = $4, \
             user_agent = $5 WHERE id = $1",
        )
        .bind(&id)
        .bind(new)
        .bind(now)
        .bind(client_address)
        .bind(user_agent)
        .execute(&mut *conn)
        .await?;
        sqlx::query("INSERT INTO refresh_tokens (token_hash, session_id) VALUES ($1, $2)")
            .bind(new)
            .bind(&id)
            .execute(&mut *conn)
            .await?;
    });
    tx.commit().await?;
    Ok(Refresh::Rotated {
        session_id,
        user_id: user,
        expires_at,
    })
}

/// End the session `session_id` of `user_id` (logout); `false` if it had ended already.
pub async fn end_session(db: &Db, user_id: Uuid, session_id: Uuid) -> Result<bool, sqlx::Error> {
    let done = with_pool!(db, pool => {
        sqlx::query("DELETE FROM sessions WHERE id = $1 AND user_id = $2")
            .bind(session_id.to_string())
            .bind(user_id.to_string())
            .execute(pool)
            .await?
            .rows_affected()
    });
    Ok(done > 0)
}

/// End every session of `user_id` but `except` (when given), inside the caller's transaction.
pub async fn end_sessions(tx: &mut Tx, user_id: Uuid, except: Option<Uuid>) -> Result<u64, sqlx::Error> {
    let except = except.map(|id| id.to_string()).unwrap_or_default();
    Ok(with_conn!(tx.conn(), conn => {
        sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND id <> $2")
            .bind(user_id.to_string())
            .bind(&except)
            .execute(&mut *conn)
            .await?
            .rows_affected()
    }))
}

/// A live session, as listed to its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    /// Its id.
    pub id: Uuid,
    /// When it started (ms).
    pub created_at: i64,
    /// When it was last refreshed, or started (ms).
    pub last_used_at: i64,
    /// The client's address at its last use.
    pub client_address: String,
    /// The client's user agent at its last use.
    pub user_agent: String,
}

/// The live sessions of `user_id`, most recently used first.
pub async fn sessions_of(db: &Db, user_id: Uuid, now: i64) -> Result<Vec<SessionRow>, sqlx::Error> {
    let rows: Vec<(String, i64, i64, String, String)> = with_pool!(db, pool => {
        sqlx::query_as(
            "SELECT id, created_at, last_used_at, client_address, user_agent FROM sessions \
             WHERE user_id = $1 AND expires_at > $2 ORDER BY last_used_at DESC, id",
        )
        .bind(user_id.to_string())
        .bind(now)
        .fetch_all(pool)
        .await?
    });
    rows.into_iter()
        .map(|(id, created_at, last_used_at, client_address, user_agent)| {
            Ok(SessionRow {
                id: Uuid::parse_str(&id).map_err(|e| sqlx::Error::Decode(e.into()))?,
                created_at,
                last_used_at,
                client_address,
                user_agent,
            })
        })
        .collect()
}

/// The tables whose old rows the `archive` admin process moves out: sessions whose lifetime
/// ended before the cut-off, their refresh tokens first (deleting a session takes its tokens
/// with it).
pub const ARCHIVE_TABLES: &[ArchiveTable] = &[
    ArchiveTable {
        table: "refresh_tokens",
        past: "session_id IN (SELECT id FROM sessions WHERE expires_at < $1)",
    },
    ArchiveTable {
        table: "sessions",
        past: "expires_at < $1",
    },
];

/// Delete the sessions whose lifetime is over. Returns how many went.
pub async fn purge_sessions(db: &Db, now: i64) -> Result<u64, sqlx::Error> {
    Ok(with_pool!(db, pool => {
        sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected()
    }))
}

/// Set the hash of `user_id` to `new` inside the caller's transaction (with the session
/// revocation and the event of a password change). With `expected`, only if the hash is still
/// that one (a concurrent change wins otherwise). `false` when nothing was replaced.
pub async fn set_hash(
    tx: &mut Tx,
    user_id: Uuid,
    new: &str,
    expected: Option<&str>,
) -> Result<bool, sqlx::Error> {
    // `COALESCE($3, phc_hash)`: without an expected hash the condition always holds.
    let done = match tx.conn() {
        TxConn::Sqlite(conn) => sqlx::query(
            "UPDATE credentials SET phc_hash = $1, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
             WHERE user_id = $2 AND phc_hash = COALESCE($3, phc_hash)",
        )
        .bind(new)
        .bind(user_id.hyphenated())
        .bind(expected)
        .execute(&mut *conn)
        .await?
        .rows_affected(),
        TxConn::Postgres(conn) => sqlx::query(
            "UPDATE credentials SET phc_hash = $1, updated_at = now() \
             WHERE user_id = $2 AND phc_hash = COALESCE($3, phc_hash)",
        )
        .bind(new)
        .bind(user_id)
        .bind(expected)
        .execute(&mut *conn)
        .await?
        .rows_affected(),
    };
    Ok(done == 1)
}

/// Erase the account of `user_id` inside the caller's transaction (with its `user.deleted`):
/// the credential, only while its hash is still `expected` (a concurrent change or deletion
/// wins otherwise), every session, and the login failures counted against its email, which
/// would otherwise keep the address for a while. `false`, with nothing deleted, when the hash
/// was not `expected`.
pub async fn delete_account(
    tx: &mut Tx,
    user_id: Uuid,
    email: &str,
    expected: &str,
) -> Result<bool, sqlx::Error> {
    let deleted = match tx.conn() {
        TxConn::Sqlite(conn) => sqlx::query("DELETE FROM credentials WHERE user_id = $1 AND phc_hash = $2")
            .bind(user_id.hyphenated())
            .bind(expected)
            .execute(&mut *conn)
            .await?
            .rows_affected(),
        TxConn::Postgres(conn) => sqlx::query("DELETE FROM credentials WHERE user_id = $1 AND phc_hash = $2")
            .bind(user_id)
            .bind(expected)
            .execute(&mut *conn)
            .await?
            .rows_affected(),
    };
    if deleted == 0 {
        return Ok(false);
    }
    end_sessions(tx, user_id, None).await?;
    // A pair's key ends with `:<email>` (see `Subject::key`). An address ending in this one
    // after a `:` (a quoted local part) would lose its counts too: rare, and only early.
    let suffix = format!(":{email}");
    with_conn!(tx.conn(), conn => {
        sqlx::query(
            "DELETE FROM login_throttle WHERE key LIKE 'pair:%' \
             AND substr(key, length(key) - length($1) + 1) = $1",
        )
        .bind(&suffix)
        .execute(&mut *conn)
        .await?
        .rows_affected()
    });
    Ok(true)
}
