//! How suggestions rank and whom they leave out, on a real database of each backend: the
//! bounded slices they read must give the same answer as ranking every member would.

use chrono::Utc;
use dozen_friends::domain::{FriendshipEvent, FriendshipEventKind, FriendshipStream};
use dozen_friends::store;
use dozen_friends::suggestions::{self, Suggestion};
use dozen_kit::db::{DatabaseUrl, Db, Tx};
use dozen_tests::database::{Backend, TestDatabase};
use dozen_tests::on_both_backends;
use uuid::Uuid;

struct Members {
    db: Db,
    _database: TestDatabase,
}

impl Members {
    async fn new(backend: Backend) -> Self {
        let database = TestDatabase::create(backend).await;
        let url = DatabaseUrl::parse(&database.url).expect("database URL");
        let db = Db::connect(&url, 2).await.expect("connect");
        db.migrate(&[&dozen_friends::MIGRATIONS]).await.expect("migrate");
        Self {
            db,
            _database: database,
        }
    }

    /// A member as the users service's events describe them.
    async fn add(&self, name: &str, interests: &[&str], verified: bool) -> Uuid {
        let id = Uuid::new_v4();
        let interests: Vec<String> = interests.iter().map(|&i| i.to_owned()).collect();
        let mut tx = Tx::begin(&self.db).await.expect("begin");
        store::upsert_member(&mut tx, id, name, &interests, false)
            .await
            .expect("signed up");
        if verified {
            store::mark_verified(&mut tx, id).await.expect("verified");
        }
        tx.commit().await.expect("commit");
        id
    }

    async fn append(&self, a: Uuid, b: Uuid, version: i64, kind: FriendshipEventKind, actor: Uuid) {
        let event = FriendshipEvent {
            kind,
            actor,
            occurred_at: Utc::now(),
        };
        let mut tx = Tx::begin(&self.db).await.expect("begin");
        store::append(&mut tx, &FriendshipStream::of(a, b), version, &event)
            .await
            .expect("append");
        tx.commit().await.expect("commit");
    }

    async fn befriend(&self, a: Uuid, b: Uuid) {
        self.append(a, b, 1, FriendshipEventKind::Requested, a).await;
        self.append(a, b, 2, FriendshipEventKind::Accepted, b).await;
    }

    async fn suggestions(&self, user: Uuid) -> Vec<Suggestion> {
        suggestions::for_user(&self.db, user).await.expect("suggestions")
    }
}

fn names(suggestions: &[Suggestion]) -> Vec<&str> {
    suggestions.iter().map(|s| s.display_name.as_str()).collect()
}

/// Friends in common first, then interests in common, then names; nobody already a friend,
/// asked or asking, unverified, or yourself.
async fn ranks_by_friends_then_interests_then_name(backend: Backend) {
    let members = Members::new(backend).await;
    let ann = members.add("Ann", &["chess", "go", "tea"], true).await;
    let bob = members.add("Bob", &[], true).await;
    let cat = members.add("Cat", &[], true).await;
    members.befriend(ann, bob).await;
    members.befriend(ann, cat).await;
    // Zed shares two friends with Ann, Yan one: they lead, whatever their names and interests.
    let zed = members.add("Zed", &[], true).await;
    members.befriend(zed, bob).await;
    members.befriend(zed, cat).await;
    let yan = members.add("Yan", &[], true).await;
    members.befriend(yan, bob).await;
    // Then those sharing interests, most first, then by name.
    members.add("Kim", &["tea"], true).await;
    members.add("Eve", &["go", "chess"], true).await;
    members.add("Dan", &["tea"], true).await;
    // Then everyone else by name.
    members.add("Abe", &["darts"], true).await;
    // Never: unverified, asked by Ann, asking Ann.
    members.add("Amy", &["chess"], false).await;
    let asked = members.add("Ada", &["chess"], true).await;
    members
        .append(ann, asked, 1, FriendshipEventKind::Requested, ann)
        .await;
    let asking = members.add("Al", &["chess"], true).await;
    members
        .append(ann, asking, 1, FriendshipEventKind::Requested, asking)
        .await;

    let found = members.suggestions(ann).await;
    assert_eq!(names(&found), ["Zed", "Yan", "Eve", "Dan", "Kim", "Abe"]);
    assert_eq!(found[0].mutual_friends, 2);
    assert_eq!(found[1].mutual_friends, 1);
    assert_eq!(found[2].shared_interests, ["go", "chess"]);
    assert_eq!(found[5].mutual_friends, 0);
    assert!(found[5].shared_interests.is_empty());
}
on_both_backends!(ranks_by_friends_then_interests_then_name);

/// Someone sharing an interest is found among many more who share nothing and come first by
/// name, and a profile change moves them between interests.
async fn a_shared_interest_outranks_a_crowd_of_earlier_names(backend: Backend) {
    let members = Members::new(backend).await;
    let ann = members.add("Ann", &["chess"], true).await;
    for n in 0..60 {
        members.add(&format!("A{n:02}"), &["darts"], true).await;
    }
    let zoe = members.add("Zoe", &["chess"], true).await;
    let found = members.suggestions(ann).await;
    assert_eq!(found.len(), suggestions::LIMIT);
    assert_eq!(found[0].display_name, "Zoe");
    assert_eq!(found[1].display_name, "A00");

    // Zoe now lists only darts: she falls back among the names.
    let mut tx = Tx::begin(&members.db).await.expect("begin");
    store::upsert_member(&mut tx, zoe, "Zoe", &["darts".to_owned()], true)
        .await
        .expect("profile updated");
    tx.commit().await.expect("commit");
    let found = members.suggestions(ann).await;
    assert_eq!(found[0].display_name, "A00");
    assert!(!names(&found).contains(&"Zoe"));
}
on_both_backends!(a_shared_interest_outranks_a_crowd_of_earlier_names);
