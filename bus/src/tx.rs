//! A transaction on a service's own database, on either backend: the unit in which a service
//! changes its state and publishes (outbox), or handles an event (inbox).
//!
//! It belongs in the kit next to `Db` once services write through it; it lives here until then.

use std::sync::Arc;

use dozen_kit::db::Db;
use sqlx::{PgConnection, Postgres, Sqlite, SqliteConnection, Transaction};
use tokio::sync::Notify;

/// An open transaction; dropped without [`Tx::commit`] it rolls back.
#[derive(Debug)]
pub struct Tx {
    inner: Inner,
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
    /// Begin a transaction. On SQLite it takes the write lock at once (`BEGIN IMMEDIATE`):
    /// a deferred transaction that later writes fails with SQLITE_BUSY when another
    /// connection wrote in between, which the busy timeout cannot cure.
    pub async fn begin(db: &Db) -> Result<Self, sqlx::Error> {
        let inner = match db {
            Db::Sqlite(pool) => Inner::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
            Db::Postgres(pool) => Inner::Postgres(pool.begin().await?),
        };
        Ok(Self {
            inner,
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

    pub(crate) fn wake_after_commit(&mut self, notify: Arc<Notify>) {
        self.after_commit = Some(notify);
    }
}
