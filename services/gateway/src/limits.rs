//! Rate limits per client address on the routes that cost the platform most or invite abuse:
//! signups (a password hash and a mail each), logins (a password hash each) and verifications
//! (token guesses, resent mails); and per credential on the authenticated reads (`/api/me`,
//! friends and suggestions), so one user cannot flood the services behind them. A request over
//! its limit is answered here with 429 and `Retry-After`, and never reaches the service.
//!
//! A credential is the `Authorization` header's value, kept only as a keyed hash: the gateway
//! verifies no token (the services do), so a request is counted against the exact header it
//! sent, and one without the header against its client address.
//!
//! Each route group has its own limit, `N/period`: up to N requests at once from one address,
//! then one more each period/N (a token bucket, GCRA). An IPv4 client is one address; an IPv6
//! client is its /64, which one subscriber usually holds whole. Addresses idle long enough to be
//! back at a full bucket are forgotten now and then, so memory follows the active clients only.

use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use dozen_kit::Problem;
use dozen_kit::config::parse_duration;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota};
use tokio_util::sync::CancellationToken;

use crate::client_address::ClientAddress;

/// A route group's limit per client address, as set by `RATE_LIMIT_<GROUP>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimit {
    /// No limit.
    Off,
    /// Up to `requests` at once, refilled evenly over `period`.
    Every {
        /// The bucket's size.
        requests: NonZeroU32,
        /// How long an empty bucket takes to fill again.
        period: Duration,
    },
}

impl RateLimit {
    /// Parse `N/period` (`20/h`, `30/min`, `5/10s`, `100/15m`) or `off`.
    pub fn parse(text: &str) -> Result<Self, String> {
        const EXPECTED: &str = "expected requests/period such as 20/h, 30/min or 5/10s, or off";
        let text = text.trim();
        if text.eq_ignore_ascii_case("off") {
            return Ok(Self::Off);
        }
        let (requests, period) = text.split_once('/').ok_or(EXPECTED)?;
        let requests: NonZeroU32 = requests.trim().parse().map_err(|_| EXPECTED)?;
        let period = period.trim();
        // `min` means one minute: humantime wants the count.
        let period = if period.starts_with(|c: char| c.is_ascii_digit()) {
            parse_duration(period)
        } else {
            parse_duration(&format!("1{period}"))
        }
        .map_err(|_| EXPECTED)?;
        let limit = Self::Every { requests, period };
        match limit.quota() {
            Some(_) => Ok(limit),
            None => Err(format!("the period must be at least {requests} ns")),
        }
    }

    fn quota(self) -> Option<Quota> {
        match self {
            Self::Off => None,
            Self::Every { requests, period } => {
                Quota::with_period(period / requests.get()).map(|quota| quota.allow_burst(requests))
            }
        }
    }

    fn period(self) -> Option<Duration> {
        match self {
            Self::Off => None,
            Self::Every { period, .. } => Some(period),
        }
    }
}

/// Whose requests a limit counts together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountedBy {
    /// The client address (an IPv6 client's /64).
    Address,
    /// The `Authorization` header (the client address when there is none).
    Credential,
}

/// The key a request is counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Requester {
    /// A client address, or IPv6 /64.
    Address(IpAddr),
    /// A keyed hash of an `Authorization` header's value.
    Credential(u64),
}

/// One route group's limiter, shared by its routes.
#[derive(Clone)]
pub struct RouteLimit {
    /// The group's name, in answers and metrics (`signups`, …).
    group: &'static str,
    /// Whose requests are counted together.
    counted_by: CountedBy,
    /// Hashes credentials with a key of this process's own, so that no one can pick headers
    /// that collide with another user's.
    credential_hasher: RandomState,
    /// `None` when the limit is off.
    limiter: Option<Arc<DefaultKeyedRateLimiter<Requester>>>,
    /// The limit, to know how often idle addresses may be forgotten.
    limit: RateLimit,
}

impl fmt::Debug for RouteLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteLimit")
            .field("group", &self.group)
            .field("limit", &self.limit)
            .finish()
    }
}

impl RouteLimit {
    /// A limiter named `group` enforcing `limit` on the requests of each `counted_by`.
    pub fn new(group: &'static str, limit: RateLimit, counted_by: CountedBy) -> Self {
        Self {
            group,
            counted_by,
            credential_hasher: RandomState::new(),
            limiter: limit
                .quota()
                .map(|quota| Arc::new(DefaultKeyedRateLimiter::keyed(quota))),
            limit,
        }
    }

    /// `route`, with this limit checked before its handler runs.
    pub fn guard<S: Clone + Send + Sync + 'static>(&self, route: MethodRouter<S>) -> MethodRouter<S> {
        match self.limiter {
            None => route,
            Some(_) => route.route_layer(from_fn_with_state(self.clone(), check)),
        }
    }

    /// The key `request` is counted under.
    fn requester(&self, request: &Request) -> Requester {
        let credential = match self.counted_by {
            CountedBy::Address => None,
            CountedBy::Credential => request.headers().get(header::AUTHORIZATION),
        };
        if let Some(credential) = credential {
            return Requester::Credential(self.credential_hasher.hash_one(credential.as_bytes()));
        }
        // Without a peer address (never under the server) every such request shares one bucket.
        let client = request
            .extensions()
            .get::<ClientAddress>()
            .map_or(IpAddr::from([0, 0, 0, 0]), |client| client.0);
        Requester::Address(bucket_of(client))
    }

    /// Forget addresses back at a full bucket, and report how many are still tracked.
    fn forget_idle(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
            metrics::gauge!("gateway_rate_limit_tracked_addresses", "group" => self.group)
                .set(limiter.len() as f64);
        }
    }
}

