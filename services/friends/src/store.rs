//! The friends service's tables: the friendship log, its projections (pending requests,
//! friendships) and the members read model. Statements are written once for both backends.

use chrono::{DateTime, Utc};
use dozen_kit::db::{Db, Tx};
use dozen_kit::paging::Page;
use dozen_kit::{with_conn, with_pool};
use sqlx::types::Json;
use uuid::Uuid;

use crate::domain::{FriendshipEvent, FriendshipEventKind, FriendshipStream};

/// Why an append failed.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Another writer appended to the stream first (optimistic concurrency).
    #[error("the stream changed meanwhile")]
    Conflict,
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

#[derive(sqlx::FromRow)]
struct EventRow {
    event_type: String,
    actor: Uuid,
    occurred_at: DateTime<Utc>,
}

impl EventRow {
    fn into_event(self) -> Result<FriendshipEvent, sqlx::Error> {
        let kind = FriendshipEventKind::parse(&self.event_type)
            .ok_or_else(|| sqlx::Error::Decode(format!("event type {}", self.event_type).into()))?;
        Ok(FriendshipEvent {
            kind,
            actor: self.actor,
            occurred_at: self.occurred_at,
        })
    }
}

/// The events of `stream`, in order.
pub async fn load(tx: &mut Tx, stream: &FriendshipStream) -> Result<Vec<FriendshipEvent>, sqlx::Error> {
    let rows: Vec<EventRow> = with_conn!(tx.conn(), conn => sqlx::query_as(
        "SELECT event_type, actor, occurred_at FROM friendship_events WHERE stream = $1 ORDER BY version",
    )
    .bind(stream.key())
    .fetch_all(conn)
    .await)?;
    rows.into_iter().map(EventRow::into_event).collect()
}

/// Append `event` as version `version` of `stream`, and bring the projections up to date in
/// the same transaction.
pub async fn append(
    tx: &mut Tx,
    stream: &FriendshipStream,
    version: i64,
    event: &FriendshipEvent,
) -> Result<(), AppendError> {
    let appended = with_conn!(tx.conn(), conn => sqlx::query(
        "INSERT INTO friendship_events (stream, version, event_type, actor, occurred_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(stream.key())
    .bind(version)
    .bind(event.kind.as_str())
    .bind(event.actor)
    .bind(event.occurred_at)
    .execute(conn)
    .await
    .map(drop));
    match appended {
        Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
            return Err(AppendError::Conflict);
        }
        other => other?,
    }
    project(tx, stream, event).await?;
    Ok(())
}

/// Apply one event to the projections. The live path and `rebuild` both come through here, so
/// they cannot disagree.
async fn project(tx: &mut Tx, stream: &FriendshipStream, event: &FriendshipEvent) -> Result<(), sqlx::Error> {
    let actor = event.actor;
    let other = stream.other(actor);
    clear_pair(tx, actor, other).await?;
    match event.kind {
        FriendshipEventKind::Requested => {
            with_conn!(tx.conn(), conn => sqlx::query(
                "INSERT INTO friend_requests (requester, addressee, requested_at) VALUES ($1, $2, $3)",
            )
            .bind(actor)
            .bind(other)
            .bind(event.occurred_at)
            .execute(conn)
            .await
            .map(drop))?;
        }
        FriendshipEventKind::Accepted => {
            with_conn!(tx.conn(), conn => sqlx::query(
                "INSERT INTO friendships (user_id, friend_id, since) VALUES ($1, $2, $3), ($2, $1, $3)",
            )
            .bind(actor)
            .bind(other)
            .bind(event.occurred_at)
            .execute(conn)
            .await
            .map(drop))?;
        }
        FriendshipEventKind::Removed => {}
    }
    Ok(())
}

async fn clear_pair(tx: &mut Tx, a: Uuid, b: Uuid) -> Result<(), sqlx::Error> {
    with_conn!(tx.conn(), conn => sqlx::query(
        "DELETE FROM friend_requests WHERE (requester = $1 AND addressee = $2) OR (requester = $2 AND addressee = $1)",
    )
    .bind(a)
    .bind(b)
    .execute(conn)
    .await
    .map(drop))?;
    with_conn!(tx.conn(), conn => sqlx::query(
        "DELETE FROM friendships WHERE (user_id = $1 AND friend_id = $2) OR (user_id = $2 AND friend_id = $1)",
    )
    .bind(a)
    .bind(b)
    .execute(conn)
    .await
    .map(drop))
}

