//! This process's queue for the write lock of each SQLite file.
//!
//! SQLite lets one transaction write at a time; a writer that finds the file locked is put to
//! sleep by the busy handler and retries, sleeping longer each time (up to 100 ms) and in no
//! particular order, so under steady concurrent writes a few unlucky writers wait for most of a
//! second. Writers of one process wait their turn here instead, first come first served, and
//! each starts the moment the one before it ends. Writers in other processes sharing the file
//! (the embedded bus's `bus.db`, or replicas) still meet the busy handler.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use sqlx::SqlitePool;
use tokio::sync::OwnedMutexGuard;

/// One queue per file, shared by every pool and connection of this process.
static QUEUES: LazyLock<Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>> =
    LazyLock::new(Default::default);

/// A turn to write to a SQLite file: hold it for the whole write transaction.
#[derive(Debug)]
pub struct WriteTurn {
    _held: OwnedMutexGuard<()>,
}

/// Wait for this process's turn to write to the file of `pool` (any pool or connection on
/// the same file shares the turn).
pub async fn write_turn(pool: &SqlitePool) -> WriteTurn {
    let file = pool.connect_options().get_filename().to_owned();
    let queue = QUEUES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(file)
        .or_default()
        .clone();
    WriteTurn {
        _held: queue.lock_owned().await,
    }
}