/// The limits of every limited route group.
#[derive(Debug, Clone)]
pub struct RateLimits {
    /// `POST /api/signups`.
    pub signups: RouteLimit,
    /// `POST /api/sessions` (logins), `POST /api/sessions/refresh`, `PUT /api/me/password` and
    /// `DELETE /api/me`.
    pub sessions: RouteLimit,
    /// `POST /api/verifications/{token}`, `POST /api/verifications/resend` and the password
    /// resets (`POST /api/password-resets`, `POST /api/password-resets/{token}`): each a token
    /// lookup or a mail.
    pub verifications: RouteLimit,
    /// The authenticated reads: `GET /api/me`, `/api/friends`, `/api/friends/requests` and
    /// `/api/suggestions`, per credential.
    pub reads: RouteLimit,
}

impl RateLimits {
    /// Limiters for the configured limits.
    pub fn new(signups: RateLimit, sessions: RateLimit, verifications: RateLimit, reads: RateLimit) -> Self {
        Self {
            signups: RouteLimit::new("signups", signups, CountedBy::Address),
            sessions: RouteLimit::new("sessions", sessions, CountedBy::Address),
            verifications: RouteLimit::new("verifications", verifications, CountedBy::Address),
            reads: RouteLimit::new("reads", reads, CountedBy::Credential),
        }
    }

    fn groups(&self) -> [&RouteLimit; 4] {
        [&self.signups, &self.sessions, &self.verifications, &self.reads]
    }

    /// Forget idle addresses periodically until `stop` is cancelled: as often as the shortest
    /// period, between once a second and once a minute.
    pub async fn forget_idle_until(self, stop: CancellationToken) {
        let every = self
            .groups()
            .iter()
            .filter_map(|group| group.limit.period())
            .min()
            .unwrap_or(Duration::from_secs(60))
            .clamp(Duration::from_secs(1), Duration::from_secs(60));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.groups().iter().for_each(|group| group.forget_idle()),
                () = stop.cancelled() => return,
            }
        }
    }
}

/// The key of a client: its IPv4 address, or its IPv6 /64.
fn bucket_of(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V4(_) => client,
        IpAddr::V6(address) => {
            let prefix = u128::from(address) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
    }
}

/// Middleware: let the request through, or answer 429 with the seconds until the next one
/// would be allowed.
async fn check(State(limit): State<RouteLimit>, request: Request, next: Next) -> Response {
    let Some(limiter) = &limit.limiter else {
        return next.run(request).await;
    };
    let requester = limit.requester(&request);
    match limiter.check_key(&requester) {
        Ok(()) => next.run(request).await,
        Err(not_until) => {
            let wait = not_until.wait_time_from(limiter.clock().now());
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            let seconds = seconds.max(1);
            metrics::counter!("gateway_rate_limited_total", "group" => limit.group).increment(1);
            let mut response = Problem::typed(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
                format!(
                    "too many {} {}; try again in {seconds} s",
                    limit.group,
                    match requester {
                        Requester::Address(_) => "from your address",
                        Requester::Credential(_) => "with your credentials",
                    }
                ),
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every(requests: u32, seconds: u64) -> RateLimit {
        RateLimit::Every {
            requests: NonZeroU32::new(requests).expect("not zero"),
            period: Duration::from_secs(seconds),
        }
    }

    #[test]
    fn limits_are_read_with_or_without_a_count_before_the_unit() {
        assert_eq!(RateLimit::parse("20/h"), Ok(every(20, 3600)));
        assert_eq!(RateLimit::parse("30/min"), Ok(every(30, 60)));
        assert_eq!(RateLimit::parse(" 5 / 10s "), Ok(every(5, 10)));
        assert_eq!(RateLimit::parse("100/15m"), Ok(every(100, 900)));
        assert_eq!(RateLimit::parse("OFF"), Ok(RateLimit::Off));
    }

    #[test]
    fn bad_limits_are_refused() {
        for bad in [
            "",
            "20",
            "0/h",
            "-1/h",
            "ten/h",
            "20/fortnight",
            "20/",
            "/h",
            "5/0s",
        ] {
            assert!(RateLimit::parse(bad).is_err(), "{bad:?} is refused");
        }
    }

    #[test]
    fn only_addresses_back_at_a_full_bucket_are_forgotten() {
        let quick = RouteLimit::new(
            "quick",
            RateLimit::parse("1/10ms").expect("a limit"),
            CountedBy::Address,
        );
        let slow = RouteLimit::new(
            "slow",
            RateLimit::parse("1/h").expect("a limit"),
            CountedBy::Address,
        );
        let client = Requester::Address(IpAddr::from([203, 0, 113, 9]));
        for limit in [&quick, &slow] {
            let limiter = limit.limiter.as_ref().expect("a limiter");
            assert!(limiter.check_key(&client).is_ok());
            assert!(limiter.check_key(&client).is_err(), "the bucket is empty");
        }
        std::thread::sleep(Duration::from_millis(50));
        quick.forget_idle();
        slow.forget_idle();
        let tracked = |limit: &RouteLimit| limit.limiter.as_ref().map_or(0, |limiter| limiter.len());
        assert_eq!(tracked(&quick), 0, "refilled: forgotten");
        assert_eq!(tracked(&slow), 1, "still limited: kept");
    }

    #[test]
    fn an_ipv6_client_is_limited_by_its_64() {
        let one: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("an address");
        let other: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("an address");
        let elsewhere: IpAddr = "2001:db8:1:3::1".parse().expect("an address");
        assert_eq!(bucket_of(one), bucket_of(other));
        assert_ne!(bucket_of(one), bucket_of(elsewhere));
        let v4: IpAddr = "203.0.113.9".parse().expect("an address");
        assert_eq!(bucket_of(v4), v4);
    }
}
