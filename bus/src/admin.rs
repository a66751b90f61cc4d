//! The bus's admin processes, offered by every service that subscribes:
//! `dozen-<service> dead-letters` lists its dead letters (one JSON object per line on stdout),
//! and `dozen-<service> replay [<event id>]` asks for them (or one) to be delivered again by
//! the running service, and `dozen-<service> archive` moves old rows to `ARCHIVE_URL`
//! ([`crate::archive`]). A service lists them among its tasks with `#[command(flatten)]`.

use clap::Subcommand;
use dozen_kit::archive::ArchiveTable;
use dozen_kit::db::Db;
use uuid::Uuid;

use crate::archive::ArchiveArgs;
use crate::inbox;
use crate::settings::BusSettings;

/// The bus's admin tasks.
#[derive(Debug, Clone, Subcommand)]
pub enum BusTask {
    /// List this service's dead letters, one JSON object per line.
    DeadLetters,
    /// Deliver this service's dead letters again: all of them, or the one whose event id is
    /// given. The running service delivers them.
    Replay {
        /// The event id (a UUID) of the one dead letter to deliver again.
        event_id: Option<Uuid>,
    },
    /// Move rows past retention (sent events, handled events, replayed dead letters, and the
    /// service's own old rows) to ARCHIVE_URL, then delete them.
    Archive(ArchiveArgs),
}

impl BusTask {
    /// Run it for service `subscriber`, whose dead letters are in `db`; `tables` are its own
    /// tables to archive besides the bus's.
    pub async fn run(
        self,
        db: &Db,
        subscriber: &str,
        settings: &BusSettings,
        tables: &[ArchiveTable],
    ) -> anyhow::Result<()> {
        match self {
            Self::Archive(args) => args.run(db, subscriber, settings, tables).await,
            Self::DeadLetters => list(db, subscriber).await,
            Self::Replay { event_id } => {
                let marked = inbox::replay(db, subscriber, event_id).await?;
                tracing::info!(
                    marked,
                    "dead letters marked for replay; the running service delivers them"
                );
                Ok(())
            }
        }
    }
}

async fn list(db: &Db, subscriber: &str) -> anyhow::Result<()> {
    for letter in inbox::dead_letters(db, Some(subscriber)).await? {
        let line = serde_json::json!({
            "event_id": letter.event_id,
            "event_type": letter.event_type,
            "attempts": letter.attempts,
            "error": letter.error,
            "failed_at": letter.failed_at,
            "replay_requested": letter.replay_requested,
        });
        println!("{line}");
    }
    Ok(())
}
