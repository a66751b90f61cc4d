//! The events the passwords service consumes, one named handler each, registered in
//! [`handlers`].

use dozen_bus::contracts::UserEmailVerified;
use dozen_bus::{EventHandlers, Tx};

use crate::store;

/// Every handler, for the service's one subscription.
pub fn handlers() -> EventHandlers<()> {
    EventHandlers::new(()).on(on_email_verified)
}

/// Login opens once the email is verified: the verification service says so.
pub async fn on_email_verified(tx: &mut Tx, event: UserEmailVerified) -> anyhow::Result<()> {
    if !store::mark_verified(tx, event.user_id).await? {
        // A credential undone by signup's repair: nothing to open.
        tracing::info!(user_id = %event.user_id, "verified email without a credential");
    }
    Ok(())
}
