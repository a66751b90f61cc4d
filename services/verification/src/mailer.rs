//! Where mail goes, chosen by `MAIL_URL`: a folder (the dev mailbox, one JSON file per
//! message, listed by `GET /mailbox`) or an SMTP server. This module delivers one message; it
//! does not know which mails are due (that is [`crate::sender`]).
//!
//! Idempotence: every message is written or sent under the id of its row in `mails`.
//! - In a folder the file is `<id>.json`, written to a temporary file and renamed over, so a
//!   message delivered again after a crash replaces the first copy: exactly one file per row.
//! - SMTP has no idempotency key. A crash after the server accepted a message and before the
//!   row was marked sent delivers it again once the lease runs out: at least once, not exactly
//!   once. Both copies carry the same `Message-ID` (`<id@from-domain>`), which receivers and
//!   mail clients use to drop duplicates.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A validated `MAIL_URL`.
#[derive(Clone, PartialEq, Eq)]
pub enum MailUrl {
    /// `file://<folder>`: one file per message in a folder (relative or absolute).
    Folder(PathBuf),
    /// `smtp://[user:pass@]host[:port][?tls=required|opportunistic]` (plain or STARTTLS) or
    /// `smtps://[user:pass@]host[:port]` (TLS from the start), as lettre reads them.
    Smtp(String),
}

impl MailUrl {
    /// Accept `file://`, `smtp://` and `smtps://` URLs; anything else is an error naming them.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("file://") {
            if path.is_empty() {
                return Err("expected a folder after file://".to_owned());
            }
            return Ok(Self::Folder(PathBuf::from(path)));
        }
        let rest = text
            .strip_prefix("smtp://")
            .or_else(|| text.strip_prefix("smtps://"))
            .ok_or("expected file://<folder>, smtp://host:port or smtps://user:pass@host:port")?;
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
        let (host, port) = match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        };
        if host.is_empty() {
            return Err("expected a host after smtp:// or smtps://".to_owned());
        }
        if let Some(port) = port
            && port.parse::<u16>().is_err()
        {
            return Err("the port must be a number from 0 to 65535".to_owned());
        }
        Ok(Self::Smtp(text.to_owned()))
    }

    /// The kind, for logs (the URL itself may hold a password).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Folder(_) => "folder",
            Self::Smtp(_) => "smtp",
        }
    }
}

impl std::fmt::Debug for MailUrl {
    // An SMTP URL may carry a password: show only the kind.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MailUrl({})", self.kind())
    }
}

/// Parse `MAIL_FROM`, e.g. `dozen <no-reply@dozen.local>`.
pub fn parse_from(text: &str) -> Result<Mailbox, String> {
    text.parse::<Mailbox>()
        .map_err(|e| format!("not a mail address such as 'dozen <no-reply@example.com>': {e}"))
}

/// One message on its way: a row of `mails`, claimed for sending.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The row's id: file name, Message-ID.
    pub id: Uuid,
    /// The address.
    pub to: String,
    /// The subject.
    pub subject: String,
    /// The plain-text body.
    pub body: String,
}

/// A message as the dev mailbox stores and lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StoredMessage {
    /// The mail's id.
    pub id: Uuid,
    /// Its recipient.
    pub to: String,
    /// Its sender.
    pub from: String,
    /// Its subject.
    pub subject: String,
    /// Its plain-text body.
    pub body: String,
    /// When it was written to the mailbox.
    pub sent_at: DateTime<Utc>,
    /// Its Message-ID header.
    pub message_id: String,
}

/// Why a message was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// Worth trying again later (the server or the disk is unavailable).
    #[error("{0}")]
    Transient(String),
    /// Will never succeed as it is (the server refused the address or the message).
    #[error("{0}")]
    Permanent(String),
}

/// The transport `MAIL_URL` names.
#[derive(Clone)]
pub enum Mailer {
    /// The embedded mailbox folder.
    Folder(PathBuf),
    /// An SMTP server.
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Folder(folder) => write!(f, "Mailer::Folder({})", folder.display()),
            Self::Smtp(_) => f.write_str("Mailer::Smtp"),
        }
    }
}

impl Mailer {
    /// The transport for `url`; each SMTP send may take at most `timeout`. The folder is
    /// created when missing.
    pub fn new(url: &MailUrl, timeout: Duration) -> anyhow::Result<Self> {
        match url {
            MailUrl::Folder(folder) => {
                std::fs::create_dir_all(folder).map_err(|e| {
                    anyhow::anyhow!(
                        "MAIL_URL: cannot create the mailbox folder {}: {e}",
                        folder.display()
                    )
                })?;
                Ok(Self::Folder(folder.clone()))
            }
            MailUrl::Smtp(text) => {
                let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(text)
                    .map_err(|e| anyhow::anyhow!("MAIL_URL: not a usable SMTP URL: {e}"))?
                    .timeout(Some(timeout))
                    .build();
                Ok(Self::Smtp(transport))
            }
        }
    }

    /// The mailbox folder, when mail goes to one.
    pub fn folder(&self) -> Option<&Path> {
        match self {
            Self::Folder(folder) => Some(folder),
            Self::Smtp(_) => None,
        }
    }

