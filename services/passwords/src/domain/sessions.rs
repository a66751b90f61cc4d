//! Refresh sessions: what a refresh token is and how long a session may last. A login starts a
//! session and hands out its first refresh token; each refresh rotates it. Nothing here touches
//! the database or HTTP.

use std::time::Duration;

use sha2::{Digest, Sha256};

/// Random bytes in a refresh token: 256 bits, far beyond guessing.
const TOKEN_BYTES: usize = 32;
/// The length of a token's text: two hex digits per byte.
const TOKEN_LENGTH: usize = TOKEN_BYTES * 2;
/// The longest user agent kept with a session; the rest is cut.
const USER_AGENT_CHARS: usize = 256;
/// The most sessions one account keeps: a login beyond it ends the least recently used, so that
/// logging in over and over cannot fill the table.
pub const MAX_SESSIONS_PER_USER: i64 = 50;

/// An opaque refresh token: 32 bytes from the operating system's CSPRNG as 64 lower-case hex
/// digits. Only its [`RefreshToken::hash`] is stored.
#[derive(Clone, PartialEq, Eq)]
pub struct RefreshToken(String);

impl RefreshToken {
    /// A new random token.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; TOKEN_BYTES];
        getrandom::fill(&mut bytes)?;
        Ok(Self(hex(&bytes)))
    }

    /// Accept only text shaped like a token, so that garbage never reaches the database.
    pub fn parse(text: &str) -> Option<Self> {
        let shaped = text.len() == TOKEN_LENGTH
            && text
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte));
        shaped.then(|| Self(text.to_owned()))
    }

    /// The token's text, for the client.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What is stored and looked up: SHA-256 of the text, in hex. A fast hash is enough: the
    /// token has 256 random bits, so there is nothing to brute-force.
    pub fn hash(&self) -> String {
        hex(&Sha256::digest(self.0.as_bytes()))
    }
}

impl std::fmt::Debug for RefreshToken {
    // A token is a secret: never in a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefreshToken(…)")
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// How long sessions last.
#[derive(Debug, Clone, Copy)]
pub struct SessionPolicy {
    /// A session's absolute lifetime from its login, however often it is refreshed.
    pub ttl: Duration,
}

/// A user agent as kept with a session: control characters dropped, cut to a bounded length.
pub fn user_agent(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(USER_AGENT_CHARS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_token_parses_and_anything_else_does_not() {
        let token = RefreshToken::generate().expect("random");
        assert_eq!(RefreshToken::parse(token.as_str()), Some(token.clone()));
        assert_ne!(token.hash(), token.as_str());
        for bad in [
            "",
            "abc",
            &token.as_str().to_uppercase(),
            &format!("{}0", token.as_str()),
        ] {
            assert_eq!(RefreshToken::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_user_agent_is_cut_and_cleaned() {
        assert_eq!(user_agent("curl/8\n\u{7}x"), "curl/8x");
        assert_eq!(user_agent(&"a".repeat(1000)).len(), USER_AGENT_CHARS);
    }
}
