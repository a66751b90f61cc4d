//! The consuming side's tables in a subscriber's own database: the inbox (which events this
//! subscriber has already taken) and the dead-letter queue (events its handler kept failing
//! on), with the listing and replay functions the `dozen replay` admin process calls.
//!
//! An inbox row means "this subscriber is done with this event": it is written in the same
//! transaction as the handler's effects, or with the dead letter. A redelivery finds it and
//! has no second effect. Dead letters are kept in the subscriber's database rather than the
//! broker so that they survive any broker, can be listed and replayed with only
//! `DATABASE_URL`, and are replayed to this subscriber alone: replay marks them, and the
//! running subscriber picks marked ones up, runs the handler, and marks the dead letter
//! replayed in the handler's transaction. Replayed dead letters stay for the record until
//! the `archive` admin process moves them out (or, without an archive, the retention sweep).

use chrono::{DateTime, Utc};
use dozen_kit::db::{Db, write_turn};
use uuid::Uuid;

use crate::backend::now_ms;
use crate::error::BusError;
use crate::tx::{Tx, TxConn};

/// An event a subscriber's handler kept failing on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Whose queue it came from.
    pub subscriber: String,
    /// The event id.
    pub event_id: Uuid,
    /// Its type.
    pub event_type: String,
    /// The envelope as delivered (JSON; possibly not decodable, which may be why it is here).
    pub envelope: String,
    /// Deliveries and replays tried.
    pub attempts: u32,
    /// The last failure.
    pub error: String,
    /// When it last failed.
    pub failed_at: DateTime<Utc>,
    /// Whether a replay is asked for and not yet done.
    pub replay_requested: bool,
}

type DeadLetterRow = (String, String, String, String, i64, String, i64, Option<i64>);
type DeadLetterRowPg = (String, Uuid, String, String, i32, String, i64, Option<i64>);

fn dead_letter_from(row: DeadLetterRow) -> DeadLetter {
    let (subscriber, event_id, event_type, envelope, attempts, error, failed_at, replay) = row;
    DeadLetter {
        subscriber,
        event_id: Uuid::parse_str(&event_id).unwrap_or_default(),
        event_type,
        envelope,
        attempts: u32::try_from(attempts).unwrap_or_default(),
        error,
        failed_at: DateTime::from_timestamp_millis(failed_at).unwrap_or_default(),
        replay_requested: replay.is_some(),
    }
}

fn dead_letter_from_pg(row: DeadLetterRowPg) -> DeadLetter {
    let (subscriber, event_id, event_type, envelope, attempts, error, failed_at, replay) = row;
    dead_letter_from((
        subscriber,
        event_id.to_string(),
        event_type,
        envelope,
        i64::from(attempts),
        error,
        failed_at,
        replay,
    ))
}

const COLUMNS: &str =
    "subscriber, event_id, event_type, envelope, attempts, error, failed_at, replay_requested_at";

/// Record that `subscriber` takes `event_id`, in its handler's transaction. False when it was
/// already taken: a redelivery, to be acknowledged without running the handler.
pub(crate) async fn take(tx: &mut Tx, subscriber: &str, event_id: Uuid) -> Result<bool, BusError> {
    const INSERT: &str =
        "INSERT INTO inbox (subscriber, event_id, received_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING";
    let inserted = match tx.conn() {
        TxConn::Sqlite(conn) => sqlx::query(INSERT)
            .bind(subscriber)
            .bind(event_id.to_string())
            .bind(now_ms())
            .execute(conn)
            .await?
            .rows_affected(),
        TxConn::Postgres(conn) => sqlx::query(INSERT)
            .bind(subscriber)
            .bind(event_id)
            .bind(now_ms())
            .execute(conn)
            .await?
            .rows_affected(),
    };
    Ok(inserted == 1)
}

