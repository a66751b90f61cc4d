//! People you may know: verified users you have no friendship or request with, ranked by
//! friends in common, then by interests in common, then by name.
//!
//! The ranking reads bounded, indexed slices, never every member, so a request costs the same
//! with a thousand members as with a million: the friends of your friends (most in common
//! first), the first members by name of each interest you list, and the first members by name.
//! It is exact while each slice holds everyone it could; past that, people who share a popular
//! interest are drawn from its first members by name, and when more than
//! [`FRIENDS_OF_FRIENDS`] people share friends with you, those sharing the fewest may be missed.

use std::collections::HashMap;

use dozen_kit::db::Db;
use serde::Serialize;
use uuid::Uuid;

use crate::store::{self, Candidate};

/// The most suggestions returned.
pub const LIMIT: usize = 20;

/// The most friends of friends considered.
const FRIENDS_OF_FRIENDS: i64 = 200;

/// The most members considered per interest you list.
const PER_INTEREST: i64 = 50;

/// A suggested friend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Suggestion {
    /// Who.
    pub id: Uuid,
    /// Their display name.
    pub display_name: String,
    /// How many friends you have in common.
    pub mutual_friends: u32,
    /// The interests you share.
    pub shared_interests: Vec<String>,
}

/// The suggestions for `user`, best first.
pub async fn for_user(db: &Db, user: Uuid) -> Result<Vec<Suggestion>, sqlx::Error> {
    let own_interests = store::member(db, user)
        .await?
        .map(|member| member.interests.0)
        .unwrap_or_default();
    let mut candidates: HashMap<Uuid, Candidate> = HashMap::new();
    let friends_of_friends = store::friends_of_friends(db, user, FRIENDS_OF_FRIENDS).await?;
    // A full slice of friends of friends already outranks everyone with no friend in common.
    let others_can_rank = (friends_of_friends.len() as i64) < FRIENDS_OF_FRIENDS;
    candidates.extend(friends_of_friends.into_iter().map(|c| (c.member.user_id, c)));
    if others_can_rank {
        // Everyone found from here on has no friend in common: had they one, they would be
        // among the friends of friends, which is complete.
        for interest in &own_interests {
            for candidate in store::sharing_interest(db, user, interest, PER_INTEREST).await? {
                candidates.entry(candidate.member.user_id).or_insert(candidate);
            }
        }
        if candidates.len() < LIMIT {
            // The first by name are the best of those sharing nothing with you.
            for candidate in store::first_by_name(db, user, LIMIT as i64).await? {
                candidates.entry(candidate.member.user_id).or_insert(candidate);
            }
        }
    }
    let mut suggestions: Vec<Suggestion> = candidates
        .into_values()
        .map(|candidate| Suggestion {
            id: candidate.member.user_id,
            display_name: candidate.member.display_name,
            mutual_friends: u32::try_from(candidate.mutual_friends).unwrap_or(u32::MAX),
            shared_interests: candidate
                .member
                .interests
                .0
                .into_iter()
                .filter(|interest| own_interests.contains(interest))
                .collect(),
        })
        .collect();
    suggestions.sort_by(|a, b| {
        b.mutual_friends
            .cmp(&a.mutual_friends)
            .then(b.shared_interests.len().cmp(&a.shared_interests.len()))
            .then_with(|| a.display_name.cmp(&b.display_name))
            .then(a.id.cmp(&b.id))
    });
    suggestions.truncate(LIMIT);
    Ok(suggestions)
}
