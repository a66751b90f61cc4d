//! A transaction on a service's own database, on either backend: the unit in which a service
//! changes its state and publishes (the bus's outbox), or handles an event (its inbox).
//! [`with_conn!`](crate::with_conn) runs one statement on whichever backend it holds.

use std::sync::Arc;

use super::{Db, WriteTurn, write_turn};
use sqlx::{PgConnection, Postgres, Sqlite, SqliteConnection, Transaction};
use tokio::sync::Notify;

/// An open transaction; dropped without [`Tx::commit`] it rolls back.
#[derive(Debug)]
pub struct Tx {
    inner: Inner,
    /// On SQLite, this process's turn to write to the file, held until the transaction ends.
    _turn: Option<WriteTurn>,
    /// Woken after a commit that wrote to the outbox, so the relay publishes at once.
    after_commit: Option<Arc<Notify>>,
}

#[derive(Debug)]
enum Inner {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
}

/// The connection of an open transaction, for the service's own queries.
#[derive(Debug)]
pub enum TxConn<'t> {
    /// On SQLite.
    Sqlite(&'t mut SqliteConnection),
    /// On Postgres.
    Postgres(&'t mut PgConnection),
}

impl Tx {
    /// Begin a transaction. On SQLite it waits for this process's turn to write to the file
    /// ([`write_turn`]), then takes the write lock at once (`BEGIN IMMEDIATE`): a deferred
    /// transaction that later writes fails with SQLITE_BUSY when another connection wrote in
    /// between, which the busy timeout cannot cure.
    pub async fn begin(db: &Db) -> Result<Self, sqlx::Error> {
        let (inner, turn) = match db {
            Db::Sqlite(pool) => {
                let turn = write_turn(pool).await;
                (
                    Inner::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
                    Some(turn),
                )
            }
            Db::Postgres(pool) => (Inner::Postgres(pool.begin().await?), None),
        };
        Ok(Self {
            inner,
            _turn: turn,
            after_commit: None,
        })
    }

    /// The connection, for the service's own statements.
    pub fn conn(&mut self) -> TxConn<'_> {
        match &mut self.inner {
            Inner::Sqlite(tx) => TxConn::Sqlite(tx),
            Inner::Postgres(tx) => TxConn::Postgres(tx),
        }
    }

    /// Commit, then wake whoever asked to know (the relay).
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self.inner {
            Inner::Sqlite(tx) => tx.commit().await?,
            Inner::Postgres(tx) => tx.commit().await?,
        }
        if let Some(notify) = self.after_commit {
            notify.notify_one();
        }
        Ok(())
    }

    /// Roll back explicitly (dropping does the same, but later).
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        match self.inner {
            Inner::Sqlite(tx) => tx.rollback().await,
            Inner::Postgres(tx) => tx.rollback().await,
        }
    }

    /// Wake `notify` once this transaction commits (the bus's relay, after an outbox write).
    pub fn wake_after_commit(&mut self, notify: Arc<Notify>) {
        self.after_commit = Some(notify);
    }
}

/// Run the same statement on whichever backend a [`TxConn`] holds: the body is written once
/// and type-checked for each backend, e.g.
/// `with_conn!(tx.conn(), conn => sqlx::query("…").bind(id).execute(conn).await)?`.
/// Both arms must produce the same type, so bind values must encode on both backends.
#[macro_export]
macro_rules! with_conn {
    ($conn:expr, $name:ident => $body:expr) => {
        match $conn {
            $crate::db::TxConn::Sqlite($name) => $body,
            $crate::db::TxConn::Postgres($name) => $body,
        }
    };
}
