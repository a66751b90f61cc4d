//! Forgetting a deleted user in the bus's own tables of a service's database.
//!
//! The outbox keeps sent events for `BUS_RETENTION`, and dead letters until replayed; both
//! hold whole envelopes, whose payloads may carry the user's email, name or interests. When a
//! user is deleted, every service drops those naming them, in the transaction of its own
//! erasure: pending ones too, since no consumer needs news of someone who is gone. The inbox
//! stays: it holds only event ids, which say nothing about anyone.

use uuid::Uuid;

use crate::{BusError, Tx, TxConn};

/// Drop every outbox row and dead letter whose envelope names `user_id` (as its subject or
/// anywhere in its payload), inside `tx`. Returns how many went.
pub async fn forget_user(tx: &mut Tx, user_id: Uuid) -> Result<u64, BusError> {
    // A hyphenated UUID holds no LIKE wildcard.
    let pattern = format!("%{}%", user_id.hyphenated());
    let mut forgotten = 0;
    for statement in [
        "DELETE FROM outbox WHERE envelope LIKE $1",
        "DELETE FROM dead_letters WHERE envelope LIKE $1",
    ] {
        forgotten += match tx.conn() {
            TxConn::Sqlite(conn) => sqlx::query(statement)
                .bind(&pattern)
                .execute(conn)
                .await?
                .rows_affected(),
            TxConn::Postgres(conn) => sqlx::query(statement)
                .bind(&pattern)
                .execute(conn)
                .await?
                .rows_affected(),
        };
    }
    Ok(forgotten)
}
