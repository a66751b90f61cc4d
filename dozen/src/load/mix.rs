//! The endpoints `dozen load` calls, and the mix: how often each is called (`--mix`).

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// One kind of request the load generator sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// `POST /api/signups` with a new address.
    Signup,
    /// `POST /api/sessions` as a user of the pool.
    Login,
    /// `GET /api/me`.
    Me,
    /// `PATCH /api/me` (a new display name).
    Profile,
    /// `GET /api/suggestions`.
    Suggestions,
    /// `POST /api/friends/{id}`.
    FriendRequest,
    /// `POST /api/friends/{id}/accept` of a request made earlier.
    FriendAccept,
    /// `GET /api/dev/mailbox`, read to complete signups (not part of the mix).
    Mailbox,
    /// `POST /api/verifications/{token}` that completes a signup (not part of the mix).
    Verify,
}

impl Endpoint {
    /// The endpoints a mix can name, in the order reports list them.
    pub const MIXABLE: [Self; 7] = [
        Self::Signup,
        Self::Login,
        Self::Me,
        Self::Profile,
        Self::Suggestions,
        Self::FriendRequest,
        Self::FriendAccept,
    ];

    /// Its name in `--mix` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Signup => "signup",
            Self::Login => "login",
            Self::Me => "me",
            Self::Profile => "profile",
            Self::Suggestions => "suggestions",
            Self::FriendRequest => "friend_request",
            Self::FriendAccept => "friend_accept",
            Self::Mailbox => "mailbox",
            Self::Verify => "verify",
        }
    }

    /// The route it calls, as `METHOD /path`.
    pub fn route(self) -> &'static str {
        match self {
            Self::Signup => "POST /api/signups",
            Self::Login => "POST /api/sessions",
            Self::Me => "GET /api/me",
            Self::Profile => "PATCH /api/me",
            Self::Suggestions => "GET /api/suggestions",
            Self::FriendRequest => "POST /api/friends/{id}",
            Self::FriendAccept => "POST /api/friends/{id}/accept",
            Self::Mailbox => "GET /api/dev/mailbox",
            Self::Verify => "POST /api/verifications/{token}",
        }
    }

    /// Whether it hashes a password (argon2, deliberately slow), so it gets the slow p99 target.
    pub fn hashes_a_password(self) -> bool {
        matches!(self, Self::Signup | Self::Login)
    }

    /// Whether it needs the pool of verified users made in the setup phase.
    pub fn needs_users(self) -> bool {
        !matches!(self, Self::Signup | Self::Mailbox | Self::Verify)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How often each endpoint is called, as relative weights (`signup=2,me=40,…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    /// Each endpoint with a weight above zero, in [`Endpoint::MIXABLE`] order.
    weights: Vec<(Endpoint, u32)>,
}

/// The default mix: mostly reads, as a social site sees, with some of every write.
pub const DEFAULT_MIX: &str =
    "signup=2,login=3,me=40,profile=10,suggestions=25,friend_request=10,friend_accept=10";

impl Mix {
    /// Each endpoint with its weight (all above zero).
    pub fn weights(&self) -> &[(Endpoint, u32)] {
        &self.weights
    }

    /// The endpoints it calls.
    pub fn endpoints(&self) -> impl Iterator<Item = Endpoint> + '_ {
        self.weights.iter().map(|(endpoint, _)| *endpoint)
    }

    /// Whether any endpoint of the mix needs the pool of verified users.
    pub fn needs_users(&self) -> bool {
        self.endpoints().any(Endpoint::needs_users)
    }

    /// A sequence of endpoints in the mix's proportions, spread evenly (smooth weighted
    /// round robin): every endpoint comes up within one round of the weights' sum, so even a
    /// short run calls each one, and two runs of the same length call the same ones.
    pub fn sequence(&self) -> MixSequence {
        MixSequence {
            weights: self.weights.clone(),
            current: vec![0; self.weights.len()],
            total: self.weights.iter().map(|(_, weight)| i64::from(*weight)).sum(),
        }
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .weights
            .iter()
            .map(|(endpoint, weight)| format!("{endpoint}={weight}"))
            .collect();
        f.write_str(&parts.join(","))
    }
}

impl FromStr for Mix {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let known = || {
            Endpoint::MIXABLE
                .iter()
                .map(|endpoint| endpoint.name())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut weights: Vec<(Endpoint, u32)> = Vec::new();
        for part in text.split(',').map(str::trim) {
            let Some((name, weight)) = part.split_once('=') else {
                return Err(format!(
                    "`{part}` is not name=weight (e.g. me=40); names: {}",
                    known()
                ));
            };
            let name = name.trim();
            let Some(endpoint) = Endpoint::MIXABLE.into_iter().find(|e| e.name() == name) else {
                return Err(format!("unknown endpoint `{name}`; names: {}", known()));
            };
            let weight: u32 = weight
                .trim()
                .parse()
                .ok()
                .filter(|w| *w <= 1_000_000)
                .ok_or_else(|| {
                    format!(
                        "the weight of {name} must be a whole number from 0 to 1000000, not `{}`",
                        weight.trim()
                    )
                })?;
            if weights.iter().any(|(seen, _)| *seen == endpoint) {
                return Err(format!("{name} is named twice"));
            }
            weights.push((endpoint, weight));
        }
        weights.retain(|(_, weight)| *weight > 0);
        if weights.is_empty() {
            return Err("every weight is zero: nothing to send".to_owned());
        }
        weights.sort_by_key(|(endpoint, _)| *endpoint);
        Ok(Self { weights })
    }
}

/// An endless sequence of endpoints in a mix's proportions (see [`Mix::sequence`]).
#[derive(Debug, Clone)]
pub struct MixSequence {
    weights: Vec<(Endpoint, u32)>,
    current: Vec<i64>,
    total: i64,
}

impl Iterator for MixSequence {
    type Item = Endpoint;

    fn next(&mut self) -> Option<Endpoint> {
        for (current, (_, weight)) in self.current.iter_mut().zip(&self.weights) {
            *current += i64::from(*weight);
        }
        let (chosen, _) = self
            .current
            .iter()
            .enumerate()
            .max_by_key(|(index, current)| (**current, std::cmp::Reverse(*index)))?;
        self.current[chosen] -= self.total;
        Some(self.weights[chosen].0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mix_reads_names_and_weights_and_drops_zero_weights() {
        let mix: Mix = "me=40, signup=2,login=0".parse().expect("a mix");
        assert_eq!(mix.weights(), [(Endpoint::Signup, 2), (Endpoint::Me, 40)]);
        assert_eq!(mix.to_string(), "signup=2,me=40");
    }

    #[test]
    fn the_default_mix_names_every_endpoint() {
        let mix: Mix = DEFAULT_MIX.parse().expect("the default mix");
        assert_eq!(mix.endpoints().collect::<Vec<_>>(), Endpoint::MIXABLE);
    }

    #[test]
    fn a_bad_mix_is_refused_with_one_line_saying_why() {
        for (bad, says) in [
            ("", "is not name=weight"),
            ("me", "`me` is not name=weight"),
            ("me=40,logn=5", "unknown endpoint `logn`; names: signup, login"),
            ("me=-1", "whole number"),
            ("me=lots", "not `lots`"),
            ("me=2000000", "whole number from 0 to 1000000"),
            ("me=1,me=2", "me is named twice"),
            ("me=0,login=0", "every weight is zero"),
            ("mailbox=3", "unknown endpoint `mailbox`"),
        ] {
            let error = bad.parse::<Mix>().expect_err(bad);
            assert!(error.contains(says), "{bad:?} → {error:?}");
            assert!(!error.contains('\n'), "one line: {error:?}");
        }
    }

    #[test]
    fn the_sequence_keeps_the_proportions_exactly_in_every_round() {
        let mix: Mix = "signup=1,me=5,suggestions=2".parse().expect("a mix");
        let round: Vec<Endpoint> = mix.sequence().take(8).collect();
        let count = |endpoint| round.iter().filter(|e| **e == endpoint).count();
        assert_eq!(count(Endpoint::Signup), 1);
        assert_eq!(count(Endpoint::Me), 5);
        assert_eq!(count(Endpoint::Suggestions), 2);
        let two_rounds: Vec<Endpoint> = mix.sequence().take(16).collect();
        assert_eq!(two_rounds[..8], two_rounds[8..], "each round is the same");
        assert_ne!(round[..2], [Endpoint::Me, Endpoint::Me], "spread, not in runs");
    }
}