/// Drop the projections and replay the whole log into them; how many events were replayed.
pub async fn rebuild(tx: &mut Tx) -> Result<usize, sqlx::Error> {
    with_conn!(tx.conn(), conn => sqlx::query("DELETE FROM friend_requests").execute(conn).await.map(drop))?;
    with_conn!(tx.conn(), conn => sqlx::query("DELETE FROM friendships").execute(conn).await.map(drop))?;
    let rows: Vec<(String, String, Uuid, DateTime<Utc>)> = with_conn!(tx.conn(), conn => sqlx::query_as(
        "SELECT stream, event_type, actor, occurred_at FROM friendship_events ORDER BY stream, version",
    )
    .fetch_all(conn)
    .await)?;
    let replayed = rows.len();
    for (key, event_type, actor, occurred_at) in rows {
        let stream = FriendshipStream::parse(&key)
            .ok_or_else(|| sqlx::Error::Decode(format!("stream {key}").into()))?;
        let event = EventRow {
            event_type,
            actor,
            occurred_at,
        }
        .into_event()?;
        project(tx, &stream, &event).await?;
    }
    Ok(replayed)
}

/// Erase a member who deleted their account (or whose unverified account a newer signup
/// replaced): their projections, their name and interests,
/// and their part in the log, where each of their streams is rewritten as a tombstone: their
/// id becomes a fresh random one (per stream, so the rewritten streams cannot be linked), and
/// a `removed` by it closes a stream still open, so replaying the log projects nothing for
/// the pair. Versions and the other member's events stay as they were. Their id is kept in
/// `erased_members`, so that a late event does not bring them back. How many streams were
/// rewritten.
pub async fn erase_member(tx: &mut Tx, user: Uuid) -> Result<usize, sqlx::Error> {
    // A hyphenated UUID holds no LIKE wildcard.
    let keys: Vec<(String,)> = with_conn!(tx.conn(), conn => sqlx::query_as(
        "SELECT DISTINCT stream FROM friendship_events WHERE stream LIKE $1",
    )
    .bind(format!("%{}%", user.hyphenated()))
    .fetch_all(conn)
    .await)?;
    for (key,) in &keys {
        let stream = FriendshipStream::parse(key)
            .ok_or_else(|| sqlx::Error::Decode(format!("stream {key}").into()))?;
        let stand_in = Uuid::new_v4();
        let tombstone = FriendshipStream::of(stand_in, stream.other(user));
        with_conn!(tx.conn(), conn => sqlx::query(
            "UPDATE friendship_events SET stream = $1, actor = CASE WHEN actor = $2 THEN $3 ELSE actor END
             WHERE stream = $4",
        )
        .bind(tombstone.key())
        .bind(user)
        .bind(stand_in)
        .bind(key)
        .execute(conn)
        .await
        .map(drop))?;
        let events = load(tx, &tombstone).await?;
        if events
            .last()
            .is_some_and(|last| last.kind != FriendshipEventKind::Removed)
        {
            let version = i64::try_from(events.len()).map_err(|error| sqlx::Error::Decode(error.into()))? + 1;
            let closing = FriendshipEvent {
                kind: FriendshipEventKind::Removed,
                actor: stand_in,
                occurred_at: Utc::now(),
            };
            append(tx, &tombstone, version, &closing)
                .await
                .map_err(|error| match error {
                    AppendError::Database(error) => error,
                    // The stream's name is new: no other writer can know it.
                    AppendError::Conflict => {
                        sqlx::Error::Protocol("a tombstone stream changed meanwhile".into())
                    }
                })?;
        }
    }
    for statement in [
        "DELETE FROM friend_requests WHERE requester = $1 OR addressee = $1",
        "DELETE FROM friendships WHERE user_id = $1 OR friend_id = $1",
        "DELETE FROM member_interests WHERE user_id = $1",
        "DELETE FROM members WHERE user_id = $1",
        "INSERT INTO erased_members (user_id) VALUES ($1) ON CONFLICT DO NOTHING",
    ] {
        with_conn!(tx.conn(), conn => sqlx::query(statement).bind(user).execute(conn).await.map(drop))?;
    }
    Ok(keys.len())
}

/// A user as friends knows them.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Member {
    /// Their id.
    pub user_id: Uuid,
    /// Their display name.
    pub display_name: String,
    /// Their interests.
    pub interests: Json<Vec<String>>,
    /// Whether their email is verified.
    pub verified: bool,
}

/// Whether `user` is known.
pub async fn is_member(tx: &mut Tx, user: Uuid) -> Result<bool, sqlx::Error> {
    let found: Option<(Uuid,)> = with_conn!(tx.conn(), conn => sqlx::query_as(
        "SELECT user_id FROM members WHERE user_id = $1",
    )
    .bind(user)
    .fetch_optional(conn)
    .await)?;
    Ok(found.is_some())
}

