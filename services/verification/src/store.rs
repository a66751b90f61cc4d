//! The verification service's tables: accounts (address, verified, resend throttle), tokens
//! of verification, of password reset and of email change (hashes only) and outgoing mail. Each statement is written once and runs on SQLite or
//! Postgres (`with_conn!`, `with_pool!`); times are milliseconds since the epoch on both.

use dozen_kit::archive::ArchiveTable;
use dozen_kit::db::{Db, Tx, TxConn};
use dozen_kit::{with_conn, with_pool};
use uuid::Uuid;

use crate::domain::{Mail, MailKind, TokenHash};

/// A day, for the daily resend limit.
pub const DAY_MS: i64 = 24 * 3600 * 1000;

/// Record a new account, with its first mail counted against the resend throttle. False when
/// the user is known already (the signup was announced twice): nothing changes.
pub async fn create_account(tx: &mut Tx, user_id: Uuid, email: &str, now: i64) -> Result<bool, sqlx::Error> {
    with_conn!(tx.conn(), conn => sqlx::query(
        "INSERT INTO accounts (user_id, email, signed_up_at, last_mail_at, window_started_at, mails_in_window)
         VALUES ($1, $2, $3, $3, $3, 1) ON CONFLICT DO NOTHING",
    )
    .bind(user_id)
    .bind(email)
    .bind(now)
    .execute(conn)
    .await
    .map(|done| done.rows_affected() == 1))
}

