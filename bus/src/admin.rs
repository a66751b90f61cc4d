//! The bus's admin processes, offered by every service that subscribes:
//! `dozen-<service> dead-letters` lists its dead letters (one JSON object per line on stdout),
//! and `dozen-<service> replay [<event id>]` asks for them (or one) to be delivered again by
//! the running service.

use std::ffi::OsString;

use dozen_kit::db::Db;
use dozen_kit::service::AdminTask;
use uuid::Uuid;

use crate::inbox;

/// `dead-letters`.
pub const DEAD_LETTERS: AdminTask = AdminTask {
    name: "dead-letters",
    about: "List this service's dead letters, one JSON object per line",
};

/// `replay [<event id>]`.
pub const REPLAY: AdminTask = AdminTask {
    name: "replay",
    about: "Deliver this service's dead letters again (all, or the one whose event id is given)",
};

/// Both.
pub const TASKS: [AdminTask; 2] = [DEAD_LETTERS, REPLAY];

/// Run task `name` if it is one of the bus's, for subscriber `subscriber`; `None` otherwise.
pub async fn run(name: &str, args: &[OsString], db: &Db, subscriber: &str) -> Option<anyhow::Result<()>> {
    match name {
        "dead-letters" => Some(list(db, subscriber).await),
        "replay" => Some(replay(args, db, subscriber).await),
        _ => None,
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

async fn replay(args: &[OsString], db: &Db, subscriber: &str) -> anyhow::Result<()> {
    let event_id = match args {
        [] => None,
        [id] => Some(
            id.to_str()
                .and_then(|id| Uuid::parse_str(id).ok())
                .ok_or_else(|| anyhow::anyhow!("replay takes an event id (a UUID), got {id:?}"))?,
        ),
        _ => anyhow::bail!("replay takes at most one event id"),
    };
    let marked = inbox::replay(db, subscriber, event_id).await?;
    tracing::info!(
        marked,
        "dead letters marked for replay; the running service delivers them"
    );
    Ok(())
}
