//! The signup journey through the gateway's public API, with every service a real process under
//! `dozen up`: signup → exactly one mail →
//! verify → login → profile verified → two users with shared interests see each other in
//! suggestions → request and accept → each lists the other. Also: the same Idempotency-Key
//! twice makes one account, and 20 concurrent signups with one email make one account. On the
//! embedded defaults, and again on Postgres + NATS JetStream, and on Postgres + SNS/SQS (an
//! emulator).

use dozen_tests::database::DatabasePrefix;
use dozen_tests::identity;
use dozen_tests::platform::{Platform, PostgresAndNats};
use dozen_tests::process::run_to_exit;
use dozen_tests::public_api::{PublicApi, subject_of};
use dozen_tests::{PATIENCE, eventually};
use serde_json::{Value, json};

/// Where the friends service keeps its database under `dozen up`.
enum FriendsDatabase<'a> {
    /// `friends.db` in the platform's data folder.
    Embedded,
    /// `<prefix>_friends` on the Postgres server.
    Postgres(&'a DatabasePrefix),
}

async fn the_signup_journey(extra_env: &[(&str, &str)], friends_database: FriendsDatabase<'_>) {
    let platform = Platform::start(extra_env).await;
    let journey = PublicApi::of(&platform);

    // Ann signs up twice with one key (a retry), Bob once.
    for _ in 0..2 {
        assert_eq!(
            journey
                .sign_up("ann-1", "ann@example.com", "Ann", &["chess", "go"])
                .await
                .status(),
            202
        );
    }
    let accepted = journey
        .sign_up("bob-1", "Bob@Example.com", "Bob", &["Chess", "sailing"])
        .await;
    assert_eq!(accepted.status(), 202);
    assert_eq!(
        accepted.json::<Value>().await.expect("JSON"),
        json!({ "status": "pending_verification" })
    );

    let ann = journey.verify_and_log_in("ann@example.com").await;
    let bob = journey.verify_and_log_in("bob@example.com").await;
    let (ann_id, bob_id) = (subject_of(&ann), subject_of(&bob));

    let me: Value = eventually(PATIENCE, "Ann's profile is verified", || async {
        let answer = journey.as_user(&ann, reqwest::Method::GET, "/api/me").await;
        let me: Value = answer.json().await.ok()?;
        (me["profile"]["verified"] == true).then_some(me)
    })
    .await;
    assert_eq!(me["profile"]["email"], "ann@example.com");
    assert_eq!(me["profile"]["id"], ann_id.as_str());
    assert_eq!(me["missing"], json!([]));

    let suggestion = eventually(PATIENCE, "Ann is suggested Bob", || async {
        let answer = journey
            .as_user(&ann, reqwest::Method::GET, "/api/suggestions")
            .await;
        let suggestions: Vec<Value> = answer.json().await.ok()?;
        suggestions.into_iter().find(|s| s["id"] == bob_id.as_str())
    })
    .await;
    assert_eq!(suggestion["shared_interests"], json!(["chess"]));
    assert_eq!(suggestion["display_name"], "Bob");

    let asked = journey
        .as_user(&ann, reqwest::Method::POST, &format!("/api/friends/{bob_id}"))
        .await;
    assert_eq!(asked.status(), 200);
    assert_eq!(asked.json::<Value>().await.expect("JSON")["status"], "requested");
    let accepted = journey
        .as_user(
            &bob,
            reqwest::Method::POST,
            &format!("/api/friends/{ann_id}/accept"),
        )
        .await;
    assert_eq!(accepted.status(), 200);
    for (token, friend) in [(&ann, &bob_id), (&bob, &ann_id)] {
        let friends: Vec<Value> = journey
            .as_user(token, reqwest::Method::GET, "/api/friends")
            .await
            .json()
            .await
            .expect("friends");
        assert_eq!(friends.len(), 1);
        assert_eq!(friends[0]["id"], friend.as_str());
    }

    // A profile change reaches friends through user.profile_updated.
    let renamed = journey
        .client
        .patch(platform.url("gateway", "/api/me"))
        .bearer_auth(&ann)
        .json(&json!({ "display_name": "Ann Lee" }))
        .send()
        .await
        .expect("PATCH /me");
    assert_eq!(renamed.status(), 200);
    assert_eq!(
        renamed.json::<Value>().await.expect("profile")["display_name"],
        "Ann Lee"
    );
    eventually(PATIENCE, "Bob's friend list shows Ann's new name", || async {
        let friends: Vec<Value> = journey
            .as_user(&bob, reqwest::Method::GET, "/api/friends")
            .await
            .json()
            .await
            .ok()?;
        (friends.first()?["display_name"] == "Ann Lee").then_some(())
    })
    .await;

    // Internal routes are not reachable through the gateway.
    for path in ["/api/profiles", "/profiles", "/api/credentials/x", "/mailbox"] {
        let answer = journey
            .client
            .get(platform.url("gateway", path))
            .send()
            .await
            .expect("gateway");
        assert_eq!(answer.status(), 404, "{path} is not public");
    }

    // Exactly one mail per signup, whatever was retried or redelivered.
    assert_eq!(journey.mails_to("ann@example.com").await.len(), 1);
    assert_eq!(journey.mails_to("bob@example.com").await.len(), 1);

    // Twenty concurrent signups with one new email: one account, one working verification link.
    // Like a real client, each retries with its own key while the platform answers 5xx (on
    // two loaded cores, 20 signups at once may outlast the gateway's upstream timeout).
    let attempts = (0..20).map(|i| {
        let journey = &journey;
        async move {
            let key = format!("cem-{i}");
            let mut status = reqwest::StatusCode::INTERNAL_SERVER_ERROR;
            for _ in 0..5 {
                status = journey
                    .sign_up(&key, "cem@example.com", "Cem", &["go"])
                    .await
                    .status();
                if !status.is_server_error() {
                    break;
                }
            }
            status
        }
    });
    for status in futures_util::future::join_all(attempts).await {
        assert_eq!(status, 202);
    }
    // One account is left: each attempt that found the address held by an unverified
    // account replaced it (the pre-hijacking defence) or, after a verification, ended as a
    // conflict. Several links may have gone out; only the remaining account's works.
    let found = journey
        .client
        .get(platform.url("users", "/profiles"))
        .header(
            identity::HEADER,
            platform.service_authorization("signup", "users"),
        )
        .query(&[("email", "cem@example.com")])
        .send()
        .await
        .expect("find Cem");
    assert_eq!(found.status(), 200, "exactly one profile exists for the address");
    let holder: Value = found.json().await.expect("a profile");
    // Ann's, Bob's and the twenty.
    eventually(PATIENCE, "every signup's event handled", || async {
        platform.signups_settled(22).await.then_some(())
    })
    .await;
    journey.verify_the_one_working_link("cem@example.com").await;
    let cem = eventually(PATIENCE, "Cem logs in", || async {
        let answer = journey.login("cem@example.com").await;
        if answer.status() != 200 {
            return None;
        }
        let session: Value = answer.json().await.ok()?;
        session["access_token"].as_str().map(str::to_owned)
    })
    .await;
    assert_eq!(
        holder["id"],
        subject_of(&cem).as_str(),
        "the account left is Cem's"
    );

    // The friends projections rebuilt from the log equal the live ones.
    let cem_id = subject_of(&cem);
    let asked = journey
        .as_user(&cem, reqwest::Method::POST, &format!("/api/friends/{ann_id}"))
        .await;
    assert_eq!(asked.status(), 200);
    let removed = journey
        .as_user(&bob, reqwest::Method::DELETE, &format!("/api/friends/{cem_id}"))
        .await;
    assert_eq!(removed.status(), 204, "removing a stranger is a no-op");
    let views = || async {
        let mut views = Vec::new();
        for token in [&ann, &bob, &cem] {
            for path in ["/api/friends", "/api/friends/requests", "/api/suggestions"] {
                let answer = journey.as_user(token, reqwest::Method::GET, path).await;
                views.push(answer.json::<Value>().await.expect("JSON"));
            }
        }
        views
    };
    let live = views().await;
    assert_eq!(live[4], json!([]), "Bob has no pending requests");
    assert_eq!(live[1][0]["id"], cem_id.as_str(), "Ann sees Cem's request");
    let database_url = match friends_database {
        FriendsDatabase::Embedded => format!("sqlite://{}/friends.db", platform.data_dir().display()),
        FriendsDatabase::Postgres(prefix) => prefix.url_of("friends"),
    };
    let rebuilt = run_to_exit("dozen-friends", &["rebuild"], &[("DATABASE_URL", &database_url)]).await;
    assert!(rebuilt.status.success(), "{rebuilt:?}");
    assert!(
        rebuilt.stdout.contains("\"replayed\":3"),
        "request, accept, request: {}",
        rebuilt.stdout
    );
    assert_eq!(views().await, live);

    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_signup_journey_on_the_embedded_defaults() {
    the_signup_journey(&[], FriendsDatabase::Embedded).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_signup_journey_on_postgres_and_nats() {
    let backing = PostgresAndNats::new("journey");
    the_signup_journey(&backing.env(), FriendsDatabase::Postgres(&backing.databases)).await;
}

/// As on ECS: the stack made every topic, queue and subscription beforehand, and each service
/// only looks its own up (`BUS_PROVISION=false`).
#[cfg(feature = "sns-sqs")]
#[tokio::test(flavor = "multi_thread")]
async fn the_signup_journey_on_sns_sqs_provisioned_beforehand_and_only_looked_up() {
    let databases = DatabasePrefix::new("lookup");
    let topics_and_queues = dozen_tests::sns_sqs::SnsSqsNamespace::new("lookup").await;
    topics_and_queues.provision().await;
    the_signup_journey(
        &[
            ("DATABASE_URL", &databases.url),
            ("BUS_URL", &topics_and_queues.bus_url),
            ("BUS_NAMESPACE", &topics_and_queues.namespace),
            ("BUS_PROVISION", "false"),
            ("DEV_MAILBOX_ALLOW_PRODUCTION_BACKENDS", "true"),
        ],
        FriendsDatabase::Postgres(&databases),
    )
    .await;
}

#[cfg(feature = "sns-sqs")]
#[tokio::test(flavor = "multi_thread")]
async fn the_signup_journey_on_postgres_and_sns_sqs() {
    let databases = DatabasePrefix::new("journey");
    let topics_and_queues = dozen_tests::sns_sqs::SnsSqsNamespace::new("journey").await;
    the_signup_journey(
        &[
            ("DATABASE_URL", &databases.url),
            ("BUS_URL", &topics_and_queues.bus_url),
            ("BUS_NAMESPACE", &topics_and_queues.namespace),
            ("DEV_MAILBOX_ALLOW_PRODUCTION_BACKENDS", "true"),
        ],
        FriendsDatabase::Postgres(&databases),
    )
    .await;
}