/// Record what a user's profile says now. `verified` only ever turns on: a late, older event
/// cannot un-verify anyone, nor bring back an erased member.
pub async fn upsert_member(
    tx: &mut Tx,
    user: Uuid,
    display_name: &str,
    interests: &[String],
    verified: bool,
) -> Result<(), sqlx::Error> {
    with_conn!(tx.conn(), conn => sqlx::query(
        "INSERT INTO members (user_id, display_name, interests, verified)
         SELECT $1, $2, $3, $4 WHERE NOT EXISTS (SELECT 1 FROM erased_members WHERE user_id = $1)
         ON CONFLICT (user_id) DO UPDATE SET display_name = excluded.display_name,
             interests = excluded.interests, verified = members.verified OR excluded.verified",
    )
    .bind(user)
    .bind(display_name)
    .bind(Json(interests))
    .bind(verified)
    .execute(conn)
    .await
    .map(drop))?;
    index_interests(tx, user).await
}

/// Mark a user verified (known or not yet: the signup event may come later), unless erased.
pub async fn mark_verified(tx: &mut Tx, user: Uuid) -> Result<(), sqlx::Error> {
    with_conn!(tx.conn(), conn => sqlx::query(
        "INSERT INTO members (user_id, display_name, interests, verified)
         SELECT $1, '', '[]', TRUE WHERE NOT EXISTS (SELECT 1 FROM erased_members WHERE user_id = $1)
         ON CONFLICT (user_id) DO UPDATE SET verified = TRUE",
    )
    .bind(user)
    .execute(conn)
    .await
    .map(drop))?;
    index_interests(tx, user).await
}

/// Make `member_interests` agree with the member's row: each interest they list, while they are
/// verified (only verified members are suggested).
async fn index_interests(tx: &mut Tx, user: Uuid) -> Result<(), sqlx::Error> {
    with_conn!(tx.conn(), conn => sqlx::query("DELETE FROM member_interests WHERE user_id = $1")
        .bind(user)
        .execute(conn)
        .await
        .map(drop))?;
    let listed: Option<(String, Json<Vec<String>>)> = with_conn!(tx.conn(), conn => sqlx::query_as(
        "SELECT display_name, interests FROM members WHERE user_id = $1 AND verified",
    )
    .bind(user)
    .fetch_optional(conn)
    .await)?;
    let Some((display_name, Json(interests))) = listed else {
        return Ok(());
    };
    for interest in interests {
        with_conn!(tx.conn(), conn => sqlx::query(
            "INSERT INTO member_interests (interest, display_name, user_id) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(&interest)
        .bind(&display_name)
        .bind(user)
        .execute(conn)
        .await
        .map(drop))?;
    }
    Ok(())
}

/// A friend, or a request, with the other user's name.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Relation {
    /// The other user.
    pub id: Uuid,
    /// Their display name.
    pub display_name: String,
    /// Since when (friends) or when asked (requests).
    pub since: DateTime<Utc>,
}

/// Whether the page's cursor, if any, names a row: `exists` finds it by `user` ($1) and the
/// cursor ($2).
async fn cursor_is_known(
    db: &Db,
    exists: &'static str,
    user: Uuid,
    after: Option<Uuid>,
) -> Result<bool, sqlx::Error> {
    let Some(after) = after else {
        return Ok(true);
    };
    let known: Option<i64> = with_pool!(db, pool => sqlx::query_scalar(exists)
        .bind(user)
        .bind(after)
        .fetch_optional(pool)
        .await)?;
    Ok(known.is_some())
}

/// A page of the friends of `user`, oldest friendship first; `None` when `page.after` names
/// none of them.
pub async fn friends_of(db: &Db, user: Uuid, page: Page) -> Result<Option<Vec<Relation>>, sqlx::Error> {
    if !cursor_is_known(
        db,
        "SELECT CAST(1 AS BIGINT) FROM friendships WHERE user_id = $1 AND friend_id = $2",
        user,
        page.after,
    )
    .await?
    {
        return Ok(None);
    }
    // Rows after the cursor's (since, friend_id), compared with the stored values themselves.
    with_pool!(db, pool => sqlx::query_as(
        "SELECT f.friend_id AS id, COALESCE(m.display_name, '') AS display_name, f.since AS since
         FROM friendships f LEFT JOIN members m ON m.user_id = f.friend_id
         WHERE f.user_id = $1
           AND ($2 IS NULL OR (f.since, f.friend_id) >
                (SELECT c.since, c.friend_id FROM friendships c WHERE c.user_id = $1 AND c.friend_id = $2))
         ORDER BY f.since, f.friend_id LIMIT $3",
    )
    .bind(user)
    .bind(page.after)
    .bind(page.sql_limit())
    .fetch_all(pool)
    .await)
    .map(Some)
}