/// Move an event to `subscriber`'s dead-letter queue, and take it in the inbox so that a
/// redelivery does not run the handler again.
pub(crate) async fn bury(db: &Db, letter: &DeadLetter) -> Result<(), BusError> {
    let mut tx = Tx::begin(db).await?;
    let inserted = take(&mut tx, &letter.subscriber, letter.event_id).await?;
    let sql = format!(
        "INSERT INTO dead_letters ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, NULL)
         ON CONFLICT (subscriber, event_id) DO UPDATE SET
             attempts = excluded.attempts, error = excluded.error, failed_at = excluded.failed_at,
             replay_requested_at = NULL"
    );
    // Only when the inbox did not have it yet, or the dead letter is already there (a replay
    // that failed): never bury an event that was handled.
    let existing = count_where(&mut tx, &letter.subscriber, Some(letter.event_id)).await?;
    if inserted {
        dozen_kit::figures::count(&mut tx, "dead_letters", letter.failed_at).await?;
    }
    if inserted || existing > 0 {
        match tx.conn() {
            TxConn::Sqlite(conn) => {
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(&letter.subscriber)
                    .bind(letter.event_id.to_string())
                    .bind(&letter.event_type)
                    .bind(&letter.envelope)
                    .bind(i64::from(letter.attempts))
                    .bind(&letter.error)
                    .bind(letter.failed_at.timestamp_millis())
                    .execute(conn)
                    .await?;
            }
            TxConn::Postgres(conn) => {
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(&letter.subscriber)
                    .bind(letter.event_id)
                    .bind(&letter.event_type)
                    .bind(&letter.envelope)
                    .bind(i32::try_from(letter.attempts).unwrap_or(i32::MAX))
                    .bind(&letter.error)
                    .bind(letter.failed_at.timestamp_millis())
                    .execute(conn)
                    .await?;
            }
        }
    }
    tx.commit().await?;
    Ok(())
}

async fn count_where(tx: &mut Tx, subscriber: &str, event_id: Option<Uuid>) -> Result<i64, BusError> {
    Ok(match (tx.conn(), event_id) {
        (TxConn::Sqlite(conn), Some(id)) => {
            sqlx::query_scalar("SELECT COUNT(*) FROM dead_letters WHERE subscriber = $1 AND event_id = $2 AND replayed_at IS NULL")
                .bind(subscriber)
                .bind(id.to_string())
                .fetch_one(conn)
                .await?
        }
        (TxConn::Postgres(conn), Some(id)) => {
            sqlx::query_scalar("SELECT COUNT(*) FROM dead_letters WHERE subscriber = $1 AND event_id = $2 AND replayed_at IS NULL")
                .bind(subscriber)
                .bind(id)
                .fetch_one(conn)
                .await?
        }
        (TxConn::Sqlite(conn), None) => {
            sqlx::query_scalar("SELECT COUNT(*) FROM dead_letters WHERE subscriber = $1 AND replayed_at IS NULL")
                .bind(subscriber)
                .fetch_one(conn)
                .await?
        }
        (TxConn::Postgres(conn), None) => {
            sqlx::query_scalar("SELECT COUNT(*) FROM dead_letters WHERE subscriber = $1 AND replayed_at IS NULL")
                .bind(subscriber)
                .fetch_one(conn)
                .await?
        }
    })
}

/// The dead letters in a service's database, oldest failure first; only `subscriber`'s when
/// given.
pub async fn dead_letters(db: &Db, subscriber: Option<&str>) -> Result<Vec<DeadLetter>, BusError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM dead_letters WHERE ($1 IS NULL OR subscriber = $1) AND replayed_at IS NULL
         ORDER BY failed_at, event_id"
    );
    Ok(match db {
        Db::Sqlite(pool) => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(subscriber)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(dead_letter_from)
            .collect(),
        Db::Postgres(pool) => {
            let sql = sql.replace("$1 IS NULL", "$1::text IS NULL");
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(subscriber)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(dead_letter_from_pg)
                .collect()
        }
    })
}

