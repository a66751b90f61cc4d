//! The password rules (NIST SP 800-63B, OWASP ASVS 5.0 §6.2): 8 to 256 characters, no
//! composition rules, and hard to guess as judged by zxcvbn, which knows common passwords,
//! dictionary words, keyboard patterns, dates and the user's own details. zxcvbn is the one
//! judge: it refuses all but one of the 600 commonest passwords the service used to list, and
//! eight random characters too (its bar of ten billion guesses takes about ten). A password
//! too long is refused, never truncated.

/// The fewest characters a password may have.
pub const MIN_CHARS: usize = 8;
/// The most characters a password may have: longer ones are refused rather than cut. At most
/// 1 KiB of UTF-8, so a password costs argon2 next to nothing more than a short one.
pub const MAX_CHARS: usize = 256;
/// The least zxcvbn score accepted: about 10^10 guesses, out of reach of online guessing and
/// costly offline against argon2id.
const MIN_SCORE: zxcvbn::Score = zxcvbn::Score::Three;
/// zxcvbn reads at most this many characters of a password (it cuts longer ones itself) and
/// of each user input, so one estimate stays in the milliseconds whatever the input.
const JUDGED_CHARS: usize = 100;

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
    /// Too easy to guess; why, and what would help, as zxcvbn says.
    #[error("is too easy to guess: {0}")]
    Guessable(String),
}

impl Password {
    /// Check `text` against the rules; `user_inputs` (the email, the display name) are the
    /// account's own details, which a password must not lean on.
    pub fn parse(text: String, user_inputs: &[&str]) -> Result<Self, PasswordError> {
        // Characters, not bytes: "пароль12" is eight characters.
        let chars = text.chars().count();
        if chars < MIN_CHARS {
            return Err(PasswordError::TooShort);
        }
        if chars > MAX_CHARS {
            return Err(PasswordError::TooLong);
        }
        let inputs: Vec<String> = user_inputs.iter().flat_map(|input| details_of(input)).collect();
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let estimate = zxcvbn::zxcvbn(&text, &inputs);
        if estimate.score() >= MIN_SCORE {
            return Ok(Self(text));
        }
        Err(PasswordError::Guessable(why_guessable(
            &text,
            &inputs,
            estimate.feedback(),
        )))
    }

    /// The password itself, for hashing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// The words of a user input zxcvbn should know: the whole (an email, a name) and, for an
/// email, its local part; cut to what zxcvbn reads.
fn details_of(input: &str) -> Vec<String> {
    let input: String = input.trim().chars().take(JUDGED_CHARS).collect();
    if input.is_empty() {
        return Vec::new();
    }
    let mut details = vec![input.clone()];
    if let Some((local, _)) = input.split_once('@') {
        details.push(local.to_owned());
    }
    details
}

/// zxcvbn's warning and suggestions, or — as it gives no warning for them — that the password
/// leans on the user's own details.
fn why_guessable(text: &str, inputs: &[&str], feedback: Option<&zxcvbn::feedback::Feedback>) -> String {
    let lowered = text.to_lowercase();
    let own_details = inputs
        .iter()
        .any(|input| input.chars().count() >= 3 && lowered.contains(&input.to_lowercase()));
    let warning = feedback.and_then(zxcvbn::feedback::Feedback::warning);
    let mut parts: Vec<String> = match (warning, own_details) {
        (Some(warning), _) => vec![warning.to_string()],
        (None, true) => vec!["It contains your email address or name.".to_owned()],
        (None, false) => Vec::new(),
    };
    parts.extend(
        feedback
            .map(zxcvbn::feedback::Feedback::suggestions)
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string),
    );
    if parts.is_empty() {
        parts.push("Add another word or two. Uncommon words are better.".to_owned());
    }
    parts.join(" ")
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(hidden)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: &[&str] = &["ada@example.com", "Ada Lovelace"];

    fn refusal(text: &str) -> Option<PasswordError> {
        Password::parse(text.to_owned(), USER).err()
    }

    #[test]
    fn fewer_than_eight_characters_are_too_short_counted_as_characters_not_bytes() {
        assert_eq!(refusal("zq7#kd9"), Some(PasswordError::TooShort));
        assert_eq!(
            refusal("жёлтый7"),
            Some(PasswordError::TooShort),
            "14 bytes, 7 characters"
        );
        assert_eq!(refusal("жёлтый-дом-42"), None);
    }

    #[test]
    fn the_passwords_the_tests_use_are_accepted() {
        for password in ["violet-harbour-42", "correct horse battery staple"] {
            assert_eq!(refusal(password), None, "{password}");
        }
    }

    #[test]
    fn up_to_256_characters_are_accepted_whole_and_257_refused() {
        // Letters that repeat no pattern zxcvbn knows.
        let long: String = (0u32..255)
            .map(|i| char::from_u32(0x4e00 + (i * 7919) % 20_000).expect("a CJK ideograph"))
            .chain(['é'])
            .collect();
        assert_eq!(long.chars().count(), 256);
        let password = Password::parse(long.clone(), USER).expect("256 characters are accepted");
        assert_eq!(password.expose(), long, "never truncated");
        assert_eq!(refusal(&(long + "z")), Some(PasswordError::TooLong));
    }

    #[test]
    fn common_passwords_are_refused_saying_why() {
        for common in ["password123", "PassWord1", "QWERTYUIOP", "iloveyou", "12345678"] {
            let Some(PasswordError::Guessable(why)) = refusal(common) else {
                panic!("{common} is refused as guessable");
            };
            assert!(!why.is_empty(), "{common}");
        }
        let Some(PasswordError::Guessable(why)) = refusal("password123") else {
            panic!("refused");
        };
        assert!(why.contains("common password"), "{why}");
    }

    #[test]
    fn the_users_own_email_and_name_are_refused_saying_so() {
        for own in ["Ada@Example.com", "adalovelace", "ada@example.com1"] {
            let Some(PasswordError::Guessable(why)) = refusal(own) else {
                panic!("{own} is refused as guessable");
            };
            assert!(
                why.contains("email address or name") || why.contains("name"),
                "{own}: {why}"
            );
        }
    }

    #[test]
    fn debug_output_hides_the_password() {
        let password = Password::parse("zq7#kd9w-secret".to_owned(), USER).expect("valid");
        assert!(!format!("{password:?}").contains("secret"));
    }
}
