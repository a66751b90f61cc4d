//! The events the users service consumes, one named handler each, registered in [`handlers`].

use chrono::Utc;
use dozen_bus::contracts::{UserDeleted, UserEmailVerified};
use dozen_bus::{EventHandlers, Outbox, Tx};

use crate::{routes, store};

/// Every handler, for the service's one subscription; they publish through `outbox`.
pub fn handlers(outbox: Outbox) -> EventHandlers<Outbox> {
    EventHandlers::new(outbox)
        .on(on_email_verified)
        .on(on_user_deleted)
}

/// Mark the profile verified, and tell others what it now is (once: a second event for an
/// already verified profile publishes nothing).
pub async fn on_email_verified(tx: &mut Tx, event: UserEmailVerified, outbox: &Outbox) -> anyhow::Result<()> {
    if let Some((profile, true)) = store::mark_verified(tx, event.user_id, Utc::now()).await? {
        outbox.publish(tx, &routes::profile_updated(&profile)).await?;
    }
    Ok(())
}

/// Erase the profile of a deleted account, which frees its email for a new signup, and the
/// events naming it in the outbox. A second delivery finds nothing left to erase.
pub async fn on_user_deleted(tx: &mut Tx, event: UserDeleted, _: &Outbox) -> anyhow::Result<()> {
    store::delete(tx, event.user_id).await?;
    dozen_bus::erasure::forget_user(tx, event.user_id).await?;
    Ok(())
}
