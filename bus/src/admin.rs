//! The bus's admin processes, offered by every service that subscribes:
//! `dozen-<service> dead-letters` lists its dead letters (one JSON object per line on stdout),
//! and `dozen-<service> replay [<event id>]` asks for them (or one) to be delivered again by
//! the running service. A service lists them among its tasks with `#[command(flatten)]`.

use clap::Subcommand;
use dozen_kit::db::Db;
use uuid::Uuid;

use crate::inbox;

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
}

impl BusTask {
    /// Run it for subscriber `subscriber`, whose dead letters are in `db`.
    pub async fn run(self, db: &Db, subscriber: &str) -> anyhow::Result<()> {
        match self {
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
