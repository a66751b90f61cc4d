//! Login throttling. Every login attempt is counted before its password is hashed, as a
//! failure until it proves otherwise, against two subjects:
//!
//! - the **pair** of account (normalised email, known or not) and client address: the failure
//!   that uses up its `max_per_account` allowance, and each one after, locks the pair for a
//!   delay that doubles, from `first_delay` up to `lockout`. Keyed by the address too, so that nobody can lock a
//!   stranger out by knowing their email: the owner's own address keeps its allowance.
//! - the **address**: after `max_per_address` failures within `window`, it is locked for
//!   `lockout`, whatever account it tries.
//!
//! An IPv6 client is keyed by its /64, which one subscriber usually holds whole (as the
//! gateway's rate limits do). A success clears the pair and gives the address its attempt
//! back. Counting before hashing, in one locked read-modify-write (see `store::reserve`), is
//! what holds under concurrency: of 30 simultaneous guesses, only the allowance is hashed.

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

/// The throttling limits.
#[derive(Debug, Clone, Copy)]
pub struct ThrottlePolicy {
    /// Failures allowed per account and address before the delays start.
    pub max_per_account: u32,
    /// Failures allowed per client address within `window`.
    pub max_per_address: u32,
    /// How long failures are remembered once their subject has been quiet.
    pub window: Duration,
    /// How long an address is locked once it reaches its limit; the longest delay of a pair.
    pub lockout: Duration,
    /// The delay of a pair once its allowance is used up; each further failure doubles it.
    pub first_delay: Duration,
}

/// What a count of failures is kept for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// One account tried from one client address (IPv6: its /64).
    Pair {
        /// The normalised email.
        email: String,
        /// The client's address, or its /64.
        bucket: IpAddr,
    },
    /// One client address (IPv6: its /64).
    Address(IpAddr),
}

impl Subject {
    /// The subjects a login for `email` from `client` counts against, in the order their rows
    /// are locked (by key, the same for every login, so that two logins cannot deadlock).
    pub fn of_login(email: &str, client: IpAddr) -> [Self; 2] {
        let bucket = bucket_of(client);
        [
            Self::Address(bucket),
            Self::Pair {
                email: email.to_owned(),
                bucket,
            },
        ]
    }

    /// The key its row is stored under.
    pub fn key(&self) -> String {
        match self {
            Self::Pair { email, bucket } => format!("pair:{bucket}:{email}"),
            Self::Address(bucket) => format!("address:{bucket}"),
        }
    }

    /// `pair` or `address`, for logs.
    pub fn scope(&self) -> &'static str {
        match self {
            Self::Pair { .. } => "pair",
            Self::Address(_) => "address",
        }
    }
}

/// The key of a client: its IPv4 address, or its IPv6 /64. An IPv4 address mapped into IPv6
/// is its IPv4 address.
pub fn bucket_of(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V4(_) => client,
        IpAddr::V6(address) => match address.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(address) & !((1u128 << 64) - 1))),
        },
    }
}

/// The stored failures of one subject. Times are milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Count {
    /// Failures counted (attempts in flight included).
    pub failures: i64,
    /// Address: when its window started. Pair: when its last failure was counted.
    pub window_started_at: i64,
    /// Until when attempts are refused (0: never locked).
    pub locked_until: i64,
}

/// Whether an attempt may go on to the hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// Yes; the count to store, with this attempt counted as a failure.
    Allowed(Count),
    /// No: the subject is locked until then.
    Locked(i64),
}

impl Count {
    /// Count one more attempt at `now` against `subject`, or refuse it while locked.
    pub fn reserve(self, subject: &Subject, now: i64, policy: &ThrottlePolicy) -> Reservation {
        if self.locked_until > now {
            return Reservation::Locked(self.locked_until);
        }
        let window = millis(policy.window);
        let mut count = match subject {
            // A lockout that has ended starts the address afresh, as does the end of its window.
            Subject::Address(_) if self.locked_until > 0 || now - self.window_started_at >= window => Count {
                failures: 0,
                window_started_at: now,
                locked_until: 0,
            },
            Subject::Address(_) => self,
            // A pair is forgotten only after a window without failures or lock, so that its
            // delays keep growing for a patient attacker.
            Subject::Pair { .. } if now - self.window_started_at.max(self.locked_until) >= window => {
                Count::default()
            }
            Subject::Pair { .. } => self,
        };
        count.failures += 1;
        match subject {
            Subject::Address(_) => {
                if count.failures >= i64::from(policy.max_per_address) {
                    count.locked_until = now.saturating_add(millis(policy.lockout));
                }
            }
            Subject::Pair { .. } => {
                count.window_started_at = now;
                let past_allowance = count.failures - i64::from(policy.max_per_account);
                if past_allowance >= 0 {
                    count.locked_until = now.saturating_add(pair_delay(past_allowance, policy));
                }
            }
        }
        Reservation::Allowed(count)
    }
}