/// Ask for `subscriber`'s dead letters to be delivered again (only `event_id` when given).
/// The running subscriber handles them within its backstop poll; one that fails again stays
/// in the queue with its attempts counted. Returns how many were marked.
pub async fn replay(db: &Db, subscriber: &str, event_id: Option<Uuid>) -> Result<u64, BusError> {
    const SQL: &str = "UPDATE dead_letters SET replay_requested_at = $1
                       WHERE subscriber = $2 AND replay_requested_at IS NULL AND replayed_at IS NULL";
    let marked = match (db, event_id) {
        (Db::Sqlite(pool), None) => sqlx::query(SQL)
            .bind(now_ms())
            .bind(subscriber)
            .execute(pool)
            .await?
            .rows_affected(),
        (Db::Postgres(pool), None) => sqlx::query(SQL)
            .bind(now_ms())
            .bind(subscriber)
            .execute(pool)
            .await?
            .rows_affected(),
        (Db::Sqlite(pool), Some(id)) => sqlx::query(sqlx::AssertSqlSafe(format!("{SQL} AND event_id = $3")))
            .bind(now_ms())
            .bind(subscriber)
            .bind(id.to_string())
            .execute(pool)
            .await?
            .rows_affected(),
        (Db::Postgres(pool), Some(id)) => {
            sqlx::query(sqlx::AssertSqlSafe(format!("{SQL} AND event_id = $3")))
                .bind(now_ms())
                .bind(subscriber)
                .bind(id)
                .execute(pool)
                .await?
                .rows_affected()
        }
    };
    Ok(marked)
}

/// Dead letters of `subscriber` waiting to be replayed.
pub(crate) async fn replay_requested(db: &Db, subscriber: &str) -> Result<Vec<DeadLetter>, BusError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM dead_letters
         WHERE subscriber = $1 AND replay_requested_at IS NOT NULL AND replayed_at IS NULL
         ORDER BY failed_at LIMIT 64"
    );
    Ok(match db {
        Db::Sqlite(pool) => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(subscriber)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(dead_letter_from)
            .collect(),
        Db::Postgres(pool) => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(subscriber)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(dead_letter_from_pg)
            .collect(),
    })
}

/// In a replay's transaction: mark the dead letter replayed. False when another instance got it
/// first.
pub(crate) async fn unbury(tx: &mut Tx, subscriber: &str, event_id: Uuid) -> Result<bool, BusError> {
    const SQL: &str = "UPDATE dead_letters SET replayed_at = $3
                       WHERE subscriber = $1 AND event_id = $2
                         AND replay_requested_at IS NOT NULL AND replayed_at IS NULL";
    let marked = match tx.conn() {
        TxConn::Sqlite(conn) => sqlx::query(SQL)
            .bind(subscriber)
            .bind(event_id.to_string())
            .bind(now_ms())
            .execute(conn)
            .await?
            .rows_affected(),
        TxConn::Postgres(conn) => sqlx::query(SQL)
            .bind(subscriber)
            .bind(event_id)
            .bind(now_ms())
            .execute(conn)
            .await?
            .rows_affected(),
    };
    Ok(marked == 1)
}

/// How many dead letters `subscriber` has.
pub(crate) async fn count(db: &Db, subscriber: &str) -> Result<u64, BusError> {
    const SQL: &str = "SELECT COUNT(*) FROM dead_letters WHERE subscriber = $1 AND replayed_at IS NULL";
    let count: i64 = match db {
        Db::Sqlite(pool) => sqlx::query_scalar(SQL).bind(subscriber).fetch_one(pool).await?,
        Db::Postgres(pool) => sqlx::query_scalar(SQL).bind(subscriber).fetch_one(pool).await?,
    };
    Ok(u64::try_from(count).unwrap_or_default())
}

/// Forget inbox entries older than `before` (ms since the epoch): no redelivery comes that late;
/// and dead letters replayed before then.
pub(crate) async fn forget(db: &Db, subscriber: &str, before: i64) -> Result<(), BusError> {
    const INBOX: &str = "DELETE FROM inbox WHERE subscriber = $1 AND received_at < $2";
    const REPLAYED: &str = "DELETE FROM dead_letters WHERE subscriber = $1 AND replayed_at < $2";
    match db {
        Db::Sqlite(pool) => {
            let _turn = write_turn(pool).await;
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            for sql in [INBOX, REPLAYED] {
                sqlx::query(sql)
                    .bind(subscriber)
                    .bind(before)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        }
        Db::Postgres(pool) => {
            for sql in [INBOX, REPLAYED] {
                sqlx::query(sql)
                    .bind(subscriber)
                    .bind(before)
                    .execute(pool)
                    .await?;
            }
        }
    }
    Ok(())
}
