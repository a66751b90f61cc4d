//! The events the signup service consumes, one named handler each, registered in
//! [`handlers`]: a deleted account's signup records are forgotten.

use dozen_bus::contracts::UserDeleted;
use dozen_bus::{EventHandlers, Tx};

use crate::store;

/// Every handler, for the service's one subscription.
pub fn handlers() -> EventHandlers<()> {
    EventHandlers::new(()).on(on_user_deleted)
}

/// Forget the signups of a deleted account (they hold its email, name and interests) and the
/// events naming it in the outbox. A second delivery finds nothing left.
pub async fn on_user_deleted(tx: &mut Tx, event: UserDeleted) -> anyhow::Result<()> {
    let forgotten = store::forget_user(tx, event.user_id, event.occurred_at).await?;
    dozen_bus::erasure::forget_user(tx, event.user_id).await?;
    tracing::debug!(user_id = %event.user_id, forgotten, "signups forgotten");
    Ok(())
}
