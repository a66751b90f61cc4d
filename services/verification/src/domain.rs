//! What a verification token is, and what the mails this service sends say. Nothing here
//! touches the database or the network.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

/// Random bytes in a token: 256 bits, far beyond guessing.
const TOKEN_BYTES: usize = 32;
/// The length of a token's text: two hex digits per byte.
const TOKEN_LENGTH: usize = TOKEN_BYTES * 2;

/// A single-use verification token as mailed: 32 bytes from the operating system's CSPRNG,
/// written as 64 lower-case hex digits (safe in a URL without escaping). Only its
/// [`TokenHash`] is ever stored.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// A new random token.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; TOKEN_BYTES];
        getrandom::fill(&mut bytes)?;
        Ok(Self(bytes.iter().map(|byte| format!("{byte:02x}")).collect()))
    }

    /// Accept only text shaped like a token, so that garbage never reaches the database.
    pub fn parse(text: &str) -> Option<Self> {
        let shaped = text.len() == TOKEN_LENGTH
            && text
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte));
        shaped.then(|| Self(text.to_owned()))
    }

    /// The token's text, for the link.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What is stored and looked up: SHA-256 of the text. A fast hash is enough: the token
    /// has 256 random bits, so there is nothing to brute-force.
    pub fn hash(&self) -> TokenHash {
        TokenHash(Sha256::digest(self.0.as_bytes()).to_vec())
    }
}

impl std::fmt::Debug for Token {
    // A token is a secret: never in a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

/// The stored form of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenHash(pub Vec<u8>);

/// Which kind of mail a row is, for logs, metrics and throttling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailKind {
    /// Carries a verification link.
    Verification,
    /// Tells an account's owner that someone tried to sign up with their address.
    SignupConflict,
    /// Carries a password reset link.
    PasswordReset,
    /// Tells an account's owner that their password was changed.
    PasswordChanged,
    /// Carries an email change link, to the new address.
    EmailChange,
    /// Tells an account's owner, at the old address, that a change of address was asked for.
    EmailChangeRequested,
    /// Tells an account's owner that someone asked to move another account to their address.
    EmailChangeConflict,
}

impl MailKind {
    /// Its stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Verification => "verification",
            Self::SignupConflict => "signup_conflict",
            Self::PasswordReset => "password_reset",
            Self::PasswordChanged => "password_changed",
            Self::EmailChange => "email_change",
            Self::EmailChangeRequested => "email_change_requested",
            Self::EmailChangeConflict => "email_change_conflict",
        }
    }
}

/// A mail to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    /// Which kind.
    pub kind: MailKind,
    /// The normalised address it goes to.
    pub to: String,
    /// Its subject line.
    pub subject: String,
    /// Its plain-text body.
    pub body: String,
}

/// The mail that carries a verification link: `{public_url}/verify?token=<token>`.
pub fn verification_mail(to: &str, public_url: &str, token: &Token, ttl: Duration) -> Mail {
    let link = format!("{public_url}/verify?token={}", token.as_str());
    let valid_for = humanize(ttl);
    Mail {
        kind: MailKind::Verification,
        to: to.to_owned(),
        subject: "Confirm your email address for dozen".to_owned(),
        body: format!(
            "Hello,\n\n\
             please confirm that this is your email address by opening this link:\n\n\
             {link}\n\n\
             The link works once and expires in {valid_for}. If you did not sign up for dozen, \
             ignore this mail: nothing happens without the link.\n"
        ),
    }
}

/// The notice sent instead of a link when an address that already has an account signs up
/// again. It carries no link: the owner need not do anything.
pub fn signup_conflict_mail(to: &str, attempted_at: DateTime<Utc>) -> Mail {
    let when = attempted_at.format("%Y-%m-%d %H:%M UTC");
    Mail {
        kind: MailKind::SignupConflict,
        to: to.to_owned(),
        subject: "Someone tried to sign up with your address".to_owned(),
        body: format!(
            "Hello,\n\n\
             someone tried to create a dozen account with this email address on {when}. \
             You already have an account, so nothing was changed.\n\n\
             If this was you, sign in with your existing password. If it was not, you can \
             ignore this mail: your account is safe.\n"
        ),
    }
}

/// The mail that carries a password reset link: `{public_url}/reset?token=<token>`.
pub fn reset_mail(to: &str, public_url: &str, token: &Token, ttl: Duration) -> Mail {
    let link = format!("{public_url}/reset?token={}", token.as_str());
    let valid_for = humanize(ttl);
    Mail {
        kind: MailKind::PasswordReset,
        to: to.to_owned(),
        subject: "Reset your dozen password".to_owned(),
        body: format!(
            "Hello,\n\n\
             someone asked to reset the password of the dozen account of this address. To choose \
             a new password, open this link:\n\n\
             {link}\n\n\
             The link works once and expires in {valid_for}; a newer request replaces it. If you \
             did not ask, ignore this mail: your password stays as it is.\n"
        ),
    }
}

