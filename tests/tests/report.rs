//! The `report` admin process: a day of signups, verifications, logins, a lockout, a
//! friendship and a dead letter, made through the public API, comes out of
//! `dozen-verification report` as exactly those figures, printed and mailed to `REPORT_TO`;
//! on the embedded defaults and on Postgres + NATS. A day with nothing gives zeros, and a peer
//! that does not answer fails the run with one line naming it, nothing mailed.

use dozen_tests::platform::{Platform, PostgresAndNats};
use dozen_tests::process::{Finished, closed_port, run_to_exit};
use dozen_tests::public_api::{PASSWORD, PublicApi, subject_of};
use dozen_tests::{PATIENCE, eventually};
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::Connection as _;

const REPORT_TO: &str = "ops@example.com";

/// Where the services' databases are, and how to put a trigger in friends'.
struct Databases {
    verification: String,
    friends: String,
    postgres: bool,
}

/// `dozen-verification report` with the platform's settings, `args` and `extra` env.
async fn report(
    platform: &Platform,
    databases: &Databases,
    args: &[&str],
    extra: &[(&str, String)],
) -> Finished {
    let keys = platform.keys_dir();
    let mut env = vec![
        ("DATABASE_URL", databases.verification.clone()),
        (
            "SERVICE_SIGNING_KEYS_FILE",
            keys.join("verification.pem").display().to_string(),
        ),
        (
            "SERVICE_KEYS_FILE",
            keys.join("service-keys.json").display().to_string(),
        ),
        ("SIGNUP_URL", platform.url("signup", "")),
        ("USERS_URL", platform.url("users", "")),
        ("PASSWORDS_URL", platform.url("passwords", "")),
        ("FRIENDS_URL", platform.url("friends", "")),
        (
            "MAIL_URL",
            format!("file://{}", platform.data_dir().join("mailbox").display()),
        ),
        ("DEV_MAILBOX_ALLOW_PRODUCTION_BACKENDS", "true".to_owned()),
        ("REPORT_TO", REPORT_TO.to_owned()),
    ];
    for (name, value) in extra {
        env.retain(|(set, _)| set != name);
        env.push((name, value.clone()));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(name, value)| (*name, value.as_str())).collect();
    let mut command = vec!["report"];
    command.extend_from_slice(args);
    run_to_exit("dozen-verification", &command, &env).await
}

/// The one JSON document a run printed (log lines carry a `level`).
fn document(run: &Finished) -> Value {
    assert!(run.status.success(), "{run:?}");
    let documents: Vec<Value> = run
        .stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line.get("level").is_none())
        .collect();
    assert_eq!(documents.len(), 1, "one document: {run:?}");
    documents[0].clone()
}

