//! People you may know: every verified user you have no friendship or request with, ranked by
//! friends in common, then by interests in common, then by name.

use dozen_kit::db::Db;
use serde::Serialize;
use uuid::Uuid;

use crate::store;

/// The most suggestions returned.
pub const LIMIT: usize = 20;

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
    let mut suggestions: Vec<Suggestion> = store::candidates_for(db, user)
        .await?
        .into_iter()
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
