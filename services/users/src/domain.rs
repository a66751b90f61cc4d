//! What a profile is and which values it accepts. Everything here is checked before it is
//! stored; a request with a bad field changes nothing and names the field.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use dozen_kit::Problem;
use dozen_kit::email::Email;
use serde::{Deserialize, Serialize};
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
use uuid::Uuid;

/// The most interests one profile may list.
pub const MAX_INTERESTS: usize = 20;
/// The longest interest, in characters.
pub const MAX_INTEREST_LENGTH: usize = 32;
/// The longest display name, in characters.
pub const MAX_DISPLAY_NAME_LENGTH: usize = 64;

/// How a person is shown to others: 1 to 64 characters, trimmed, with no control characters
/// and no format characters (Unicode category Cf: bidi overrides and isolates, zero-width
/// joiners and spaces…), which could make a name show as another, or reorder the text around
/// it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    /// Validate and trim.
    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        let length = trimmed.chars().count();
        if length == 0 {
            return Err("is required".to_owned());
        }
        if length > MAX_DISPLAY_NAME_LENGTH {
            return Err(format!("is longer than {MAX_DISPLAY_NAME_LENGTH} characters"));
        }
        if trimmed.chars().any(char::is_control) {
            return Err("contains control characters".to_owned());
        }
        if trimmed
            .chars()
            .any(|c| c.general_category() == GeneralCategory::Format)
        {
            return Err(
                "contains invisible formatting characters (such as bidi overrides or zero-width \
                 spaces), which could disguise the name"
                    .to_owned(),
            );
        }
        Ok(Self(trimmed.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a person is into, for friend suggestions: at most 20, each 1 to 32 characters,
/// trimmed, lower-cased, without repeats, in the order given.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Interests(Vec<String>);

impl Interests {
    /// Validate and normalise.
    pub fn parse(items: &[String]) -> Result<Self, String> {
        if items.len() > MAX_INTERESTS {
            return Err(format!("lists more than {MAX_INTERESTS} interests"));
        }
        let interests = normalise(items);
        for interest in &interests {
            let length = interest.chars().count();
            if length == 0 || length > MAX_INTEREST_LENGTH || interest.chars().any(char::is_control) {
                return Err(format!(
                    "each interest must be 1 to {MAX_INTEREST_LENGTH} printable characters"
                ));
            }
        }
        Ok(Self(interests))
    }

    /// The interests.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

/// Interests as a profile keeps them: trimmed, lower-cased, without repeats, in the order
/// given, so `Chess` and ` chess` are one interest. Other services take them from the profile
/// (friends matches people on them), never normalise them again.
fn normalise(items: &[String]) -> Vec<String> {
    let mut interests: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        let interest = item.trim().to_lowercase();
        if !interests.contains(&interest) {
            interests.push(interest);
        }
    }
    interests
}

/// A stored profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Profile {
    /// The user's id, shared by every service.
    pub id: Uuid,
    /// The normalised email address.
    #[schema(value_type = String)]
    pub email: Email,
    /// How others see the user.
    pub display_name: String,
    /// What the user is into.
    pub interests: Vec<String>,
    /// Whether the user proved they own the email address.
    pub verified: bool,
    /// When the profile was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// A profile to create (the signup service sends it, with the id it chose).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewProfile {
    /// The id.
    pub id: Uuid,
    /// The address.
    pub email: Email,
    /// The name.
    pub display_name: DisplayName,
    /// The interests.
    pub interests: Interests,
}

/// The body of `POST /profiles`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProfileRequest {
    /// The id the caller chose (a UUID).
    pub id: Uuid,
    /// The email address.
    pub email: String,
    /// The display name.
    pub display_name: String,
    /// Interests; none when omitted.
    #[serde(default)]
    pub interests: Vec<String>,
}