/// Friends refuses the member "Poison" (a trigger an operator could have left in its
/// database), so her `user.signed_up` ends in friends' dead letters.
async fn poison_friends(databases: &Databases) {
    let statements: &[&str] = if databases.postgres {
        &[
            "CREATE FUNCTION refuse_poison() RETURNS trigger AS $$ BEGIN \
             RAISE EXCEPTION 'no member may be called Poison'; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER poison BEFORE INSERT ON members FOR EACH ROW \
             WHEN (NEW.display_name = 'Poison') EXECUTE FUNCTION refuse_poison()",
        ]
    } else {
        &[
            "CREATE TRIGGER poison BEFORE INSERT ON members WHEN NEW.display_name = 'Poison' \
           BEGIN SELECT RAISE(ABORT, 'no member may be called Poison'); END",
        ]
    };
    for statement in statements {
        let done = if databases.postgres {
            let mut connection = sqlx::PgConnection::connect(&databases.friends)
                .await
                .expect("Postgres");
            sqlx::raw_sql(*statement).execute(&mut connection).await.map(drop)
        } else {
            let mut connection = sqlx::SqliteConnection::connect(&databases.friends)
                .await
                .expect("SQLite");
            sqlx::raw_sql(*statement).execute(&mut connection).await.map(drop)
        };
        done.unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
}

/// A wrong password for `email`, answered `status`.
async fn wrong_login(api: &PublicApi, email: &str, status: u16) {
    let answer = reqwest::Client::new()
        .post(api.url("/api/sessions"))
        .json(&json!({ "email": email, "password": format!("not-{PASSWORD}") }))
        .send()
        .await
        .expect("POST /api/sessions");
    assert_eq!(answer.status(), status, "a wrong password for {email}");
}

async fn a_day_comes_out_as_its_figures(platform: Platform, databases: Databases) {
    let api = PublicApi::of(&platform);
    poison_friends(&databases).await;

    // Four signups; Poison's event dead-letters in friends, Cat never verifies.
    for (key, email, name) in [
        ("ann", "ann@example.com", "Ann"),
        ("bob", "bob@example.com", "Bob"),
        ("cat", "cat@example.com", "Cat"),
        ("poison", "poison@example.com", "Poison"),
    ] {
        assert_eq!(api.sign_up(key, email, name, &["chess"]).await.status(), 202);
    }
    // Two verifications, each followed by a login.
    let ann = api.verify_and_log_in("ann@example.com").await;
    let bob = api.verify_and_log_in("bob@example.com").await;
    // One friendship: Ann asks, Bob accepts (once friends knows both).
    let bob_id = subject_of(&bob);
    eventually(PATIENCE, "Ann's friend request is taken", || async {
        let asked = api
            .as_user(&ann, Method::POST, &format!("/api/friends/{bob_id}"))
            .await;
        asked.status().is_success().then_some(())
    })
    .await;
    let accepted = api
        .as_user(
            &bob,
            Method::POST,
            &format!("/api/friends/{}/accept", subject_of(&ann)),
        )
        .await;
    assert!(accepted.status().is_success(), "{}", accepted.status());
    // One lockout: the second wrong password locks Cat's pair; the third is refused unread.
    wrong_login(&api, "cat@example.com", 401).await;
    wrong_login(&api, "cat@example.com", 401).await;
    wrong_login(&api, "cat@example.com", 429).await;

    let today = chrono::Utc::now().date_naive().to_string();
    let expected = json!({
        "day": today,
        "signups": 4,
        "verifications": 2,
        "logins": 2,
        "lockouts": 1,
        "friendships": 1,
        "dead_letters": { "friends": 1, "passwords": 0, "signup": 0, "users": 0, "verification": 0 },
    });
    // The dead letter comes after its retries.
    let printed = eventually(PATIENCE, "the report has every figure of the day", || async {
        let printed = document(&report(&platform, &databases, &["--day", &today], &[]).await);
        (printed == expected).then_some(printed)
    })
    .await;
    assert_eq!(printed, expected);

    // Each run mailed it to REPORT_TO, readable.
    let mails = api.mails_to(REPORT_TO).await;
    let mail = mails.first().expect("the report was mailed");
    assert_eq!(mail["subject"], format!("dozen report for {today}"));
    let body = mail["body"].as_str().expect("a body");
    for line in [
        "signups accepted",
        "emails verified",
        "lockouts",
        "friendships made",
        "friends",
    ] {
        assert!(body.contains(line), "{line} in {body}");
    }
    assert!(
        body.lines()
            .any(|line| line.starts_with("signups accepted") && line.ends_with(" 4")),
        "{body}"
    );

    // A day with nothing gives zeros.
    let quiet = document(&report(&platform, &databases, &["--day", "2001-02-03"], &[]).await);
    assert_eq!(
        quiet,
        json!({
            "day": "2001-02-03",
            "signups": 0,
            "verifications": 0,
            "logins": 0,
            "lockouts": 0,
            "friendships": 0,
            "dead_letters": { "friends": 0, "passwords": 0, "signup": 0, "users": 0, "verification": 0 },
        })
    );

    // A peer that does not answer: one line naming it, nothing printed or mailed.
    let mailed = api.mails_to(REPORT_TO).await.len();
    let down = format!("http://127.0.0.1:{}", closed_port());
    let failed = report(
        &platform,
        &databases,
        &["--day", &today],
        &[("FRIENDS_URL", down)],
    )
    .await;
    assert!(!failed.status.success(), "{failed:?}");
    assert!(
        failed
            .stdout
            .lines()
            .chain(failed.stderr.lines())
            .any(|line| line.contains("the friends service did not answer (FRIENDS_URL)")),
        "{failed:?}"
    );
    assert!(
        failed.stdout.lines().all(|line| line.contains("\"level\"")),
        "no report printed: {failed:?}"
    );
    assert_eq!(api.mails_to(REPORT_TO).await.len(), mailed, "nothing mailed");
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_day_comes_out_as_its_figures_on_the_embedded_defaults() {
    let platform = Platform::start(&[
        ("BUS_MAX_ATTEMPTS", "2"),
        ("BUS_RETRY_BACKOFF", "50ms"),
        ("LOGIN_MAX_FAILURES_PER_ACCOUNT", "2"),
        ("LOGIN_FIRST_DELAY", "10m"),
    ])
    .await;
    let data = platform.data_dir().to_owned();
    let databases = Databases {
        verification: format!("sqlite://{}", data.join("verification.db").display()),
        friends: format!("sqlite://{}", data.join("friends.db").display()),
        postgres: false,
    };
    a_day_comes_out_as_its_figures(platform, databases).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_day_comes_out_as_its_figures_on_postgres_and_nats() {
    let backing = PostgresAndNats::new("report");
    let mut env = backing.env().to_vec();
    env.extend([
        ("BUS_MAX_ATTEMPTS", "2"),
        ("BUS_RETRY_BACKOFF", "50ms"),
        ("LOGIN_MAX_FAILURES_PER_ACCOUNT", "2"),
        ("LOGIN_FIRST_DELAY", "10m"),
    ]);
    let platform = Platform::start(&env).await;
    let databases = Databases {
        verification: backing.databases.url_of("verification"),
        friends: backing.databases.url_of("friends"),
        postgres: true,
    };
    a_day_comes_out_as_its_figures(platform, databases).await;
}

#[tokio::test]
async fn bad_settings_and_days_are_refused_with_one_line_naming_them() {
    let folder = tempfile::tempdir().expect("a folder");
    let database = format!("sqlite://{}", folder.path().join("verification.db").display());
    let migrated = run_to_exit("dozen-verification", &["migrate"], &[("DATABASE_URL", &database)]).await;
    assert!(migrated.status.success(), "{migrated:?}");
    let help = run_to_exit("dozen-verification", &["report", "--help"], &[]).await;
    assert!(help.stdout.contains("yesterday (UTC) when omitted"), "{help:?}");

    for (args, env, naming) in [
        (vec!["report", "--day", "yesterday"], vec![], "--day"),
        (vec!["report", "--day", "2026-02-30"], vec![], "--day"),
        (vec!["report"], vec![("REPORT_TO", "not an address")], "REPORT_TO"),
        (vec!["report"], vec![("SIGNUP_URL", "ftp://signup")], "SIGNUP_URL"),
    ] {
        let mut env = env;
        env.push(("DATABASE_URL", database.as_str()));
        let refused = run_to_exit("dozen-verification", &args, &env).await;
        assert_eq!(refused.status.code(), Some(2), "{args:?} {env:?}: {refused:?}");
        assert!(refused.stderr.contains(naming), "{naming}: {refused:?}");
    }
    // REPORT_TO without MAIL_URL is refused before any peer is asked.
    let no_mail = run_to_exit(
        "dozen-verification",
        &["report"],
        &[("DATABASE_URL", &database), ("REPORT_TO", REPORT_TO)],
    )
    .await;
    assert!(!no_mail.status.success());
    assert!(no_mail.stdout.contains("MAIL_URL is not set"), "{no_mail:?}");
}
