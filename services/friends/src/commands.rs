//! Carrying out a command on a pair: load its stream, decide from its state, append the
//! event with the next version, update the projections and (for an acceptance) publish
//! `friend.connected` — all in one transaction. A concurrent write to the same stream makes
//! the append fail; the command is then decided again on the new state.

use axum::http::StatusCode;
use chrono::Utc;
use dozen_bus::Outbox;
use dozen_bus::contracts::FriendConnected;
use dozen_kit::db::{Db, Tx};
use dozen_kit::{ApiError, Problem};
use uuid::Uuid;

use crate::domain::{Decision, Friendship, FriendshipEvent, FriendshipEventKind, FriendshipStream};
use crate::store::{self, AppendError};

/// How often a command is decided again after losing a race.
const ATTEMPTS: usize = 3;

/// Where the pair stands after a command.
pub type Outcome = Friendship;

/// Run `decide` for `actor` on the pair (`actor`, `other`).
pub async fn run(
    db: &Db,
    outbox: &Outbox,
    actor: Uuid,
    other: Uuid,
    decide: impl Fn(Friendship) -> Decision,
) -> Result<Outcome, ApiError> {
    if actor == other {
        return Err(Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "you cannot befriend yourself").into());
    }
    let stream = FriendshipStream::of(actor, other);
    for _ in 0..ATTEMPTS {
        let mut tx = Tx::begin(db).await?;
        // The token of a deleted account lives on until it expires; its owner is no member.
        if !store::is_member(&mut tx, actor).await? {
            return Err(Problem::typed(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Unauthorized",
                "the account of this token is gone",
            )
            .into());
        }
        if !store::is_member(&mut tx, other).await? {
            return Err(Problem::new(StatusCode::NOT_FOUND, "no such user").into());
        }
        let events = store::load(&mut tx, &stream).await?;
        let state = Friendship::fold(&events);
        let kind = match decide(state) {
            Decision::Nothing => return Ok(state),
            Decision::Refused(reason) => return Err(Problem::new(StatusCode::CONFLICT, reason).into()),
            Decision::Append(kind) => kind,
        };
        let event = FriendshipEvent {
            kind,
            actor,
            occurred_at: Utc::now(),
        };
        let version = i64::try_from(events.len()).map_err(anyhow::Error::from)? + 1;
        match store::append(&mut tx, &stream, version, &event).await {
            Ok(()) => {}
            Err(AppendError::Conflict) => continue,
            Err(AppendError::Database(error)) => return Err(error.into()),
        }
        if kind == FriendshipEventKind::Accepted {
            dozen_kit::figures::count(&mut tx, "friendships", event.occurred_at).await?;
            let connected = FriendConnected {
                requester_id: other,
                accepter_id: actor,
                since: event.occurred_at,
            };
            outbox
                .publish(&mut tx, &connected)
                .await
                .map_err(anyhow::Error::from)?;
        }
        tx.commit().await?;
        return Ok(state.apply(&event));
    }
    Err(Problem::new(
        StatusCode::CONFLICT,
        "the friendship changed meanwhile; try again",
    )
    .into())
}
