//! `GET /ops/figures` charts what the platform really did: the whole platform under `dozen up`
//! (sampling every second), a user's reads through the gateway show as users' request rate and
//! latency, a poison event as friends' bus backlog and then a dead letter, requests that fail
//! because a service is stopped as the gateway's 5xx share, and the stopped service itself as a
//! gap in its figures until it runs again. The page holds numbers only.

use dozen_tests::platform::{Platform, SERVICES};
use dozen_tests::public_api::PublicApi;
use dozen_tests::{PATIENCE, eventually};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use sqlx::Connection as _;

/// The figures' series named `figure` of `service`.
fn series(figures: &Value, service: &str, figure: &str) -> Vec<Option<f64>> {
    figures["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|entry| entry["name"] == service)
        .unwrap_or_else(|| panic!("{service} in {figures}"))[figure]
        .as_array()
        .unwrap_or_else(|| panic!("{service}.{figure} in {figures}"))
        .iter()
        .map(Value::as_f64)
        .collect()
}

/// The largest value of a series, if it has any.
fn largest(values: &[Option<f64>]) -> Option<f64> {
    values.iter().flatten().copied().reduce(f64::max)
}

async fn figures(api: &PublicApi) -> Value {
    let answer = reqwest::get(api.url("/ops/figures")).await.expect("/ops/figures");
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["content-type"], "application/json");
    answer.json().await.expect("JSON")
}

/// Wait until `check` holds of the figures; they are handed back.
async fn figures_until(api: &PublicApi, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    eventually(PATIENCE, what, || async {
        let figures = figures(api).await;
        check(&figures).then_some(figures)
    })
    .await
}

/// Every leaf of `value` is a number or null: no text (an error, a host) and no address.
fn only_numbers(value: &Value, path: &str) {
    match value {
        Value::Null | Value::Number(_) => {}
        Value::Array(items) => items.iter().for_each(|item| only_numbers(item, path)),
        Value::Object(fields) => {
            for (name, field) in fields {
                if path == "services" && name == "name" {
                    assert!(
                        SERVICES.contains(&field.as_str().unwrap_or_default()),
                        "a service name: {field}"
                    );
                } else {
                    only_numbers(field, name);
                }
            }
        }
        other => panic!("{path} holds {other}: only numbers are public"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_figures_follow_traffic_errors_dead_letters_and_a_stopped_service() {
    let platform = Platform::start(&[
        ("FIGURES_INTERVAL", "1s"),
        ("BUS_MAX_ATTEMPTS", "3"),
        ("BUS_RETRY_BACKOFF", "3s"),
    ])
    .await;
    let api = PublicApi::of(&platform);

    // The shape: every service, in order, its series as long as the times.
    let first = figures(&api).await;
    assert_eq!(first["interval_seconds"], 1);
    let names: Vec<&str> = first["services"]
        .as_array()
        .expect("services")
        .iter()
        .map(|service| service["name"].as_str().expect("a name"))
        .collect();
    assert_eq!(names, SERVICES);

    // Friends refuses the member "Poison" (a trigger an operator could have left in its
    // database): her signup's event is retried, then dead-lettered.
    let friends = format!("sqlite://{}", platform.data_dir().join("friends.db").display());
    let mut connection = sqlx::SqliteConnection::connect(&friends)
        .await
        .expect("friends' database");
    sqlx::query(
        "CREATE TRIGGER poison BEFORE INSERT ON members WHEN NEW.display_name = 'Poison' \
         BEGIN SELECT RAISE(ABORT, 'no member may be called Poison'); END",
    )
    .execute(&mut connection)
    .await
    .expect("the trigger");
    connection.close().await.expect("closed");
    let poisoned = api
        .sign_up("poison", "poison@example.com", "Poison", &["chess"])
        .await;
    assert_eq!(poisoned.status(), 202);

    // Ann reads her profile twenty times.
    assert_eq!(
        api.sign_up("ann", "ann@example.com", "Ann", &["chess"])
            .await
            .status(),
        202
    );
    let token = api.verify_and_log_in("ann@example.com").await;
    for _ in 0..20 {
        let me = api.as_user(&token, reqwest::Method::GET, "/api/me").await;
        assert_eq!(me.status(), 200);
    }
    let traffic = figures_until(
        &api,
        "the reads show as users' and the gateway's traffic",
        |figures| {
            ["gateway", "users"].iter().all(|service| {
                largest(&series(figures, service, "requests_per_second")).is_some_and(|rate| rate > 0.0)
                    && largest(&series(figures, service, "p99_seconds")).is_some_and(|p99| p99 > 0.0)
            })
        },
    )
    .await;
    assert_eq!(
        largest(&series(&traffic, "users", "error_share")),
        Some(0.0),
        "no read failed"
    );
    assert!(
        series(&traffic, "gateway", "bus_backlog")
            .iter()
            .all(Option::is_none),
        "the gateway has no bus: no backlog, not zero"
    );

    figures_until(&api, "the poison event waits in friends' backlog", |figures| {
        largest(&series(figures, "friends", "bus_backlog")).is_some_and(|backlog| backlog >= 1.0)
    })
    .await;
    figures_until(&api, "the poison event is a dead letter of friends", |figures| {
        series(figures, "friends", "dead_letters")
            .last()
            .copied()
            .flatten()
            .is_some_and(|letters| letters == 1.0)
    })
    .await;

    // Users stops (as a process frozen by a fault would): it is a gap in the figures, and
    // profile writes passed on to it fail at the gateway with 5xx.
    let users = Pid::from_raw(platform.pid_of("users"));
    kill(users, Signal::SIGSTOP).expect("SIGSTOP users");
    for name in ["Ann A.", "Ann B."] {
        let write = api
            .client
            .patch(api.url("/api/me"))
            .bearer_auth(&token)
            .json(&json!({ "display_name": name }))
            .send()
            .await
            .expect("the gateway answers");
        assert!(
            write.status().is_server_error(),
            "a write to a stopped service: {}",
            write.status()
        );
    }
    let stopped = figures_until(
        &api,
        "users is a gap and the gateway's failed writes are its 5xx",
        |figures| {
            let users_rate = series(figures, "users", "requests_per_second");
            users_rate.last().is_some_and(Option::is_none)
                && users_rate.iter().rev().take(3).all(Option::is_none)
                && largest(&series(figures, "gateway", "error_share")).is_some_and(|share| share > 0.0)
        },
    )
    .await;
    assert!(
        series(&stopped, "users", "bus_backlog")
            .last()
            .is_some_and(Option::is_none),
        "no figure at all of a service that does not answer"
    );
    only_numbers(&stopped, "");
    let times: Vec<f64> = stopped["times"]
        .as_array()
        .expect("times")
        .iter()
        .map(|at| at.as_f64().expect("seconds"))
        .collect();
    assert!(
        times.windows(2).all(|pair| pair[0] < pair[1]),
        "oldest first: {times:?}"
    );
    assert_eq!(
        times.len(),
        series(&stopped, "users", "p99_seconds").len(),
        "a value (or a gap) per time"
    );

    // Running again, it has figures again.
    kill(users, Signal::SIGCONT).expect("SIGCONT users");
    figures_until(&api, "users has figures again", |figures| {
        series(figures, "users", "requests_per_second")
            .last()
            .is_some_and(Option::is_some)
    })
    .await;
    platform.stop().await;
}
