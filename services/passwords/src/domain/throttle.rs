//! Login throttling: failed logins are counted per account (the normalised email, known or
//! not, so the answer reveals nothing) and per client address; once either count reaches its
//! limit within the window, logins for it are refused with 429 until the lockout ends. The
//! decision is made before any hash is computed, so a throttled flood costs no CPU. The counts
//! live in the database (see `store`), shared by every instance.

use std::net::IpAddr;
use std::time::Duration;

/// The throttling limits.
#[derive(Debug, Clone, Copy)]
pub struct ThrottlePolicy {
    /// Failures allowed per account within `window`.
    pub max_per_account: u32,
    /// Failures allowed per client address within `window`.
    pub max_per_address: u32,
    /// How long failures are remembered.
    pub window: Duration,
    /// How long logins are refused once a limit is reached.
    pub lockout: Duration,
}

/// What a count of failures is kept for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// One account, by normalised email.
    Account(String),
    /// One client address.
    Address(IpAddr),
}

impl Subject {
    /// The key its row is stored under.
    pub fn key(&self) -> String {
        match self {
            Self::Account(email) => format!("account:{email}"),
            Self::Address(address) => format!("address:{address}"),
        }
    }

    /// `account` or `address`, for metrics.
    pub fn scope(&self) -> &'static str {
        match self {
            Self::Account(_) => "account",
            Self::Address(_) => "address",
        }
    }

    /// Its limit under `policy`.
    pub fn limit(&self, policy: &ThrottlePolicy) -> u32 {
        match self {
            Self::Account(_) => policy.max_per_account,
            Self::Address(_) => policy.max_per_address,
        }
    }
}

/// Milliseconds since the Unix epoch: how throttle times are stored, the same on both backends.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// A duration in whole milliseconds, for arithmetic with [`now_millis`].
pub fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// The `Retry-After` seconds for a lockout ending at `until` (rounded up, at least 1).
pub fn retry_after_secs(until: i64, now: i64) -> u64 {
    let remaining = until.saturating_sub(now).max(1);
    u64::try_from(remaining).unwrap_or(1).div_ceil(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(10_001, 0), 11);
        assert_eq!(retry_after_secs(10_000, 0), 10);
        assert_eq!(retry_after_secs(5, 10), 1);
    }

    #[test]
    fn accounts_and_addresses_have_distinct_keys() {
        let account = Subject::Account("ada@example.com".to_owned());
        let address = Subject::Address("10.0.0.1".parse().expect("an address"));
        assert_eq!(account.key(), "account:ada@example.com");
        assert_eq!(address.key(), "address:10.0.0.1");
    }
}