    /// Deliver `mail` from `from`, under its id (see the module doc for what a repeat does).
    pub async fn deliver(&self, from: &Mailbox, mail: &Outgoing) -> Result<(), DeliveryError> {
        let message_id = format!("<{}@{}>", mail.id, from.email.domain());
        match self {
            Self::Folder(folder) => {
                let stored = StoredMessage {
                    id: mail.id,
                    to: mail.to.clone(),
                    from: from.to_string(),
                    subject: mail.subject.clone(),
                    body: mail.body.clone(),
                    sent_at: Utc::now(),
                    message_id,
                };
                write_atomically(folder, &stored)
                    .await
                    .map_err(|e| DeliveryError::Transient(format!("cannot write to the mailbox: {e}")))
            }
            Self::Smtp(transport) => {
                let to: Mailbox = mail
                    .to
                    .parse()
                    .map_err(|e| DeliveryError::Permanent(format!("the recipient is not an address: {e}")))?;
                let message = Message::builder()
                    .from(from.clone())
                    .to(to)
                    .subject(&mail.subject)
                    .message_id(Some(message_id))
                    .header(ContentType::TEXT_PLAIN)
                    .body(mail.body.clone())
                    .map_err(|e| DeliveryError::Permanent(format!("cannot build the message: {e}")))?;
                match transport.send(message).await {
                    Ok(_) => Ok(()),
                    Err(error) if error.is_permanent() => Err(DeliveryError::Permanent(error.to_string())),
                    Err(error) => Err(DeliveryError::Transient(error.to_string())),
                }
            }
        }
    }

    /// Every message in the mailbox folder, newest first; `None` when mail goes over SMTP.
    pub async fn list(&self) -> Option<std::io::Result<Vec<StoredMessage>>> {
        let folder = self.folder()?.to_owned();
        Some(list_folder(&folder).await)
    }
}

/// Remove the messages `ids` from the mailbox `folder`; one already gone is no error.
pub async fn remove_from_folder(folder: &Path, ids: &[Uuid]) -> std::io::Result<()> {
    for id in ids {
        match tokio::fs::remove_file(folder.join(format!("{id}.json"))).await {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
    }
    Ok(())
}

/// Write `<id>.json` through a temporary file, flushed, then renamed over: readers never see
/// half a message, and a repeat replaces the first copy. One trip to the blocking pool for
/// the whole write, not one per file operation.
async fn write_atomically(folder: &Path, message: &StoredMessage) -> std::io::Result<()> {
    use std::io::Write as _;
    let text = serde_json::to_vec_pretty(message).map_err(std::io::Error::other)?;
    let temporary = folder.join(format!(".{}.json.tmp", message.id));
    let target = folder.join(format!("{}.json", message.id));
    tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(&text)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temporary, target)
    })
    .await
    .map_err(std::io::Error::other)?
}

async fn list_folder(folder: &Path) -> std::io::Result<Vec<StoredMessage>> {
    let mut messages = Vec::new();
    let mut entries = match tokio::fs::read_dir(folder).await {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(messages),
        Err(error) => return Err(error),
    };
    while let Some(entry) = entries.next_entry().await? {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        let text = match tokio::fs::read(entry.path()).await {
            Ok(text) => text,
            // Removed between listing and reading (someone cleaned the folder): skip it.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error),
        };
        match serde_json::from_slice::<StoredMessage>(&text) {
            Ok(message) => messages.push(message),
            Err(error) => tracing::warn!(file = %name, %error, "skipping an unreadable mailbox file"),
        }
    }
    messages.sort_by(|a, b| b.sent_at.cmp(&a.sent_at).then(b.id.cmp(&a.id)));
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_and_smtp_urls_are_accepted_and_others_refused() {
        assert_eq!(
            MailUrl::parse("file://data/mailbox"),
            Ok(MailUrl::Folder(PathBuf::from("data/mailbox")))
        );
        assert_eq!(
            MailUrl::parse("file:///var/mail/dozen"),
            Ok(MailUrl::Folder(PathBuf::from("/var/mail/dozen")))
        );
        assert!(matches!(
            MailUrl::parse("smtp://127.0.0.1:2525"),
            Ok(MailUrl::Smtp(_))
        ));
        assert!(matches!(
            MailUrl::parse("smtps://user:secret@mail.example.com:465"),
            Ok(MailUrl::Smtp(_))
        ));
        for bad in ["ftp://x", "file://", "smtp://", "smtp://host:port", "mailbox"] {
            assert!(MailUrl::parse(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn a_password_in_the_url_never_shows_in_debug_output() {
        let url = MailUrl::parse("smtps://user:secret@mail.example.com").expect("valid");
        assert!(!format!("{url:?}").contains("secret"));
    }

    #[tokio::test]
    async fn a_message_delivered_twice_leaves_one_file() {
        let folder = tempfile::tempdir().expect("a folder");
        let mailer = Mailer::new(&MailUrl::Folder(folder.path().to_owned()), Duration::from_secs(5))
            .expect("a folder mailer");
        let from = parse_from("dozen <no-reply@dozen.local>").expect("valid");
        let mail = Outgoing {
            id: Uuid::now_v7(),
            to: "ann@example.com".into(),
            subject: "Hi".into(),
            body: "Hello".into(),
        };
        mailer.deliver(&from, &mail).await.expect("delivered");
        mailer.deliver(&from, &mail).await.expect("delivered again");
        let listed = mailer.list().await.expect("a folder").expect("listed");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].message_id, format!("<{}@dozen.local>", mail.id));
    }
}
