//! Friendships as an event-sourced log: each pair of users has one stream of events
//! (`requested`, `accepted`, `removed`); the state of a pair is the fold of its stream, and
//! each command decides, from that state, which event (if any) to append.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// The stream of one pair of users: the same whoever acts, `<lower id>:<higher id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FriendshipStream {
    low: Uuid,
    high: Uuid,
}

impl FriendshipStream {
    /// The stream of `a` and `b` (two different users).
    pub fn of(a: Uuid, b: Uuid) -> Self {
        if a <= b {
            Self { low: a, high: b }
        } else {
            Self { low: b, high: a }
        }
    }

    /// Its key in the log.
    pub fn key(&self) -> String {
        format!("{}:{}", self.low, self.high)
    }

    /// The other member of the pair.
    pub fn other(&self, user: Uuid) -> Uuid {
        if user == self.low { self.high } else { self.low }
    }

    /// Read a stream key back.
    pub fn parse(key: &str) -> Option<Self> {
        let (low, high) = key.split_once(':')?;
        Some(Self::of(low.parse().ok()?, high.parse().ok()?))
    }
}

/// What happened in a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FriendshipEventKind {
    /// `actor` asked the other to be friends.
    Requested,
    /// `actor` accepted the other's request.
    Accepted,
    /// `actor` withdrew a request, declined one, or ended the friendship.
    Removed,
}

impl FriendshipEventKind {
    /// Its name in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::Accepted => "accepted",
            Self::Removed => "removed",
        }
    }

    /// From its name in the log.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Requested, Self::Accepted, Self::Removed]
            .into_iter()
            .find(|kind| kind.as_str() == text)
    }
}

/// One event of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FriendshipEvent {
    /// What happened.
    pub kind: FriendshipEventKind,
    /// Who did it.
    pub actor: Uuid,
    /// When.
    pub occurred_at: DateTime<Utc>,
}

/// Where a pair stands: the fold of its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Friendship {
    /// Nothing between them (never, or removed).
    None,
    /// `by` asked; the other has not answered.
    Requested {
        /// Who asked.
        by: Uuid,
    },
    /// Friends since then.
    Friends {
        /// Since when.
        since: DateTime<Utc>,
    },
}

impl Friendship {
    /// The state after `events`, in order.
    pub fn fold<'e>(events: impl IntoIterator<Item = &'e FriendshipEvent>) -> Self {
        events
            .into_iter()
            .fold(Self::None, |state, event| state.apply(event))
    }

    /// The state after one more event.
    pub fn apply(self, event: &FriendshipEvent) -> Self {
        match event.kind {
            FriendshipEventKind::Requested => Self::Requested { by: event.actor },
            FriendshipEventKind::Accepted => Self::Friends {
                since: event.occurred_at,
            },
            FriendshipEventKind::Removed => Self::None,
        }
    }
}

/// A command's answer: the event to append, or nothing to do, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Append this event.
    Append(FriendshipEventKind),
    /// Already so: nothing to append (commands are idempotent).
    Nothing,
    /// Not possible from here.
    Refused(&'static str),
}

/// `actor` asks the other to be friends. If the other already asked, asking back accepts.
pub fn request(state: Friendship, actor: Uuid) -> Decision {
    match state {
        Friendship::None => Decision::Append(FriendshipEventKind::Requested),
        Friendship::Requested { by } if by == actor => Decision::Nothing,
        Friendship::Requested { .. } => Decision::Append(FriendshipEventKind::Accepted),
        Friendship::Friends { .. } => Decision::Nothing,
    }
}

/// `actor` accepts the other's request.
pub fn accept(state: Friendship, actor: Uuid) -> Decision {
    match state {
        Friendship::Requested { by } if by != actor => Decision::Append(FriendshipEventKind::Accepted),
        Friendship::Friends { .. } => Decision::Nothing,
        _ => Decision::Refused("there is no request from this user to accept"),
    }
}

/// `actor` withdraws or declines a request, or ends the friendship.
pub fn remove(state: Friendship) -> Decision {
    match state {
        Friendship::None => Decision::Nothing,
        _ => Decision::Append(FriendshipEventKind::Removed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: FriendshipEventKind, actor: Uuid) -> FriendshipEvent {
        FriendshipEvent {
            kind,
            actor,
            occurred_at: Utc::now(),
        }
    }

    #[test]
    fn a_stream_is_the_same_whoever_acts() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(FriendshipStream::of(a, b), FriendshipStream::of(b, a));
        assert_eq!(
            FriendshipStream::parse(&FriendshipStream::of(a, b).key()),
            Some(FriendshipStream::of(a, b))
        );
        assert_eq!(FriendshipStream::of(a, b).other(a), b);
    }

    #[test]
    fn a_request_accepted_makes_friends_and_a_removal_undoes_it() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let asked = [event(FriendshipEventKind::Requested, a)];
        assert_eq!(Friendship::fold(&asked), Friendship::Requested { by: a });
        assert_eq!(
            accept(Friendship::fold(&asked), a),
            Decision::Refused("there is no request from this user to accept")
        );
        assert_eq!(
            accept(Friendship::fold(&asked), b),
            Decision::Append(FriendshipEventKind::Accepted)
        );
        assert_eq!(
            request(Friendship::fold(&asked), b),
            Decision::Append(FriendshipEventKind::Accepted)
        );
        assert_eq!(request(Friendship::fold(&asked), a), Decision::Nothing);
        let friends = [
            event(FriendshipEventKind::Requested, a),
            event(FriendshipEventKind::Accepted, b),
        ];
        assert!(matches!(Friendship::fold(&friends), Friendship::Friends { .. }));
        assert_eq!(
            remove(Friendship::fold(&friends)),
            Decision::Append(FriendshipEventKind::Removed)
        );
        let ended = [
            event(FriendshipEventKind::Requested, a),
            event(FriendshipEventKind::Accepted, b),
            event(FriendshipEventKind::Removed, a),
        ];
        assert_eq!(Friendship::fold(&ended), Friendship::None);
        assert_eq!(remove(Friendship::None), Decision::Nothing);
    }
}