/// Record that a newer signup replaced `user_id` and revoke its open verification links;
/// its account need not be known yet (events may arrive in any order). Idempotent.
pub async fn replace_account(tx: &mut Tx, user_id: Uuid, now: i64) -> Result<(), sqlx::Error> {
    with_conn!(tx.conn(), conn => sqlx::query(
        "INSERT INTO replaced_accounts (user_id, replaced_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(user_id)
    .bind(now)
    .execute(conn)
    .await
    .map(drop))?;
    with_conn!(tx.conn(), conn => sqlx::query(
        "UPDATE verification_tokens SET revoked_at = $2
         WHERE user_id = $1 AND used_at IS NULL AND revoked_at IS NULL",
    )
    .bind(user_id)
    .bind(now)
    .execute(conn)
    .await
    .map(drop))
}

/// Whether a newer signup replaced `user_id`.
pub async fn is_replaced(tx: &mut Tx, user_id: Uuid) -> Result<bool, sqlx::Error> {
    let row: Option<(i32,)> = with_conn!(tx.conn(), conn => sqlx::query_as(
        "SELECT 1 FROM replaced_accounts WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_optional(conn)
    .await)?;
    Ok(row.is_some())
}

/// The newest account with `email` that no newer signup replaced, if it is unverified.
pub async fn unverified_account(tx: &mut Tx, email: &str) -> Result<Option<Uuid>, sqlx::Error> {
    let row: Option<(Uuid, Option<i64>)> = with_conn!(tx.conn(), conn => sqlx::query_as(
        "SELECT user_id, verified_at FROM accounts
         WHERE email = $1 AND user_id NOT IN (SELECT user_id FROM replaced_accounts)
         ORDER BY signed_up_at DESC, user_id DESC LIMIT 1",
    )
    .bind(email)
    .fetch_optional(conn)
    .await)?;
    Ok(row.and_then(|(id, verified_at)| verified_at.is_none().then_some(id)))
}

/// What an account's owner may see of its verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountStatus {
    /// When the address was verified.
    pub verified_at: Option<i64>,
    /// When the last verification mail to it was delivered.
    pub last_sent_at: Option<i64>,
    /// Whether a verification mail to it is queued and not yet delivered.
    pub mail_pending: bool,
}

/// The verification state of `user_id`'s account, if this service knows it.
pub async fn account_status(db: &Db, user_id: Uuid) -> Result<Option<AccountStatus>, sqlx::Error> {
    let row: Option<(Option<i64>, Option<i64>, i64)> = with_pool!(db, pool => sqlx::query_as(
        "SELECT a.verified_at,
                (SELECT MAX(m.sent_at) FROM mails m
                  WHERE m.recipient = a.email AND m.kind = $2),
                (SELECT COUNT(*) FROM mails m
                  WHERE m.recipient = a.email AND m.kind = $2 AND m.sent_at IS NULL AND m.failed_at IS NULL)
         FROM accounts a WHERE a.user_id = $1",
    )
    .bind(user_id)
    .bind(MailKind::Verification.as_str())
    .fetch_optional(pool)
    .await)?;
    Ok(row.map(|(verified_at, last_sent_at, pending)| AccountStatus {
        verified_at,
        last_sent_at,
        mail_pending: pending > 0,
    }))
}

/// The resend throttle, for [`take_resend_slot`].
#[derive(Debug, Clone, Copy)]
pub struct Throttle {
    /// Least time between two mails to one account, in ms.
    pub interval_ms: i64,
    /// Most mails to one account in a day (the first one included).
    pub daily_limit: i64,
}

/// Count one more mail against the account's throttle, if it allows one now; false (and
/// nothing changed) when it does not. One conditional update, so concurrent resends cannot
/// both pass: Postgres re-checks the condition on the row it locked.
pub async fn take_resend_slot(
    tx: &mut Tx,
    user_id: Uuid,
    throttle: Throttle,
    now: i64,
) -> Result<bool, sqlx::Error> {
    with_conn!(tx.conn(), conn => sqlx::query(
        "UPDATE accounts SET
             last_mail_at = $2,
             window_started_at = CASE WHEN window_started_at <= $2 - $3 THEN $2 ELSE window_started_at END,
             mails_in_window = CASE WHEN window_started_at <= $2 - $3 THEN 1 ELSE mails_in_window + 1 END
         WHERE user_id = $1 AND verified_at IS NULL
           AND last_mail_at <= $2 - $4
           AND (window_started_at <= $2 - $3 OR mails_in_window < $5)",
    )
    .bind(user_id)
    .bind(now)
    .bind(DAY_MS)
    .bind(throttle.interval_ms)
    .bind(throttle.daily_limit)
    .execute(conn)
    .await
    .map(|done| done.rows_affected() == 1))
}

/// Store a token's hash for `user_id`, after revoking every token of the user still open:
/// only the newest link works. `trace_parent` is the trace it is issued in, for the link's
/// use to continue.
pub async fn issue_token(
    tx: &mut Tx,
    user_id: Uuid,
    hash: &TokenHash,
    now: i64,
    expires_at: i64,
    trace_parent: Option<&str>,
) -> Result<(), sqlx::Error> {
    with_conn!(tx.conn(), conn => sqlx::query(
        "UPDATE verification_tokens SET revoked_at = $2
         WHERE user_id = $1 AND used_at IS NULL AND revoked_at IS NULL",
    )
    .bind(user_id)
    .bind(now)
    .execute(conn)
    .await
    .map(drop))?;
    with_conn!(tx.conn(), conn => sqlx::query(
        "INSERT INTO verification_tokens (token_hash, user_id, created_at, expires_at, trace_parent)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(hash.0.as_slice())
    .bind(user_id)
    .bind(now)
    .bind(expires_at)
    .bind(trace_parent)
    .execute(conn)
    .await
    .map(drop))
}

/// A token just used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Used {
    /// Whose it was.
    pub user_id: Uuid,
    /// The address it verifies.
    pub email: String,
    /// Whether this use verified the account (false: it was verified before).
    pub newly_verified: bool,
    /// The trace the token was issued in (a `traceparent`), when one was recorded.
    pub trace_parent: Option<String>,
}

/// Use the token with `hash` if it is open (not used, not revoked, not expired): mark it
/// used, revoke the user's other tokens and mark the account verified. `None` otherwise, with
/// nothing changed. The first update is conditional, so a token is used at most once even
/// when two requests race.
pub async fn use_token(tx: &mut Tx, hash: &TokenHash, now: i64) -> Result<Option<Used>, sqlx::Error> {
    let used: Option<(Uuid, Option<String>)> = with_conn!(tx.conn(), conn => sqlx::query_as(
        "UPDATE verification_tokens SET used_at = $2
         WHERE token_hash = $1 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > $2
           AND user_id NOT IN (SELECT user_id FROM replaced_accounts)
         RETURNING user_id, trace_parent",
    )
    .bind(hash.0.as_slice())
    .bind(now)
    .fetch_optional(conn)
    .await)?;
    let Some((user_id, trace_parent)) = used else {
        return Ok(None);
    };
    with_conn!(tx.conn(), conn => sqlx::query(
        "UPDATE verification_tokens SET revoked_at = $2
         WHERE user_id = $1 AND used_at IS NULL AND revoked_at IS NULL",
    )
    .bind(user_id)
    .bind(now)
    .execute(conn)
    .await
    .map(drop))?;
    let newly_verified = with_conn!(tx.conn(), conn => sqlx::query(
        "UPDATE accounts SET verified_at = $2 WHERE user_id = $1 AND verified_at IS NULL",
    )
    .bind(user_id)
    .bind(now)
    .execute(conn)
    .await
    .map(|done| done.rows_affected() == 1))?;
    let (email,): (String,) = with_conn!(tx.conn(), conn => sqlx::query_as(
        "SELECT email FROM accounts WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_one(conn)
    .await)?;
    Ok(Some(Used {
        user_id,
        email,
        newly_verified,
        trace_parent,
    }))
}

/// Mails of `kind` queued to `recipient` since `since`, and when the last one was.
pub async fn recent_mails(
    tx: &mut Tx,
    recipient: &str,
    kind: MailKind,
    since: i64,
) -> Result<(i64, Option<i64>), sqlx::Error> {
    with_conn!(tx.conn(), conn => sqlx::query_as(
        "SELECT COUNT(*), MAX(created_at) FROM mails WHERE recipient = $1 AND kind = $2 AND created_at > $3",
    )
    .bind(recipient)
    .bind(kind.as_str())
    .bind(since)
    .fetch_one(conn)
    .await)
}

/// Queue `mail`: the sender delivers it once `tx` commits. Returns its id.
pub async fn queue_mail(tx: &mut Tx, mail: &Mail, now: i64) -> Result<Uuid, sqlx::Error> {
    let id = Uuid::now_v7();
    with_conn!(tx.conn(), conn => sqlx::query(
        "INSERT INTO mails (id, kind, recipient, subject, body, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(mail.kind.as_str())
    .bind(&mail.to)
    .bind(&mail.subject)
    .bind(&mail.body)
    .bind(now)
    .execute(conn)
    .await
    .map(drop))?;
    Ok(id)
}

/// A mail claimed for sending.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedMail {
    /// Its id.
    pub id: Uuid,
    /// Its kind's name.
    pub kind: String,
    /// Its address.
    pub recipient: String,
    /// Its subject.
    pub subject: String,
    /// Its body (present until sent).
    pub body: Option<String>,
    /// Failed attempts so far.
    pub attempts: i32,
}

const CLAIM_SQLITE: &str = "
UPDATE mails SET lease_owner = $1, lease_until = $2
WHERE id = (
    SELECT id FROM mails
    WHERE sent_at IS NULL AND failed_at IS NULL AND next_attempt_at <= $3 AND lease_until <= $3
    ORDER BY created_at, id
    LIMIT 1)
RETURNING id, kind, recipient, subject, body, attempts";

const CLAIM_POSTGRES: &str = "
UPDATE mails SET lease_owner = $1, lease_until = $2
WHERE id = (
    SELECT id FROM mails
    WHERE sent_at IS NULL AND failed_at IS NULL AND next_attempt_at <= $3 AND lease_until <= $3
    ORDER BY created_at, id
    LIMIT 1
    FOR UPDATE SKIP LOCKED)
RETURNING id, kind, recipient, subject, body, attempts";

/// Claim the oldest due mail for `owner` until `lease_until`: no other sender takes it while
/// the lease holds (SQLite: inside `BEGIN IMMEDIATE`; Postgres: `FOR UPDATE SKIP LOCKED`).
pub async fn claim_mail(
    db: &Db,
    owner: &str,
    now: i64,
    lease_until: i64,
) -> Result<Option<ClaimedMail>, sqlx::Error> {
    let mut tx = Tx::begin(db).await?;
    let claimed = match tx.conn() {
        TxConn::Sqlite(conn) => {
            sqlx::query_as(CLAIM_SQLITE)
                .bind(owner)
                .bind(lease_until)
                .bind(now)
                .fetch_optional(conn)
                .await?
        }
        TxConn::Postgres(conn) => {
            sqlx::query_as(CLAIM_POSTGRES)
                .bind(owner)
                .bind(lease_until)
                .bind(now)
                .fetch_optional(conn)
                .await?
        }
    };
    tx.commit().await?;
    Ok(claimed)
}

/// Mark a claimed mail sent, and forget its body (it may hold a live token). Nothing happens
/// if `owner` lost the lease meanwhile.
pub async fn mark_sent(db: &Db, id: Uuid, owner: &str, now: i64) -> Result<(), sqlx::Error> {
    let mut tx = Tx::begin(db).await?;
    with_conn!(tx.conn(), conn => sqlx::query(
        "UPDATE mails SET sent_at = $3, body = NULL, lease_owner = NULL, lease_until = 0, last_error = NULL
         WHERE id = $1 AND lease_owner = $2",
    )
    .bind(id)
    .bind(owner)
    .bind(now)
    .execute(conn)
    .await
    .map(drop))?;
    tx.commit().await
}

/// Record a failed attempt: retry at `retry_at`, or give up (`retry_at` is `None`) and forget
/// the body.
pub async fn mark_failed(
    db: &Db,
    id: Uuid,
    owner: &str,
    now: i64,
    retry_at: Option<i64>,
    error: &str,
) -> Result<(), sqlx::Error> {
    let mut tx = Tx::begin(db).await?;
    with_conn!(tx.conn(), conn => sqlx::query(
        "UPDATE mails SET attempts = attempts + 1, last_error = $3, lease_owner = NULL, lease_until = 0,
             next_attempt_at = COALESCE($4, next_attempt_at),
             failed_at = CASE WHEN $4 IS NULL THEN $5 ELSE NULL END,
             body = CASE WHEN $4 IS NULL THEN NULL ELSE body END
         WHERE id = $1 AND lease_owner = $2",
    )
    .bind(id)
    .bind(owner)
    .bind(error)
    .bind(retry_at)
    .bind(now)
    .execute(conn)
    .await
    .map(drop))?;
    tx.commit().await
}

/// Mails not yet sent (nor given up), and when the oldest was queued.
pub async fn mail_backlog(db: &Db) -> Result<(i64, Option<i64>), sqlx::Error> {
    with_pool!(db, pool => sqlx::query_as(
        "SELECT COUNT(*), MIN(created_at) FROM mails WHERE sent_at IS NULL AND failed_at IS NULL",
    )
    .fetch_one(pool)
    .await)
}

/// Forget sent or failed mails and dead tokens older than `cutoff`. Accounts stay: they are
/// what a resend looks up.
/// The tables whose old rows the `archive` admin process moves out: mail sent or given up
/// on, and tokens expired, before the cut-off (the same rows [`forget_before`] deletes when
/// nothing is archived).
pub const ARCHIVE_TABLES: &[ArchiveTable] = &[
    ArchiveTable {
        table: "mails",
        past: "COALESCE(sent_at, failed_at) < $1",
    },
    ArchiveTable {
        table: "verification_tokens",
        past: "expires_at < $1",
    },
    ArchiveTable {
        table: "password_reset_tokens",
        past: "expires_at < $1",
    },
];

pub async fn forget_before(db: &Db, cutoff: i64) -> Result<(), sqlx::Error> {
    let mut tx = Tx::begin(db).await?;
    with_conn!(tx.conn(), conn => sqlx::query(
        "DELETE FROM mails WHERE COALESCE(sent_at, failed_at) < $1",
    )
    .bind(cutoff)
    .execute(conn)
    .await
    .map(drop))?;
    with_conn!(tx.conn(), conn => sqlx::query(
        "DELETE FROM verification_tokens WHERE expires_at < $1",
    )
    .bind(cutoff)
    .execute(conn)
    .await
    .map(drop))?;
    with_conn!(tx.conn(), conn => sqlx::query(
        "DELETE FROM password_reset_tokens WHERE expires_at < $1",
    )
    .bind(cutoff)
    .execute(conn)
    .await
    .map(drop))?;
    with_conn!(tx.conn(), conn => sqlx::query(
        "DELETE FROM email_change_tokens WHERE expires_at < $1",
    )
    .bind(cutoff)
    .execute(conn)
    .await
    .map(drop))?;
    tx.commit().await
}

/// The account whose verified address is `email`, if any: only a proven address may get a
/// reset link.
pub async fn verified_account(tx: &mut Tx, email: &str) -> Result<Option<Uuid>, sqlx::Error> {
    let row: Option<(Uuid,)> = with_conn!(tx.conn(), conn => sqlx::query_as(
        "SELECT user_id FROM accounts WHERE email = $1 AND verified_at IS NOT NULL
         ORDER BY verified_at DESC LIMIT 1",
    )
    .bind(email)
    .fetch_optional(conn)
    .await)?;
    Ok(row.map(|(id,)| id))
}

/// The address of `user_id`'s account, if known.
pub async fn email_of(tx: &mut Tx, user_id: Uuid) -> Result<Option<String>, sqlx::Error> {
    let row: Option<(String,)> = with_conn!(tx.conn(), conn => sqlx::query_as(
        "SELECT email FROM accounts WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_optional(conn)
    .await)?;
    Ok(row.map(|(email,)| email))
}

/// Revoke every open reset token of `user_id`: a newer link replaces them, and a changed
/// password makes them pointless.
pub async fn revoke_reset_tokens(tx: &mut Tx, user_id: Uuid, now: i64) -> Result<(), sqlx::Error> {
    with_conn!(tx.conn(), conn => sqlx::query(
        "UPDATE password_reset_tokens SET revoked_at = $2
         WHERE user_id = $1 AND used_at IS NULL AND revoked_at IS NULL",
    )
    .bind(user_id)
    .bind(now)
    .execute(conn)
    .await
    .map(drop))
}

/// Store a reset token's hash for `user_id`, after revoking the user's open ones.
pub async fn issue_reset_token(
    tx: &mut Tx,
    user_id: Uuid,
    hash: &TokenHash,
    now: i64,
    expires_at: i64,
) -> Result<(), sqlx::Error> {
    revoke_reset_tokens(tx, user_id, now).await?;
    with_conn!(tx.conn(), conn => sqlx::query(
        "INSERT INTO password_reset_tokens (token_hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(hash.0.as_slice())
    .bind(user_id)
    .bind(now)
    .bind(expires_at)
    .execute(conn)
    .await
    .map(drop))
}

/// Take the open reset token with `hash` (not used, revoked or expired) for a reset: marked
/// used at `now`, its user returned. One conditional update, committed at once, so of two
/// concurrent uses exactly one gets it. `None`, with nothing changed, otherwise.
pub async fn claim_reset_token(db: &Db, hash: &TokenHash, now: i64) -> Result<Option<Uuid>, sqlx::Error> {
    let mut tx = Tx::begin(db).await?;
    let claimed: Option<(Uuid,)> = with_conn!(tx.conn(), conn => sqlx::query_as(
        "UPDATE password_reset_tokens SET used_at = $2
         WHERE token_hash = $1 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > $2
         RETURNING user_id",
    )
    .bind(hash.0.as_slice())
    .bind(now)
    .fetch_optional(conn)
    .await)?;
    tx.commit().await?;
    Ok(claimed.map(|(id,)| id))
}

/// Give back a token taken at `claimed_at` whose reset did not happen (the new password was
/// refused, or passwords was out of reach), so that the link still works.
pub async fn release_reset_token(db: &Db, hash: &TokenHash, claimed_at: i64) -> Result<(), sqlx::Error> {
    let mut tx = Tx::begin(db).await?;
    with_conn!(tx.conn(), conn => sqlx::query(
        "UPDATE password_reset_tokens SET used_at = NULL WHERE token_hash = $1 AND used_at = $2",
    )
    .bind(hash.0.as_slice())
    .bind(claimed_at)
    .execute(conn)
    .await
    .map(drop))?;
    tx.commit().await
}

/// Revoke every open email change token of `user_id`: a newer request replaces them.
pub async fn revoke_email_change_tokens(tx: &mut Tx, user_id: Uuid, now: i64) -> Result<(), sqlx::Error> {
    with_conn!(tx.conn(), conn => sqlx::query(
        "UPDATE email_change_tokens SET revoked_at = $2
         WHERE user_id = $1 AND used_at IS NULL AND revoked_at IS NULL",
    )
    .bind(user_id)
    .bind(now)
    .execute(conn)
    .await
    .map(drop))
}

/// An email change a token proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailChangeClaim {
    /// Whose change it is.
    pub user_id: Uuid,
    /// Which request of theirs.
    pub change_id: Uuid,
    /// The address the link was mailed to.
    pub new_email: String,
}

/// Store an email change token's hash, after revoking the user's open ones.
pub async fn issue_email_change_token(
    tx: &mut Tx,
    claim: &EmailChangeClaim,
    hash: &TokenHash,
    now: i64,
    expires_at: i64,
) -> Result<(), sqlx::Error> {
    revoke_email_change_tokens(tx, claim.user_id, now).await?;
    with_conn!(tx.conn(), conn => sqlx::query(
        "INSERT INTO email_change_tokens (token_hash, user_id, change_id, new_email, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(hash.0.as_slice())
    .bind(claim.user_id)
    .bind(claim.change_id)
    .bind(&claim.new_email)
    .bind(now)
    .bind(expires_at)
    .execute(conn)
    .await
    .map(drop))
}

/// Take the open email change token with `hash` (not used, revoked or expired): marked used
/// at `now`. One conditional update, committed at once, so of two concurrent uses exactly one
/// gets it. `None`, with nothing changed, otherwise.
pub async fn claim_email_change_token(
    db: &Db,
    hash: &TokenHash,
    now: i64,
) -> Result<Option<EmailChangeClaim>, sqlx::Error> {
    let mut tx = Tx::begin(db).await?;
    let claimed: Option<(Uuid, Uuid, String)> = with_conn!(tx.conn(), conn => sqlx::query_as(
        "UPDATE email_change_tokens SET used_at = $2
         WHERE token_hash = $1 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > $2
         RETURNING user_id, change_id, new_email",
    )
    .bind(hash.0.as_slice())
    .bind(now)
    .fetch_optional(conn)
    .await)?;
    tx.commit().await?;
    Ok(claimed.map(|(user_id, change_id, new_email)| EmailChangeClaim {
        user_id,
        change_id,
        new_email,
    }))
}

/// Give back an email change token taken at `claimed_at` whose change could not be asked
/// for (users was out of reach), so that the link still works.
pub async fn release_email_change_token(
    db: &Db,
    hash: &TokenHash,
    claimed_at: i64,
) -> Result<(), sqlx::Error> {
    let mut tx = Tx::begin(db).await?;
    with_conn!(tx.conn(), conn => sqlx::query(
        "UPDATE email_change_tokens SET used_at = NULL WHERE token_hash = $1 AND used_at = $2",
    )
    .bind(hash.0.as_slice())
    .bind(claimed_at)
    .execute(conn)
    .await
    .map(drop))?;
    tx.commit().await
}

/// Mail `user_id` at `email` from now on: their address changed, and following the link
/// mailed there proved it. `false` when the account is unknown here.
pub async fn change_account_email(
    tx: &mut Tx,
    user_id: Uuid,
    email: &str,
    now: i64,
) -> Result<bool, sqlx::Error> {
    with_conn!(tx.conn(), conn => sqlx::query(
        "UPDATE accounts SET email = $2, verified_at = COALESCE(verified_at, $3) WHERE user_id = $1",
    )
    .bind(user_id)
    .bind(email)
    .bind(now)
    .execute(conn)
    .await
    .map(|done| done.rows_affected() == 1))
}

/// Erase what is known of a deleted account: its accounts (under its id, and any older one
/// for its address, such as an undone signup's), their tokens, and every mail to the address
/// queued up to `until` (a new signup for the freed address may follow at once). The ids of
/// the mails erased, so that their copies in the dev mailbox go too.
pub async fn erase_account(tx: &mut Tx, user_id: Uuid, until: i64) -> Result<Vec<Uuid>, sqlx::Error> {
    let Some(email) = email_of(tx, user_id).await? else {
        return Ok(Vec::new());
    };
    // The accounts erased: the user's own, and older ones for the same address.
    const ACCOUNTS: &str =
        "SELECT user_id FROM accounts WHERE user_id = $1 OR (email = $2 AND signed_up_at <= $3)";
    for statement in [
        format!("DELETE FROM verification_tokens WHERE user_id IN ({ACCOUNTS})"),
        format!("DELETE FROM password_reset_tokens WHERE user_id IN ({ACCOUNTS})"),
        format!("DELETE FROM email_change_tokens WHERE user_id IN ({ACCOUNTS})"),
        format!("DELETE FROM accounts WHERE user_id IN ({ACCOUNTS})"),
    ] {
        with_conn!(tx.conn(), conn => sqlx::query(sqlx::AssertSqlSafe(statement.clone()))
            .bind(user_id)
            .bind(&email)
            .bind(until)
            .execute(conn)
            .await
            .map(drop))?;
    }
    let mails: Vec<(Uuid,)> = with_conn!(tx.conn(), conn => sqlx::query_as(
        "DELETE FROM mails WHERE recipient = $1 AND created_at <= $2 RETURNING id",
    )
    .bind(&email)
    .bind(until)
    .fetch_all(conn)
    .await)?;
    Ok(mails.into_iter().map(|(id,)| id).collect())
}
