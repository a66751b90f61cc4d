//! The events the friends service consumes, one named handler each, registered in
//! [`handlers`]: they keep its copy of each member (name, interests, verified) current, and
//! erase a member who deleted their account or whose unverified account a newer signup
//! replaced.

use dozen_bus::contracts::{UserDeleted, UserEmailVerified, UserProfileUpdated, UserSignedUp};
use dozen_bus::{EventHandlers, Tx};

use crate::store;

/// Every handler, for the service's one subscription.
pub fn handlers() -> EventHandlers<()> {
    EventHandlers::new(())
        .on(on_signed_up)
        .on(on_profile_updated)
        .on(on_email_verified)
        .on(on_user_deleted)
}

/// A new member, not verified yet, with the interests as the users service normalised them.
/// The account it replaced (an unverified signup for the same address) is erased as a deleted
/// one is, so that its own event, arriving late, does not bring it back.
pub async fn on_signed_up(tx: &mut Tx, event: UserSignedUp) -> anyhow::Result<()> {
    if let Some(replaced) = event.replaces {
        store::erase_member(tx, replaced).await?;
    }
    store::upsert_member(tx, event.user_id, &event.display_name, &event.interests, false).await?;
    Ok(())
}

/// A member's profile as it now is.
pub async fn on_profile_updated(tx: &mut Tx, event: UserProfileUpdated) -> anyhow::Result<()> {
    store::upsert_member(
        tx,
        event.user_id,
        &event.display_name,
        &event.interests,
        event.verified,
    )
    .await?;
    Ok(())
}

/// A member who may now be suggested to others.
pub async fn on_email_verified(tx: &mut Tx, event: UserEmailVerified) -> anyhow::Result<()> {
    store::mark_verified(tx, event.user_id).await?;
    Ok(())
}

/// A member who deleted their account: gone from every list, and from the log (tombstoned,
/// see `store::erase_member`), with the events naming them in the outbox.
pub async fn on_user_deleted(tx: &mut Tx, event: UserDeleted) -> anyhow::Result<()> {
    let streams = store::erase_member(tx, event.user_id).await?;
    dozen_bus::erasure::forget_user(tx, event.user_id).await?;
    tracing::debug!(user_id = %event.user_id, streams, "member erased");
    Ok(())
}
