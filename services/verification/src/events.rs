//! The events the verification service consumes, one named handler each, registered in
//! [`handlers`]: a new account gets its verification mail, a signup for a taken address a
//! notice to its owner, a changed password a notice too; a requested email change a link to
//! the new address and a notice to the old, a changed email is mailed at from then on, and a
//! deleted account is erased.

use chrono::Utc;
use dozen_bus::contracts::{
    UserDeleted, UserEmailChangeRequested, UserEmailChanged, UserPasswordChanged, UserSignedUp,
    UserSignupConflict,
};
use dozen_bus::{EventHandlers, Tx};
use dozen_kit::email::Email;

use crate::links::Links;
use crate::store;

/// Every handler, for the service's one subscription; they issue tokens and mails through
/// `links`.
pub fn handlers(links: Links) -> EventHandlers<Links> {
    EventHandlers::new(links)
        .on(on_signed_up)
        .on(on_signup_conflict)
        .on(on_password_changed)
        .on(on_email_change_requested)
        .on(on_email_changed)
        .on(on_user_deleted)
}

/// Record the account and mail its verification link. A second event for the same user (the
/// signup announced twice) mails nothing. A signup that replaced an unverified account for its
/// address names it (`replaces`): that account's links stop working, and if its own event comes
/// later (the bus may deliver out of order), it gets none.
pub async fn on_signed_up(tx: &mut Tx, event: UserSignedUp, links: &Links) -> anyhow::Result<()> {
    let now = Utc::now().timestamp_millis();
    let email = Email::parse(&event.email).map_err(|e| anyhow::anyhow!("the signed-up email {e}"))?;
    if let Some(replaced) = event.replaces {
        store::replace_account(tx, replaced, now).await?;
        tracing::info!(user_id = %event.user_id, %replaced, "a replaced account's links are revoked");
    }
    if store::create_account(tx, event.user_id, email.as_str(), now).await? {
        if store::is_replaced(tx, event.user_id).await? {
            tracing::info!(user_id = %event.user_id, "a replaced account gets no verification link");
        } else {
            links.issue(tx, event.user_id, email.as_str(), now).await?;
        }
    }
    Ok(())
}

/// Tell the owner of an address that someone tried to sign up with it (throttled).
pub async fn on_signup_conflict(tx: &mut Tx, event: UserSignupConflict, links: &Links) -> anyhow::Result<()> {
    let now = Utc::now().timestamp_millis();
    let email = Email::parse(&event.email).map_err(|e| anyhow::anyhow!("the conflicting email {e}"))?;
    if !links
        .notify_conflict(tx, email.as_str(), event.attempted_at, now)
        .await?
    {
        tracing::info!(user_id = %event.user_id, "conflict notice throttled");
    }
    Ok(())
}

/// Tell the owner that their password was changed (by a reset or from their settings), and
/// revoke the reset links still open.
pub async fn on_password_changed(
    tx: &mut Tx,
    event: UserPasswordChanged,
    links: &Links,
) -> anyhow::Result<()> {
    let now = Utc::now().timestamp_millis();
    if !links
        .notify_password_changed(tx, event.user_id, event.occurred_at, &event.method, now)
        .await?
    {
        tracing::info!(user_id = %event.user_id, "password changed for an account unknown here");
    }
    Ok(())
}

/// Mail the new address its link (or, when another account has it, that account's owner a
/// notice instead) and the old address a notice that does not name the new one. Either way
/// the user's earlier change links stop working: this request replaced them.
pub async fn on_email_change_requested(
    tx: &mut Tx,
    event: UserEmailChangeRequested,
    links: &Links,
) -> anyhow::Result<()> {
    let now = Utc::now().timestamp_millis();
    let new_email = Email::parse(&event.new_email).map_err(|e| anyhow::anyhow!("the requested email {e}"))?;
    links
        .notify_email_change_requested(tx, &event.old_email, event.requested_at, now)
        .await?;
    if event.new_email_taken {
        store::revoke_email_change_tokens(tx, event.user_id, now).await?;
        if !links
            .notify_email_change_conflict(tx, new_email.as_str(), event.requested_at, now)
            .await?
        {
            tracing::info!(user_id = %event.user_id, "email change conflict notice throttled");
        }
        return Ok(());
    }
    let claim = store::EmailChangeClaim {
        user_id: event.user_id,
        change_id: event.change_id,
        new_email: new_email.as_str().to_owned(),
    };
    if !links.issue_email_change(tx, &claim, now).await? {
        tracing::info!(user_id = %event.user_id, "email change link throttled");
    }
    Ok(())
}

/// Mail the user at their new address from now on; following its link proved it.
pub async fn on_email_changed(tx: &mut Tx, event: UserEmailChanged) -> anyhow::Result<()> {
    let email = Email::parse(&event.new_email).map_err(|e| anyhow::anyhow!("the changed email {e}"))?;
    let now = Utc::now().timestamp_millis();
    if !store::change_account_email(tx, event.user_id, email.as_str(), now).await? {
        tracing::info!(user_id = %event.user_id, "email changed for an account unknown here");
    }
    Ok(())
}

/// Erase a deleted account: its tokens and every mail to its address (the dev mailbox's
/// copies too), and the events naming it in the outbox. A second delivery finds nothing.
pub async fn on_user_deleted(tx: &mut Tx, event: UserDeleted, links: &Links) -> anyhow::Result<()> {
    links.erase(tx, event.user_id, event.occurred_at).await?;
    dozen_bus::erasure::forget_user(tx, event.user_id).await?;
    Ok(())
}