/// A page of the requests waiting for `user` to answer, oldest first; `None` when
/// `page.after` names none of them.
pub async fn requests_to(db: &Db, user: Uuid, page: Page) -> Result<Option<Vec<Relation>>, sqlx::Error> {
    if !cursor_is_known(
        db,
        "SELECT CAST(1 AS BIGINT) FROM friend_requests WHERE addressee = $1 AND requester = $2",
        user,
        page.after,
    )
    .await?
    {
        return Ok(None);
    }
    with_pool!(db, pool => sqlx::query_as(
        "SELECT r.requester AS id, COALESCE(m.display_name, '') AS display_name, r.requested_at AS since
         FROM friend_requests r LEFT JOIN members m ON m.user_id = r.requester
         WHERE r.addressee = $1
           AND ($2 IS NULL OR (r.requested_at, r.requester) >
                (SELECT c.requested_at, c.requester FROM friend_requests c
                 WHERE c.addressee = $1 AND c.requester = $2))
         ORDER BY r.requested_at, r.requester LIMIT $3",
    )
    .bind(user)
    .bind(page.after)
    .bind(page.sql_limit())
    .fetch_all(pool)
    .await)
    .map(Some)
}

/// A possible friend: a verified user with no friendship or request with `user` yet, and how
/// many friends they have in common.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Candidate {
    /// Who.
    #[sqlx(flatten)]
    pub member: Member,
    /// Friends in common.
    pub mutual_friends: i64,
}

/// The conditions that make member `m` a candidate for `$1`: verified, someone else, and no
/// friendship or request either way. Each is an index lookup.
macro_rules! is_candidate {
    () => {
        " m.verified AND m.user_id <> $1
          AND NOT EXISTS (SELECT 1 FROM friendships f WHERE f.user_id = $1 AND f.friend_id = m.user_id)
          AND NOT EXISTS (SELECT 1 FROM friend_requests r
                          WHERE (r.requester = $1 AND r.addressee = m.user_id)
                             OR (r.requester = m.user_id AND r.addressee = $1)) "
    };
}

/// The candidates who are friends of `user`'s friends, most friends in common first, at most
/// `limit`: the work grows with the friends' friends, not with the number of members.
pub async fn friends_of_friends(db: &Db, user: Uuid, limit: i64) -> Result<Vec<Candidate>, sqlx::Error> {
    with_pool!(db, pool => sqlx::query_as(concat!(
        "SELECT m.user_id, m.display_name, m.interests, m.verified, fof.mutual_friends
         FROM (SELECT theirs.friend_id AS user_id, COUNT(*) AS mutual_friends
               FROM friendships mine JOIN friendships theirs ON theirs.user_id = mine.friend_id
               WHERE mine.user_id = $1
               GROUP BY theirs.friend_id) fof
         JOIN members m ON m.user_id = fof.user_id
         WHERE",
        is_candidate!(),
        "ORDER BY fof.mutual_friends DESC, m.display_name, m.user_id LIMIT $2",
    ))
    .bind(user)
    .bind(limit)
    .fetch_all(pool)
    .await)
}

/// The first `limit` candidates, by name, who list `interest`; friends in common are not
/// counted here (0).
pub async fn sharing_interest(
    db: &Db,
    user: Uuid,
    interest: &str,
    limit: i64,
) -> Result<Vec<Candidate>, sqlx::Error> {
    with_pool!(db, pool => sqlx::query_as(concat!(
        "SELECT m.user_id, m.display_name, m.interests, m.verified, CAST(0 AS BIGINT) AS mutual_friends
         FROM member_interests listed JOIN members m ON m.user_id = listed.user_id
         WHERE listed.interest = $2 AND",
        is_candidate!(),
        "ORDER BY listed.display_name, listed.user_id LIMIT $3",
    ))
    .bind(user)
    .bind(interest)
    .bind(limit)
    .fetch_all(pool)
    .await)
}

/// The first `limit` candidates by name; friends in common are not counted here (0).
pub async fn first_by_name(db: &Db, user: Uuid, limit: i64) -> Result<Vec<Candidate>, sqlx::Error> {
    with_pool!(db, pool => sqlx::query_as(concat!(
        "SELECT m.user_id, m.display_name, m.interests, m.verified, CAST(0 AS BIGINT) AS mutual_friends
         FROM members m
         WHERE",
        is_candidate!(),
        "ORDER BY m.display_name, m.user_id LIMIT $2",
    ))
    .bind(user)
    .bind(limit)
    .fetch_all(pool)
    .await)
}

/// The member `user`, if known.
pub async fn member(db: &Db, user: Uuid) -> Result<Option<Member>, sqlx::Error> {
    with_pool!(db, pool => sqlx::query_as(
        "SELECT user_id, display_name, interests, verified FROM members WHERE user_id = $1",
    )
    .bind(user)
    .fetch_optional(pool)
    .await)
}