/// The delay of a pair `past_allowance` failures after the one that used its allowance up:
/// the first delay, doubled for each, at most the lockout.
pub fn pair_delay(past_allowance: i64, policy: &ThrottlePolicy) -> i64 {
    let doublings = u32::try_from(past_allowance.clamp(0, 40)).unwrap_or(40);
    millis(policy.first_delay)
        .saturating_mul(1i64 << doublings)
        .min(millis(policy.lockout))
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

    const POLICY: ThrottlePolicy = ThrottlePolicy {
        max_per_account: 3,
        max_per_address: 5,
        window: Duration::from_secs(900),
        lockout: Duration::from_secs(900),
        first_delay: Duration::from_secs(1),
    };

    fn pair() -> Subject {
        Subject::of_login("ada@example.com", "10.0.0.1".parse().expect("an address"))[1].clone()
    }

    /// Reserve `attempts` in a row at `now`, as if each failed; the last outcome.
    fn reserve_times(subject: &Subject, attempts: usize, now: i64) -> (Count, Reservation) {
        let mut count = Count::default();
        let mut last = Reservation::Locked(0);
        for _ in 0..attempts {
            last = count.reserve(subject, now, &POLICY);
            if let Reservation::Allowed(next) = last {
                count = next;
            }
        }
        (count, last)
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(10_001, 0), 11);
        assert_eq!(retry_after_secs(10_000, 0), 10);
        assert_eq!(retry_after_secs(5, 10), 1);
    }

    #[test]
    fn pairs_and_addresses_have_distinct_keys() {
        let [address, pair] = Subject::of_login("ada@example.com", "10.0.0.1".parse().expect("an address"));
        assert_eq!(address.key(), "address:10.0.0.1");
        assert_eq!(pair.key(), "pair:10.0.0.1:ada@example.com");
    }

    #[test]
    fn an_ipv6_client_is_keyed_by_its_64() {
        let one: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("an address");
        let other: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("an address");
        let next: IpAddr = "2001:db8:1:3::1".parse().expect("an address");
        assert_eq!(bucket_of(one), bucket_of(other));
        assert_ne!(bucket_of(one), bucket_of(next));
        assert_eq!(bucket_of(one).to_string(), "2001:db8:1:2::");
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().expect("an address");
        assert_eq!(bucket_of(mapped).to_string(), "192.0.2.1");
    }

    #[test]
    fn an_address_is_locked_by_the_attempt_that_reaches_its_limit() {
        let address = Subject::Address("10.0.0.1".parse().expect("an address"));
        let (count, last) = reserve_times(&address, 5, 1000);
        assert!(
            matches!(last, Reservation::Allowed(_)),
            "the fifth attempt is allowed"
        );
        assert_eq!(count.locked_until, 1000 + 900_000);
        assert_eq!(
            count.reserve(&address, 2000, &POLICY),
            Reservation::Locked(901_000)
        );
        let after = count.reserve(&address, 901_000, &POLICY);
        assert!(
            matches!(after, Reservation::Allowed(Count { failures: 1, .. })),
            "{after:?}"
        );
    }

    #[test]
    fn a_pairs_delay_doubles_past_its_allowance_up_to_the_lockout() {
        let pair = pair();
        let (count, _) = reserve_times(&pair, 2, 0);
        assert_eq!(count.locked_until, 0, "within the allowance, no delay");
        let Reservation::Allowed(third) = count.reserve(&pair, 0, &POLICY) else {
            panic!("the third attempt is allowed");
        };
        assert_eq!(third.locked_until, 1000);
        assert_eq!(third.reserve(&pair, 500, &POLICY), Reservation::Locked(1000));
        let Reservation::Allowed(fourth) = third.reserve(&pair, 1000, &POLICY) else {
            panic!("allowed once the delay is over");
        };
        assert_eq!(fourth.locked_until, 1000 + 2000);
        assert_eq!(pair_delay(30, &POLICY), 900_000, "capped by the lockout");
    }

    #[test]
    fn a_pair_is_forgotten_after_a_quiet_window() {
        let pair = pair();
        let (count, _) = reserve_times(&pair, 3, 0);
        let later = count.reserve(&pair, 1000 + 900_000, &POLICY);
        assert!(
            matches!(
                later,
                Reservation::Allowed(Count {
                    failures: 1,
                    locked_until: 0,
                    ..
                })
            ),
            "{later:?}"
        );
    }
}
