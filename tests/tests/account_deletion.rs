//! Deleting an account through the gateway's public API, every service a real process under
//! `dozen up`: a user with a friend and pending requests both ways deletes their account; a
//! wrong password or no token deletes nothing, and a replay changes nothing; afterwards login,
//! refresh and every write with the old token fail, the friends no longer see them, and no
//! service's database (every text and binary column of every table) holds their id or email
//! but where the design keeps it: friends' `erased_members` (the id alone, so late events do
//! not bring them back) and passwords' own `user.deleted` in its outbox. The email then signs
//! up again. On the embedded defaults and on Postgres + NATS JetStream.

use std::path::Path;

use dozen_tests::platform::{Platform, PostgresAndNats};
use dozen_tests::public_api::{PASSWORD, PublicApi, subject_of};
use dozen_tests::{PATIENCE, eventually};
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::{Connection as _, PgConnection, SqliteConnection};

/// Where the design keeps the id after a deletion, as `<database>/<table>.<column>`: the
/// service name ends the database's name (`friends.db`, `<prefix>_friends`).
const KEPT: &[&str] = &["friends/erased_members.user_id"];

async fn delete_account(api: &PublicApi, token: Option<&str>, password: &str) -> reqwest::Response {
    let request = api
        .client
        .delete(api.url("/api/me"))
        .json(&json!({ "password": password }));
    let request = match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    };
    request.send().await.expect("DELETE /api/me")
}

async fn problem_of(answer: reqwest::Response, status: u16, what: &str) -> Value {
    assert_eq!(answer.status().as_u16(), status, "{what}");
    assert_eq!(
        answer.headers()["content-type"],
        "application/problem+json",
        "{what}"
    );
    answer.json().await.expect("a problem")
}

/// The ids in a list of people (`/api/friends`, `/api/friends/requests`, `/api/suggestions`).
async fn ids_in(api: &PublicApi, token: &str, path: &str) -> Vec<String> {
    let answer = api.as_user(token, Method::GET, path).await;
    assert_eq!(answer.status(), 200, "GET {path}");
    let list: Value = answer.json().await.expect("JSON");
    list.as_array()
        .unwrap_or_else(|| panic!("{path} is a list: {list}"))
        .iter()
        .filter_map(|person| person["id"].as_str().map(str::to_owned))
        .collect()
}

/// Whether anything `token`'s owner sees names `id`: their friends, requests, suggestions,
/// `/api/me`.
async fn sees(api: &PublicApi, token: &str, id: &str) -> bool {
    for path in ["/api/friends", "/api/friends/requests", "/api/suggestions"] {
        if ids_in(api, token, path).await.iter().any(|seen| seen == id) {
            return true;
        }
    }
    let me = api.as_user(token, Method::GET, "/api/me").await;
    assert_eq!(me.status(), 200);
    me.text().await.expect("a body").contains(id)
}

async fn post_as(api: &PublicApi, token: &str, path: &str) -> u16 {
    api.as_user(token, Method::POST, path).await.status().as_u16()
}

/// Where `needles` occur in one database: `<table>.<column>` for every column of every table
/// holding one of them (as text, or in its bytes: a UUID stored as a blob), ignoring outbox
/// rows of `user.deleted`, which name the user by design.
trait Searched {
    async fn tables_and_columns(&mut self) -> Vec<(String, String)>;
    async fn count(&mut self, table: &str, column: &str, needles: &[String]) -> i64;
}

impl Searched for SqliteConnection {
    async fn tables_and_columns(&mut self) -> Vec<(String, String)> {
        sqlx::query_as(
            "SELECT m.name, p.name FROM sqlite_master m, pragma_table_info(m.name) p
             WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'",
        )
        .fetch_all(self)
        .await
        .expect("list columns")
    }

    async fn count(&mut self, table: &str, column: &str, needles: &[String]) -> i64 {
        let mut total = 0;
        for needle in needles {
            let query = format!(
                r#"SELECT COUNT(*) FROM "{table}" WHERE (instr(lower(CAST("{column}" AS TEXT)), $1) > 0
                   OR instr(lower(hex("{column}")), $1) > 0){}"#,
                outbox_filter(table)
            );
            let found: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(query))
                .bind(needle)
                .fetch_one(&mut *self)
                .await
                .expect("search a column");
            total += found;
        }
        total
    }
}

impl Searched for PgConnection {
    async fn tables_and_columns(&mut self) -> Vec<(String, String)> {
        sqlx::query_as(
            "SELECT table_name::text, column_name::text FROM information_schema.columns
             WHERE table_schema = 'public'",
        )
        .fetch_all(self)
        .await
        .expect("list columns")
    }

