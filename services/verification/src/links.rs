//! Issuing verification, password reset and email change links, and notices: the one place where a token and the mail that
//! carries it are written, together, in the caller's transaction (an event handler's or a
//! resend request's). The mail leaves only if the transaction commits.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dozen_kit::db::Tx;
use dozen_kit::trace_context;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::domain::{self, MailKind, Token};
use crate::store::{self, DAY_MS, Throttle};

/// What issuing needs: where links point, how long they live, whom to wake.
#[derive(Debug, Clone)]
pub struct Links {
    /// The base of every link (`PUBLIC_URL`).
    pub public_url: String,
    /// How long a token works (`TOKEN_TTL`).
    pub ttl: Duration,
    /// How long a password reset token works (`RESET_TOKEN_TTL`).
    pub reset_ttl: Duration,
    /// The resend throttle, also applied to conflict notices.
    pub throttle: Throttle,
    /// Woken after a commit that queued a mail, so the sender needs no fast polling.
    pub mail_queued: Arc<Notify>,
    /// The dev mailbox's folder, when mail goes to one: a deleted account's mail is removed
    /// from it too.
    pub mailbox: Option<PathBuf>,
}

impl Links {
    /// Issue a fresh token for `user_id` (revoking older ones) and queue its mail to `email`.
    pub async fn issue(&self, tx: &mut Tx, user_id: Uuid, email: &str, now: i64) -> anyhow::Result<()> {
        let token = Token::generate()?;
        let expires_at = now.saturating_add(i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX));
        let trace_parent = trace_context::current_traceparent();
        store::issue_token(
            tx,
            user_id,
            &token.hash(),
            now,
            expires_at,
            trace_parent.as_deref(),
        )
        .await?;
        let mail = domain::verification_mail(email, &self.public_url, &token, self.ttl);
        store::queue_mail(tx, &mail, now).await?;
        tx.wake_after_commit(self.mail_queued.clone());
        Ok(())
    }

    /// Issue a password reset token for `user_id` (revoking the open ones) and queue its mail
    /// to `email`, unless the throttle says enough reset mails went there lately (someone may
    /// be trying to flood the owner). Whether one was queued.
    pub async fn issue_reset(
        &self,
        tx: &mut Tx,
        user_id: Uuid,
        email: &str,
        now: i64,
    ) -> anyhow::Result<bool> {
        if !self.mail_allowed(tx, email, MailKind::PasswordReset, now).await? {
            return Ok(false);
        }
        let token = Token::generate()?;
        let expires_at = now.saturating_add(i64::try_from(self.reset_ttl.as_millis()).unwrap_or(i64::MAX));
        store::issue_reset_token(tx, user_id, &token.hash(), now, expires_at).await?;
        let mail = domain::reset_mail(email, &self.public_url, &token, self.reset_ttl);
        store::queue_mail(tx, &mail, now).await?;
        tx.wake_after_commit(self.mail_queued.clone());
        Ok(true)
    }

    /// Tell `user_id`'s owner that their password was changed, and revoke their open reset
    /// links. Never throttled: the owner must hear of every change. Whether the account is
    /// known here.
    pub async fn notify_password_changed(
        &self,
        tx: &mut Tx,
        user_id: Uuid,
        occurred_at: DateTime<Utc>,
        method: &str,
        now: i64,
    ) -> anyhow::Result<bool> {
        let Some(email) = store::email_of(tx, user_id).await? else {
            return Ok(false);
        };
        store::revoke_reset_tokens(tx, user_id, now).await?;
        store::queue_mail(
            tx,
            &domain::password_changed_mail(&email, occurred_at, method),
            now,
        )
        .await?;
        tx.wake_after_commit(self.mail_queued.clone());
        Ok(true)
    }

    /// Whether the throttle (`RESEND_INTERVAL`, `RESEND_DAILY_LIMIT`) allows one more mail of
    /// `kind` to `email` now.
    async fn mail_allowed(&self, tx: &mut Tx, email: &str, kind: MailKind, now: i64) -> anyhow::Result<bool> {
        let (count, last) = store::recent_mails(tx, email, kind, now - DAY_MS).await?;
        let too_soon = last.is_some_and(|last| last > now - self.throttle.interval_ms);
        Ok(!too_soon && count < self.throttle.daily_limit)
    }

    /// Queue the notice for an attempt to sign up again with `email`, unless the throttle
    /// says enough notices went there lately (someone may be trying to flood the owner).
    /// Whether one was queued.
    pub async fn notify_conflict(
        &self,
        tx: &mut Tx,
        email: &str,
        attempted_at: DateTime<Utc>,
        now: i64,
    ) -> anyhow::Result<bool> {
        if !self
            .mail_allowed(tx, email, MailKind::SignupConflict, now)
            .await?
        {
            return Ok(false);
        }
        store::queue_mail(tx, &domain::signup_conflict_mail(email, attempted_at), now).await?;
        tx.wake_after_commit(self.mail_queued.clone());
        Ok(true)
    }

    /// Issue an email change token for `claim` (revoking the user's open ones) and queue its
    /// mail to the new address, unless the throttle says enough such mails went there lately
    /// (someone may be trying to flood its owner). Whether one was queued.
    pub async fn issue_email_change(
        &self,
        tx: &mut Tx,
        claim: &store::EmailChangeClaim,
        now: i64,
    ) -> anyhow::Result<bool> {
        store::revoke_email_change_tokens(tx, claim.user_id, now).await?;
        if !self
            .mail_allowed(tx, &claim.new_email, MailKind::EmailChange, now)
            .await?
        {
            return Ok(false);
        }
        let token = Token::generate()?;
        let expires_at = now.saturating_add(i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX));
        store::issue_email_change_token(tx, claim, &token.hash(), now, expires_at).await?;
        let mail = domain::email_change_mail(&claim.new_email, &self.public_url, &token, self.ttl);
        store::queue_mail(tx, &mail, now).await?;
        tx.wake_after_commit(self.mail_queued.clone());
        Ok(true)
    }

    /// Tell the owner, at the address in use, that a change of address was asked for. Never
    /// throttled: asking needs the password, and the owner must hear of every request.
    pub async fn notify_email_change_requested(
        &self,
        tx: &mut Tx,
        old_email: &str,
        requested_at: DateTime<Utc>,
        now: i64,
    ) -> anyhow::Result<()> {
        let mail = domain::email_change_requested_mail(old_email, requested_at);
        store::queue_mail(tx, &mail, now).await?;
        tx.wake_after_commit(self.mail_queued.clone());
        Ok(())
    }

    /// Tell the owner of `email` that someone asked to move another account to it, unless
    /// the throttle says enough such notices went there lately. Whether one was queued.
    pub async fn notify_email_change_conflict(
        &self,
        tx: &mut Tx,
        email: &str,
        requested_at: DateTime<Utc>,
        now: i64,
    ) -> anyhow::Result<bool> {
        if !self
            .mail_allowed(tx, email, MailKind::EmailChangeConflict, now)
            .await?
        {
            return Ok(false);
        }
        store::queue_mail(tx, &domain::email_change_conflict_mail(email, requested_at), now).await?;
        tx.wake_after_commit(self.mail_queued.clone());
        Ok(true)
    }

    /// Erase a deleted account: its accounts, tokens and mail (see `store::erase_account`),
    /// and that mail's copies in the dev mailbox. Mail sent over SMTP is the recipient's.
    pub async fn erase(&self, tx: &mut Tx, user_id: Uuid, until: DateTime<Utc>) -> anyhow::Result<()> {
        let mails = store::erase_account(tx, user_id, until.timestamp_millis()).await?;
        if let Some(folder) = &self.mailbox {
            crate::mailer::remove_from_folder(folder, &mails).await?;
        }
        Ok(())
    }
}
