//! The mail sender: the background task that empties the `mails` table (an outbox for mail).
//!
//! Handlers and routes only queue a mail row, in the same transaction as the token it carries,
//! so a mail exists if and only if its token does. The sender then claims one due row at a
//! time with a lease of twice `MAIL_TIMEOUT` (several instances never hold the same row),
//! delivers it under the row's id, cut off at `MAIL_TIMEOUT` so the lease cannot run out
//! mid-delivery, and marks it sent. A sender that dies after delivering and before
//! marking leaves the lease to run out; the row is then delivered again under the same id:
//! the mailbox file is replaced (still one message), an SMTP server gets a second copy with
//! the same Message-ID (see [`crate::mailer`]). A failed delivery is retried with a doubling
//! delay; a permanent refusal, or `MAX_ATTEMPTS` failures, gives up on the mail.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use dozen_kit::db::Db;
use lettre::message::Mailbox;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::mailer::{DeliveryError, Mailer, Outgoing};
use crate::store;

/// Attempts before a mail is given up.
const MAX_ATTEMPTS: i32 = 12;
/// The first retry's delay; it doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest delay between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Backstop poll, for retries and for rows a dead instance left; wake-ups are otherwise
/// immediate.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How often the backlog gauge is refreshed and old rows forgotten.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(30);
/// How long sent mails and dead tokens are kept (for the conflict notices' throttle and for
/// inspection).
const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Delivers queued mail.
#[derive(Debug, Clone)]
pub struct MailSender {
    db: Db,
    mailer: Mailer,
    from: Mailbox,
    /// Woken after each commit that queued a mail.
    wake: Arc<Notify>,
    /// Names this instance's leases.
    owner: String,
    /// Longest one delivery may take (`MAIL_TIMEOUT`); the lease on a claimed mail is twice it.
    timeout: Duration,
    /// Whether old rows are archived (`ARCHIVE_URL`), so the upkeep must not delete them.
    archived: bool,
}

impl MailSender {
    /// A sender of the mails in `db` through `mailer`, from `from`; `timeout` is `MAIL_TIMEOUT`.
    pub fn new(db: Db, mailer: Mailer, from: Mailbox, wake: Arc<Notify>, timeout: Duration) -> Self {
        describe_metrics();
        Self {
            db,
            mailer,
            from,
            wake,
            owner: Uuid::new_v4().to_string(),
            timeout,
            archived: false,
        }
    }

    /// Leave old mail and tokens in place for the `archive` admin process (`ARCHIVE_URL` is
    /// set) instead of forgetting them.
    pub fn archived(mut self, archived: bool) -> Self {
        self.archived = archived;
        self
    }

    /// Send until `stop` is cancelled; the delivery in flight finishes first.
    pub async fn run(self, stop: CancellationToken) {
        let mut upkeep_due = Instant::now();
        loop {
            if stop.is_cancelled() {
                return;
            }
            let more = match self.send_one().await {
                Ok(sent) => sent,
                Err(error) => {
                    tracing::warn!(%error, "sending mail failed; retrying");
                    false
                }
            };
            if upkeep_due <= Instant::now() {
                upkeep_due = Instant::now() + UPKEEP_INTERVAL;
                if let Err(error) = self.upkeep().await {
                    tracing::warn!(%error, "mail upkeep failed");
                }
            }
            if more {
                continue;
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(POLL_INTERVAL) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    /// Claim the oldest due mail and deliver it. False when none was due.
    pub async fn send_one(&self) -> Result<bool, sqlx::Error> {
        let now = Utc::now().timestamp_millis();
        let lease_until = now + millis(self.timeout.saturating_mul(2));
        let Some(claimed) = store::claim_mail(&self.db, &self.owner, now, lease_until).await? else {
            return Ok(false);
        };
        let Some(body) = claimed.body else {
            // Only sent or failed rows lose their body, and those are never claimed.
            store::mark_failed(
                &self.db,
                claimed.id,
                &self.owner,
                now,
                None,
                "the body is missing",
            )
            .await?;
            return Ok(true);
        };
        let outgoing = Outgoing {
            id: claimed.id,
            to: claimed.recipient,
            subject: claimed.subject,
            body,
        };
        let kind = claimed.kind;
        let outcome = tokio::time::timeout(self.timeout, self.mailer.deliver(&self.from, &outgoing))
            .await
            .unwrap_or_else(|_| {
                Err(DeliveryError::Transient(
                    "the delivery timed out (MAIL_TIMEOUT)".into(),
                ))
            });
        let now = Utc::now().timestamp_millis();
        match outcome {
            Ok(()) => {
                store::mark_sent(&self.db, outgoing.id, &self.owner, now).await?;
                metrics::counter!("mail_sent_total", "kind" => kind.clone()).increment(1);
                tracing::info!(mail_id = %outgoing.id, kind, "mail sent");
            }
            Err(error) => {
                let attempts = claimed.attempts + 1;
                let retry_at = match &error {
                    DeliveryError::Transient(_) if attempts < MAX_ATTEMPTS => {
                        Some(now + millis(backoff(attempts)))
                    }
                    _ => None,
                };
                store::mark_failed(
                    &self.db,
                    outgoing.id,
                    &self.owner,
                    now,
                    retry_at,
                    &error.to_string(),
                )
                .await?;
                if retry_at.is_some() {
                    metrics::counter!("mail_retried_total", "kind" => kind.clone()).increment(1);
                    tracing::warn!(mail_id = %outgoing.id, kind, attempts, %error, "mail not delivered; will retry");
                } else {
                    metrics::counter!("mail_failed_total", "kind" => kind.clone()).increment(1);
                    tracing::error!(mail_id = %outgoing.id, kind, attempts, %error, "mail not delivered; giving up");
                }
            }
        }
        Ok(true)
    }

    async fn upkeep(&self) -> Result<(), sqlx::Error> {
        let now = Utc::now().timestamp_millis();
        let (backlog, oldest) = store::mail_backlog(&self.db).await?;
        metrics::gauge!("mail_backlog").set(backlog as f64);
        let age = oldest.map_or(0.0, |queued| (now - queued).max(0) as f64 / 1000.0);
        metrics::gauge!("mail_backlog_oldest_seconds").set(age);
        if self.archived {
            return Ok(());
        }
        store::forget_before(&self.db, now - millis(RETENTION)).await
    }
}

/// The delay before retry number `attempt` (1 for the first).
fn backoff(attempt: i32) -> Duration {
    let doublings = u32::try_from(attempt.saturating_sub(1)).unwrap_or(0).min(20);
    FIRST_BACKOFF
        .saturating_mul(2u32.saturating_pow(doublings))
        .min(MAX_BACKOFF)
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn describe_metrics() {
    metrics::describe_counter!("mail_sent_total", "Mails delivered, by kind.");
    metrics::describe_counter!(
        "mail_retried_total",
        "Mail deliveries that failed and will be retried."
    );
    metrics::describe_counter!(
        "mail_failed_total",
        "Mails given up after a refusal or too many attempts."
    );
    metrics::describe_gauge!("mail_backlog", "Mails queued and not yet delivered.");
    metrics::describe_gauge!(
        "mail_backlog_oldest_seconds",
        "Age of the oldest mail not yet delivered."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_delay_doubles_up_to_its_ceiling() {
        let delays: Vec<u64> = [1, 2, 3, 10, 30].iter().map(|a| backoff(*a).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 300, 300]);
    }
}