    async fn count(&mut self, table: &str, column: &str, needles: &[String]) -> i64 {
        let mut total = 0;
        for needle in needles {
            // `::text` of a bytea is its hex (`\x…`), of a UUID its hyphenated form.
            let query = format!(
                r#"SELECT COUNT(*) FROM "{table}" WHERE strpos(lower("{column}"::text), $1) > 0{}"#,
                outbox_filter(table)
            );
            let found: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(query))
                .bind(needle)
                .fetch_one(&mut *self)
                .await
                .expect("search a column");
            total += found;
        }
        total
    }
}

fn outbox_filter(table: &str) -> &'static str {
    if table == "outbox" {
        " AND topic <> 'user.deleted'"
    } else {
        ""
    }
}

async fn places_in(connection: &mut impl Searched, database: &str, needles: &[String]) -> Vec<String> {
    let mut places = Vec::new();
    for (table, column) in connection.tables_and_columns().await {
        if connection.count(&table, &column, needles).await > 0 {
            places.push(format!("{database}/{table}.{column}"));
        }
    }
    places
}

/// Every place in the platform's service databases (SQLite files in its data folder, or its
/// Postgres databases) that holds one of `needles`, but those [`KEPT`] by design.
async fn places_holding(
    platform: &Platform,
    backing: Option<&PostgresAndNats>,
    needles: &[String],
) -> Vec<String> {
    let mut places = Vec::new();
    match backing {
        None => {
            for service in ["signup", "users", "passwords", "verification", "friends"] {
                let file = platform.data_dir().join(format!("{service}.db"));
                assert!(Path::new(&file).exists(), "{} exists", file.display());
                let mut connection =
                    SqliteConnection::connect(&format!("sqlite://{}?mode=ro", file.display()))
                        .await
                        .expect("open a service's SQLite file");
                places.extend(places_in(&mut connection, service, needles).await);
                connection.close().await.ok();
            }
        }
        Some(backing) => {
            for service in ["signup", "users", "passwords", "verification", "friends"] {
                let mut connection = PgConnection::connect(&backing.databases.url_of(service))
                    .await
                    .expect("connect to a service's database");
                places.extend(places_in(&mut connection, service, needles).await);
                connection.close().await.ok();
            }
        }
    }
    places.retain(|place| !KEPT.contains(&place.as_str()));
    places
}

async fn sign_up_verified(api: &PublicApi, key: &str, email: &str, name: &str) -> String {
    let answer = api.sign_up(key, email, name, &["chess", "hiking"]).await;
    assert_eq!(answer.status(), 202, "{email} signs up");
    api.verify_and_log_in(email).await
}