impl NewProfileRequest {
    /// Check every field; the problem names each bad one.
    pub fn validate(self) -> Result<NewProfile, Problem> {
        let mut errors = BTreeMap::new();
        let email = Email::parse(&self.email)
            .map_err(|e| errors.insert("email".to_owned(), e.to_owned()))
            .ok();
        let display_name = DisplayName::parse(&self.display_name)
            .map_err(|e| errors.insert("display_name".to_owned(), e))
            .ok();
        let interests = Interests::parse(&self.interests)
            .map_err(|e| errors.insert("interests".to_owned(), e))
            .ok();
        match (email, display_name, interests) {
            (Some(email), Some(display_name), Some(interests)) if errors.is_empty() => Ok(NewProfile {
                id: self.id,
                email,
                display_name,
                interests,
            }),
            _ => Err(Problem::validation(errors)),
        }
    }
}

/// Changes to a profile: each field is optional, and an absent one stays as it is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProfileChanges {
    /// A new name.
    pub display_name: Option<DisplayName>,
    /// New interests (replacing the old ones).
    pub interests: Option<Interests>,
}

/// The body of `PATCH /me`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileChangesRequest {
    /// A new display name.
    pub display_name: Option<String>,
    /// New interests, replacing the old ones.
    pub interests: Option<Vec<String>>,
}

impl ProfileChangesRequest {
    /// Check every field given; the problem names each bad one.
    pub fn validate(self) -> Result<ProfileChanges, Problem> {
        let mut errors = BTreeMap::new();
        let display_name = match self.display_name.as_deref().map(DisplayName::parse) {
            Some(Err(error)) => {
                errors.insert("display_name".to_owned(), error);
                None
            }
            parsed => parsed.and_then(Result::ok),
        };
        let interests = match self.interests.as_deref().map(Interests::parse) {
            Some(Err(error)) => {
                errors.insert("interests".to_owned(), error);
                None
            }
            parsed => parsed.and_then(Result::ok),
        };
        if errors.is_empty() {
            Ok(ProfileChanges {
                display_name,
                interests,
            })
        } else {
            Err(Problem::validation(errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interests_are_trimmed_lower_cased_and_kept_once_in_their_order() {
        let given = [" Chess", "sailing ", "chess", "Go"].map(String::from);
        let parsed = Interests::parse(&given).expect("valid");
        assert_eq!(parsed.as_slice(), ["chess", "sailing", "go"]);
    }

    #[test]
    fn interests_are_normalised_and_deduplicated() {
        let parsed = Interests::parse(&[" Chess".into(), "chess".into(), "Go ".into()]).expect("valid");
        assert_eq!(parsed.as_slice(), ["chess", "go"]);
    }

    #[test]
    fn too_many_or_too_long_interests_are_rejected() {
        let many: Vec<String> = (0..=MAX_INTERESTS).map(|i| format!("topic {i}")).collect();
        assert!(Interests::parse(&many).is_err());
        assert!(Interests::parse(&["x".repeat(MAX_INTEREST_LENGTH + 1)]).is_err());
        assert!(Interests::parse(&["   ".into()]).is_err());
    }

    #[test]
    fn display_names_are_trimmed_and_bounded() {
        assert_eq!(DisplayName::parse("  Ann ").map(|n| n.0), Ok("Ann".to_owned()));
        assert!(DisplayName::parse(" ").is_err());
        assert!(DisplayName::parse(&"é".repeat(MAX_DISPLAY_NAME_LENGTH + 1)).is_err());
        assert!(DisplayName::parse(&"é".repeat(MAX_DISPLAY_NAME_LENGTH)).is_ok());
        assert!(DisplayName::parse("Ann\u{7}").is_err());
        for disguised in [
            "Ann\u{202E}nnA",
            "A\u{200B}nn",
            "\u{2066}Ann\u{2069}",
            "Ann\u{FEFF}",
            "An\u{AD}n",
        ] {
            assert!(DisplayName::parse(disguised).is_err(), "{disguised:?}");
        }
        assert!(DisplayName::parse("Zoë 李 عمر").is_ok(), "letters of any script");
    }

    #[test]
    fn a_request_with_several_bad_fields_names_each() {
        let request = NewProfileRequest {
            id: Uuid::nil(),
            email: "nope".into(),
            display_name: String::new(),
            interests: vec![],
        };
        let problem = request.validate().expect_err("invalid");
        let errors = problem.errors.expect("field errors");
        assert!(errors.contains_key("email") && errors.contains_key("display_name"));
    }
}
