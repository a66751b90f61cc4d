//! What a signup is: the request, its idempotency key, and the states it moves through.

use std::collections::BTreeMap;

use dozen_kit::Problem;
use dozen_kit::email::Email;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The longest Idempotency-Key accepted.
const MAX_KEY_LENGTH: usize = 255;

/// The body of `POST /signups`. Only the email is checked here; the users service checks the
/// profile fields and the passwords service the password, each the one place its rules live.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignupRequest {
    /// The email address to sign up with.
    pub email: String,
    /// The password (travels only on this synchronous path; never stored or logged here).
    pub password: String,
    /// How others will see the user.
    pub display_name: String,
    /// What the user is into.
    #[serde(default)]
    pub interests: Vec<String>,
}

impl std::fmt::Debug for SignupRequest {
    // Never print the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignupRequest")
            .field("display_name", &self.display_name)
            .finish_non_exhaustive()
    }
}

/// A signup request whose email is valid.
#[derive(Debug)]
pub struct Signup {
    /// The normalised address.
    pub email: Email,
    /// The request as sent (the password included, for the passwords service).
    pub request: SignupRequest,
}

impl SignupRequest {
    /// Check the email; the problem names it.
    pub fn validate(self) -> Result<Signup, Problem> {
        match Email::parse(&self.email) {
            Ok(email) => Ok(Signup { email, request: self }),
            Err(error) => Err(Problem::validation(BTreeMap::from([(
                "email".to_owned(),
                error.to_owned(),
            )]))),
        }
    }
}

impl Signup {
    /// A fingerprint of what was asked, to tell a retry from a different request under the
    /// same key. The password is left out: a hash of it here would be a weak password hash.
    pub fn fingerprint(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(self.email.as_str());
        hasher.update([0]);
        hasher.update(self.request.display_name.trim());
        // As sent: a retry sends the same request; users normalises them.
        for interest in &self.request.interests {
            hasher.update([0]);
            hasher.update(interest);
        }
        format!("{:x}", hasher.finalize())
    }
}

/// The `Idempotency-Key` header: 1 to 255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Validate the header's value.
    pub fn parse(text: &str) -> Result<Self, Problem> {
        let valid =
            !text.is_empty() && text.len() <= MAX_KEY_LENGTH && text.bytes().all(|b| b.is_ascii_graphic());
        if valid {
            Ok(Self(text.to_owned()))
        } else {
            Err(Problem::typed(
                axum::http::StatusCode::BAD_REQUEST,
                "idempotency-key",
                "Invalid Idempotency-Key",
                "the Idempotency-Key header must be 1 to 255 visible ASCII characters",
            ))
        }
    }

    /// A key for a request sent without one: every such request is its own signup.
    pub fn random() -> Self {
        Self(format!("auto-{}", uuid::Uuid::new_v4()))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How far a signup got. The chain runs started → profile_created → credential_created →
/// completed; a taken email ends in conflict; `repair` undoes what cannot finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignupState {
    /// Recorded; nothing created yet.
    Started,
    /// The users service holds the profile.
    ProfileCreated,
    /// The passwords service holds the credential too.
    CredentialCreated,
    /// Done, and `user.signed_up` published.
    Completed,
    /// The email was taken; `user.signup_conflict` published.
    Conflict,
    /// Undone by `repair`; a retry starts over.
    Undone,
}

impl SignupState {
    /// Its name in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::ProfileCreated => "profile_created",
            Self::CredentialCreated => "credential_created",
            Self::Completed => "completed",
            Self::Conflict => "conflict",
            Self::Undone => "undone",
        }
    }

    /// From its name in the database.
    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Started,
            Self::ProfileCreated,
            Self::CredentialCreated,
            Self::Completed,
            Self::Conflict,
            Self::Undone,
        ]
        .into_iter()
        .find(|state| state.as_str() == text)
    }

    /// Whether the signup has reached an end (the answer is final).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Conflict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_must_be_short_visible_ascii() {
        assert!(IdempotencyKey::parse("abc-123").is_ok());
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse("a b").is_err());
        assert!(IdempotencyKey::parse("ключ").is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_err());
    }

    #[test]
    fn the_fingerprint_ignores_the_password_and_email_case() {
        let signup = |email: &str, password: &str| {
            SignupRequest {
                email: email.into(),
                password: password.into(),
                display_name: "Ann".into(),
                interests: vec!["chess".into()],
            }
            .validate()
            .expect("valid")
        };
        assert_eq!(
            signup("ann@example.com", "a").fingerprint(),
            signup("ANN@example.com", "b").fingerprint()
        );
        assert_ne!(
            signup("ann@example.com", "a").fingerprint(),
            signup("bob@example.com", "a").fingerprint()
        );
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for state in [
            SignupState::Started,
            SignupState::CredentialCreated,
            SignupState::Undone,
        ] {
            assert_eq!(SignupState::parse(state.as_str()), Some(state));
        }
    }
}