/// The notice that an account's password was changed (`method`: `reset` or `change`). It
/// carries no link: an owner who did not do it resets the password from the login page.
pub fn password_changed_mail(to: &str, occurred_at: DateTime<Utc>, method: &str) -> Mail {
    let when = occurred_at.format("%Y-%m-%d %H:%M UTC");
    let how = if method == "reset" {
        "through a password reset link"
    } else {
        "from your account's settings"
    };
    Mail {
        kind: MailKind::PasswordChanged,
        to: to.to_owned(),
        subject: "Your dozen password was changed".to_owned(),
        body: format!(
            "Hello,\n\n\
             your password was changed on {when}, {how}, and you were logged out of your \
             other sessions.\n\n\
             If this was you, there is nothing to do. If it was not, choose a new password at \
             once with \"Forgot your password?\" on the login page.\n"
        ),
    }
}

/// The mail that carries an email change link to the new address:
/// `{public_url}/confirm-email?token=<token>`.
pub fn email_change_mail(to: &str, public_url: &str, token: &Token, ttl: Duration) -> Mail {
    let link = format!("{public_url}/confirm-email?token={}", token.as_str());
    let valid_for = humanize(ttl);
    Mail {
        kind: MailKind::EmailChange,
        to: to.to_owned(),
        subject: "Confirm your new email address for dozen".to_owned(),
        body: format!(
            "Hello,\n\n\
             someone asked to use this address for their dozen account. If it was you, confirm \
             it by opening this link:\n\n\
             {link}\n\n\
             The link works once and expires in {valid_for}; a newer request replaces it. If it \
             was not you, ignore this mail: nothing changes without the link.\n"
        ),
    }
}

/// The notice to the address in use that a change of address was asked for. It does not
/// name the new address: whoever reads the old mailbox need not learn it.
pub fn email_change_requested_mail(to: &str, requested_at: DateTime<Utc>) -> Mail {
    let when = requested_at.format("%Y-%m-%d %H:%M UTC");
    Mail {
        kind: MailKind::EmailChangeRequested,
        to: to.to_owned(),
        subject: "A change of your dozen email address was asked for".to_owned(),
        body: format!(
            "Hello,\n\n\
             on {when} someone who knew your password asked to move your dozen account to \
             another email address. The change happens only when the link mailed to that \
             address is followed.\n\n\
             If this was you, there is nothing to do here. If it was not, change your password at \
             once (\"Forgot your password?\" on the login page).\n"
        ),
    }
}

/// The notice to an account's owner that someone asked to move another account to their
/// address. It carries no link: nothing changes.
pub fn email_change_conflict_mail(to: &str, requested_at: DateTime<Utc>) -> Mail {
    let when = requested_at.format("%Y-%m-%d %H:%M UTC");
    Mail {
        kind: MailKind::EmailChangeConflict,
        to: to.to_owned(),
        subject: "Someone tried to use your address for another account".to_owned(),
        body: format!(
            "Hello,\n\n\
             on {when} someone asked to move another dozen account to this email address. You \
             already have an account with it, so nothing was changed.\n\n\
             If this was you, sign in with your existing account. If it was not, you can ignore \
             this mail: your account is safe.\n"
        ),
    }
}

/// `24 hours`, `90 minutes`, `30 seconds`: the largest whole unit.
fn humanize(duration: Duration) -> String {
    let seconds = duration.as_secs();
    let (count, unit) = if seconds >= 3600 && seconds.is_multiple_of(3600) {
        (seconds / 3600, "hour")
    } else if seconds >= 60 && seconds.is_multiple_of(60) {
        (seconds / 60, "minute")
    } else {
        (seconds, "second")
    };
    format!("{count} {unit}{}", if count == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_token_parses_and_two_differ() {
        let first = Token::generate().expect("random bytes");
        let second = Token::generate().expect("random bytes");
        assert_ne!(first, second);
        assert_eq!(Token::parse(first.as_str()), Some(first.clone()));
        assert_eq!(first.as_str().len(), 64);
        assert_eq!(first.hash().0.len(), 32);
    }

    #[test]
    fn text_not_shaped_like_a_token_is_refused() {
        for bad in [
            "",
            "abc",
            &"A".repeat(64),
            &"g".repeat(64),
            &"a".repeat(65),
            &"é".repeat(32),
        ] {
            assert!(Token::parse(bad).is_none(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn the_verification_mail_carries_the_link_and_the_notice_none() {
        let token = Token::generate().expect("random bytes");
        let mail = verification_mail(
            "ann@example.com",
            "http://127.0.0.1:8080",
            &token,
            Duration::from_secs(86_400),
        );
        assert!(
            mail.body
                .contains(&format!("http://127.0.0.1:8080/verify?token={}", token.as_str()))
        );
        assert!(mail.body.contains("24 hours"));
        let notice = signup_conflict_mail("ann@example.com", Utc::now());
        assert!(!notice.body.contains("token"));
    }

    #[test]
    fn the_reset_mail_carries_its_link_and_the_notice_none() {
        let token = Token::generate().expect("random bytes");
        let mail = reset_mail("ann@example.com", "http://x", &token, Duration::from_secs(3600));
        assert!(
            mail.body
                .contains(&format!("http://x/reset?token={}", token.as_str()))
        );
        assert!(mail.body.contains("1 hour"));
        let notice = password_changed_mail("ann@example.com", Utc::now(), "change");
        assert!(notice.body.contains("password was changed"));
        assert!(!notice.body.contains("token"));
    }

    #[test]
    fn a_token_never_shows_in_debug_output() {
        let token = Token::generate().expect("random bytes");
        assert!(!format!("{token:?}").contains(token.as_str()));
    }
}
