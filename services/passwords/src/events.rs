//! The events the passwords service consumes, one named handler each, registered in
//! [`handlers`].

use dozen_bus::contracts::{UserEmailChanged, UserEmailVerified};
use dozen_bus::{EventHandlers, Tx};

use crate::store;

/// Every handler, for the service's one subscription.
pub fn handlers() -> EventHandlers<()> {
    EventHandlers::new(()).on(on_email_verified).on(on_email_changed)
}

/// Login opens once the email is verified: the verification service says so.
pub async fn on_email_verified(tx: &mut Tx, event: UserEmailVerified) -> anyhow::Result<()> {
    if !store::mark_verified(tx, event.user_id).await? {
        // A credential undone by signup's repair: nothing to open.
        tracing::info!(user_id = %event.user_id, "verified email without a credential");
    }
    Ok(())
}

/// The user logs in with their new address from now on, and no longer with the old one. The
/// addresses are unique in users, which decided the change; a credential here that still
/// holds the new address (its owner's own change not applied yet) makes the update fail, and
/// the event is retried after that one.
pub async fn on_email_changed(tx: &mut Tx, event: UserEmailChanged) -> anyhow::Result<()> {
    if !store::set_email(tx, event.user_id, &event.new_email).await? {
        tracing::info!(user_id = %event.user_id, "changed email without a credential");
    }
    Ok(())
}
