//! The password rules (NIST SP 800-63B): 8 to 64 characters, no composition rules, nothing from
//! the list of common passwords. A password too long is refused, never truncated.

use std::collections::HashSet;
use std::sync::LazyLock;

/// The fewest characters a password may have.
pub const MIN_CHARS: usize = 8;
/// The most characters a password may have: longer ones are refused rather than cut.
pub const MAX_CHARS: usize = 64;

/// Passwords too common to accept, lowercased (see `data/README.md` for the source).
static COMMON: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    include_str!("../../data/common-passwords.txt")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect()
});

/// A password that follows the rules. Its `Debug` never shows it.
#[derive(Clone)]
pub struct Password(String);

/// Why a password is refused; the text is shown to the person choosing it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    /// Fewer than [`MIN_CHARS`] characters.
    #[error("must be at least {MIN_CHARS} characters long")]
    TooShort,
    /// More than [`MAX_CHARS`] characters.
    #[error("must be at most {MAX_CHARS} characters long")]
    TooLong,
    /// On the list of common passwords.
    #[error("is too common: choose one that is harder to guess")]
    Common,
    /// The same as the account's email address.
    #[error("must not be the email address")]
    SameAsEmail,
}

impl Password {
    /// Check `text` against the rules; `email` (normalised) is the account it is for.
    pub fn parse(text: String, email: &str) -> Result<Self, PasswordError> {
        // Characters, not bytes: "пароль12" is eight characters.
        let chars = text.chars().count();
        if chars < MIN_CHARS {
            return Err(PasswordError::TooShort);
        }
        if chars > MAX_CHARS {
            return Err(PasswordError::TooLong);
        }
        let lowered = text.to_lowercase();
        if COMMON.contains(lowered.as_str()) {
            return Err(PasswordError::Common);
        }
        if lowered.trim() == email {
            return Err(PasswordError::SameAsEmail);
        }
        Ok(Self(text))
    }

    /// The password itself, for hashing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(hidden)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMAIL: &str = "ada@example.com";

    #[test]
    fn eight_characters_are_enough_and_counted_as_characters_not_bytes() {
        assert!(Password::parse("zq7#kd9w".to_owned(), EMAIL).is_ok());
        assert!(Password::parse("жёлтый7й".to_owned(), EMAIL).is_ok());
        assert_eq!(
            Password::parse("zq7#kd9".to_owned(), EMAIL).err(),
            Some(PasswordError::TooShort)
        );
    }

    #[test]
    fn sixty_four_characters_are_accepted_and_sixty_five_refused() {
        assert!(Password::parse("x".repeat(63) + "é", EMAIL).is_ok());
        assert_eq!(
            Password::parse("x".repeat(65), EMAIL).err(),
            Some(PasswordError::TooLong)
        );
    }

    #[test]
    fn common_passwords_are_refused_whatever_their_case() {
        for common in ["password1", "PassWord1", "QWERTYUIOP", "iloveyou"] {
            assert_eq!(
                Password::parse(common.to_owned(), EMAIL).err(),
                Some(PasswordError::Common),
                "{common}"
            );
        }
        assert!(COMMON.len() > 500, "the list is shipped and loaded");
    }

    #[test]
    fn the_email_address_is_not_a_password() {
        assert_eq!(
            Password::parse("Ada@Example.com".to_owned(), EMAIL).err(),
            Some(PasswordError::SameAsEmail)
        );
    }

    #[test]
    fn debug_output_hides_the_password() {
        let password = Password::parse("zq7#kd9w-secret".to_owned(), EMAIL).expect("valid");
        assert!(!format!("{password:?}").contains("secret"));
    }
}
