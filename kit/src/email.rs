//! Email addresses as every service stores and compares them: validated once, trimmed and
//! lower-cased, so `Ann@Example.com ` and `ann@example.com` are the same account everywhere.

use std::fmt;
use std::str::FromStr;

use email_address::{EmailAddress, Options};

/// The longest address SMTP can carry (RFC 5321's path limit less the angle brackets).
const MAX_LENGTH: usize = 254;

/// A valid, normalised email address.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    /// Validate and normalise. The error says what is wrong, for a field error.
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        let normalised = text.trim().to_lowercase();
        if normalised.is_empty() {
            return Err("is required");
        }
        if normalised.len() > MAX_LENGTH {
            return Err("is longer than 254 characters");
        }
        let options = Options::default().without_display_text().without_domain_literal();
        let address = EmailAddress::parse_with_options(&normalised, options)
            .map_err(|_| "is not a valid email address")?;
        // A signup needs a deliverable address: a domain with at least one dot.
        let domain = address.domain();
        if !domain.contains('.') || domain.starts_with('.') || domain.ends_with('.') {
            return Err("is not a valid email address");
        }
        Ok(Self(normalised))
    }

    /// The normalised address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Email {
    type Err = &'static str;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Email {
    // Addresses are personal data: logs show only the domain.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let domain = self.0.rsplit_once('@').map_or("", |(_, domain)| domain);
        write!(f, "Email(…@{domain})")
    }
}

#[cfg(test)]
mod tests {
    use super::Email;

    #[test]
    fn addresses_are_trimmed_and_lower_cased() {
        assert_eq!(
            Email::parse("  Ann.Lee@Example.COM ").map(|e| e.0),
            Ok("ann.lee@example.com".to_owned())
        );
    }

    #[test]
    fn malformed_or_undeliverable_addresses_are_rejected() {
        for bad in [
            "",
            "   ",
            "ann",
            "ann@",
            "@example.com",
            "ann@localhost",
            "Ann <ann@example.com>",
            "a b@example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} was accepted");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(Email::parse(&long).is_err());
    }
}