async fn deletion(backing: Option<&PostgresAndNats>) {
    let env: Vec<(&str, &str)> = backing.map(|backing| backing.env().to_vec()).unwrap_or_default();
    let platform = Platform::start(&env).await;
    let api = PublicApi::of(&platform);

    let ann = sign_up_verified(&api, "ann-1", "ann@example.com", "Ann Leaving").await;
    let bob = sign_up_verified(&api, "bob-1", "bob@example.com", "Bob Friend").await;
    let cat = sign_up_verified(&api, "cat-1", "cat@example.com", "Cat Asked").await;
    let dan = sign_up_verified(&api, "dan-1", "dan@example.com", "Dan Asking").await;
    let (ann_id, bob_id, cat_id) = (subject_of(&ann), subject_of(&bob), subject_of(&cat));
    let login: Value = api.login("ann@example.com").await.json().await.expect("JSON");
    let ann_refresh = login["refresh_token"]
        .as_str()
        .expect("a refresh token")
        .to_owned();

    // Ann is Bob's friend, has asked Cat, and is asked by Dan.
    assert_eq!(post_as(&api, &ann, &format!("/api/friends/{bob_id}")).await, 200);
    assert_eq!(
        post_as(&api, &bob, &format!("/api/friends/{ann_id}/accept")).await,
        200
    );
    assert_eq!(post_as(&api, &ann, &format!("/api/friends/{cat_id}")).await, 200);
    assert_eq!(post_as(&api, &dan, &format!("/api/friends/{ann_id}")).await, 200);
    assert!(sees(&api, &bob, &ann_id).await, "Bob sees his friend Ann");
    assert!(sees(&api, &cat, &ann_id).await, "Cat sees Ann's request");

    // A wrong password, no token, an empty body: 4xx problems, and nothing is deleted.
    let wrong = delete_account(&api, Some(&ann), "not the password at all").await;
    let problem = problem_of(wrong, 401, "a wrong password").await;
    assert_eq!(problem["type"], "/problems/wrong-password");
    problem_of(delete_account(&api, None, PASSWORD).await, 401, "no token").await;
    problem_of(
        delete_account(&api, Some("not.a.token"), PASSWORD).await,
        401,
        "a forged token",
    )
    .await;
    let empty = api
        .client
        .delete(api.url("/api/me"))
        .bearer_auth(&ann)
        .send()
        .await
        .expect("DELETE /api/me");
    assert!(empty.status().is_client_error(), "no body: {}", empty.status());
    problem_of(
        delete_account(&api, Some(&ann), "").await,
        422,
        "an empty password",
    )
    .await;
    assert_eq!(api.as_user(&ann, Method::GET, "/api/me").await.status(), 200);
    assert_eq!(
        api.login("ann@example.com").await.status(),
        200,
        "Ann still logs in"
    );
    assert!(sees(&api, &bob, &ann_id).await, "Bob still sees Ann");

    // The deletion, and its replay.
    let deleted = delete_account(&api, Some(&ann), PASSWORD).await;
    assert_eq!(deleted.status(), 202, "the deletion is accepted");
    problem_of(
        delete_account(&api, Some(&ann), PASSWORD).await,
        401,
        "a replayed deletion",
    )
    .await;

    // Every service erases her. (Before anyone tries her email at login: a failed login is
    // counted against the address typed, for LOGIN_FAILURE_WINDOW, whoever owns it.)
    eventually(PATIENCE, "every service to erase Ann", || async {
        let places = places_holding(
            &platform,
            backing,
            &needles(&ann_id, "ann@example.com", "Ann Leaving"),
        )
        .await;
        places.is_empty().then_some(()).or_else(|| {
            eprintln!("Ann is still in {places:?}");
            None
        })
    })
    .await;

    // Nobody can act as Ann any more; her old access token lives on but writes nothing.
    problem_of(api.login("ann@example.com").await, 401, "a login").await;
    let refresh = api
        .client
        .post(api.url("/api/sessions/refresh"))
        .json(&json!({ "refresh_token": ann_refresh }))
        .send()
        .await
        .expect("POST /api/sessions/refresh");
    problem_of(refresh, 401, "a refresh").await;
    let password = api
        .client
        .put(api.url("/api/me/password"))
        .bearer_auth(&ann)
        .json(&json!({ "current_password": PASSWORD, "new_password": "violet tractor hums at midnight" }))
        .send()
        .await
        .expect("PUT /api/me/password");
    problem_of(password, 401, "a password change with the old token").await;
    let profile = api
        .client
        .patch(api.url("/api/me"))
        .bearer_auth(&ann)
        .json(&json!({ "display_name": "Ann Again" }))
        .send()
        .await
        .expect("PATCH /api/me");
    assert!(
        profile.status().is_client_error(),
        "a profile edit: {}",
        profile.status()
    );
    let request = api
        .as_user(&ann, Method::POST, &format!("/api/friends/{cat_id}"))
        .await;
    assert!(
        request.status().is_client_error(),
        "a friend request: {}",
        request.status()
    );
    assert!(
        api.mails_to("ann@example.com").await.is_empty(),
        "her mail is gone from the mailbox"
    );

    // Her friends no longer see her, anywhere.
    for (who, token) in [("Bob", &bob), ("Cat", &cat), ("Dan", &dan)] {
        assert!(!sees(&api, token, &ann_id).await, "{who} no longer sees Ann");
    }
    let bob_me: Value = api
        .as_user(&bob, Method::GET, "/api/me")
        .await
        .json()
        .await
        .expect("JSON");
    assert!(bob_me["missing"].as_array().is_none_or(Vec::is_empty), "{bob_me}");

    // The email is free: it signs up again, as a new user.
    let again = sign_up_verified(&api, "ann-2", "ann@example.com", "Ann Returning").await;
    assert_ne!(subject_of(&again), ann_id);
    assert_eq!(api.as_user(&again, Method::GET, "/api/me").await.status(), 200);

    platform.stop().await;
}

/// What identifies the user in a database: their id (hyphenated, and as the hex of its bytes),
/// their email and their name, lower-cased as every search compares.
fn needles(id: &str, email: &str, name: &str) -> Vec<String> {
    vec![
        id.to_lowercase(),
        id.replace('-', "").to_lowercase(),
        email.to_lowercase(),
        name.to_lowercase(),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn an_account_is_deleted_everywhere_on_the_embedded_defaults() {
    deletion(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_account_is_deleted_everywhere_on_postgres_and_nats() {
    let backing = PostgresAndNats::new("account_deletion");
    deletion(Some(&backing)).await;
}
