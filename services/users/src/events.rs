//! The events the users service consumes, one named handler each, registered in [`handlers`].

use chrono::Utc;
use dozen_bus::contracts::UserEmailVerified;
use dozen_bus::{EventHandlers, Outbox, Tx};

use crate::{routes, store};

/// Every handler, for the service's one subscription; they publish through `outbox`.
pub fn handlers(outbox: Outbox) -> EventHandlers<Outbox> {
    EventHandlers::new(outbox).on(on_email_verified)
}

/// Mark the profile verified, and tell others what it now is (once: a second event for an
/// already verified profile publishes nothing).
pub async fn on_email_verified(tx: &mut Tx, event: UserEmailVerified, outbox: &Outbox) -> anyhow::Result<()> {
    if let Some((profile, true)) = store::mark_verified(tx, event.user_id, Utc::now()).await? {
        outbox.publish(tx, &routes::profile_updated(&profile)).await?;
    }
    Ok(())
}
