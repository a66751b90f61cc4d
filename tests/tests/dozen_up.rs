//! `dozen up`: every service as its own process on a port of 0, restarted on its port when it
//! dies, all stopped by one Ctrl-C with nothing left behind — on the embedded defaults and on a
//! Postgres server; a port in use stops it before anything starts; with replicas, killing one
//! instance costs no request.

use dozen_tests::database::DatabasePrefix;
use dozen_tests::platform::{Platform, SERVICES};
use dozen_tests::process::run_to_exit;
use dozen_tests::public_api::PublicApi;
use dozen_tests::{PATIENCE, eventually};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use reqwest::{Method, StatusCode};
use serde_json::Value;

fn is_alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn dozen_up_runs_every_service_restarts_a_killed_one_and_stops_them_all() {
    let platform = Platform::start(&[]).await;
    for (name, port) in &platform.ports {
        assert!(platform.is_ready(*port).await, "{name} is ready");
    }

    let users_port = platform.port("users");
    let killed = platform.pid_of("users");
    kill(Pid::from_raw(killed), Signal::SIGKILL).expect("kill -9 users");
    eventually(PATIENCE, "users is restarted on its port", || async {
        platform.started_count("users") == 2 && platform.is_ready(users_port).await
    })
    .await;
    assert_ne!(platform.pid_of("users"), killed, "a new process serves users");

    let pids = platform.stop().await;
    for pid in pids {
        assert!(!is_alive(pid), "process {pid} outlived dozen up");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dozen_up_says_mail_goes_to_the_dev_mailbox_and_the_gateway_serves_it() {
    let platform = Platform::start(&[]).await;
    let gateway = platform.url("gateway", "");
    let said = platform.up.lines().join("\n");
    assert!(
        said.contains(&format!(
            "mail goes to the dev mailbox: read it at {gateway}/#/mailbox (GET /api/dev/mailbox)"
        )),
        "{said}"
    );
    let mailbox = reqwest::get(platform.url("gateway", "/api/dev/mailbox"))
        .await
        .expect("GET /api/dev/mailbox");
    assert_eq!(mailbox.status(), 200);
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v13_4_2_with_mail_over_smtp_dozen_up_keeps_the_dev_mailbox_off() {
    // Nothing listens there: no mail is sent in this test.
    let smtp = format!("smtp://127.0.0.1:{}", dozen_tests::process::closed_port());
    let platform = Platform::start(&[("MAIL_URL", &smtp)]).await;
    let said = platform.up.lines().join("\n");
    assert!(!said.contains("dev mailbox"), "{said}");
    let mailbox = reqwest::get(platform.url("gateway", "/api/dev/mailbox"))
        .await
        .expect("GET /api/dev/mailbox");
    assert_eq!(mailbox.status(), 404);
    assert_eq!(mailbox.headers()["content-type"], "application/problem+json");
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v13_4_2_dozen_up_on_postgres_stops_at_the_dev_mailbox_unless_it_is_allowed() {
    let databases = DatabasePrefix::new("dozen_up_mailbox");
    let data = tempfile::tempdir().expect("data folder");
    let data_dir = data.path().to_string_lossy().into_owned();
    let mut env = vec![
        ("DATA_DIR", data_dir.as_str()),
        ("DATABASE_URL", databases.url.as_str()),
    ];
    let ports: Vec<String> = SERVICES
        .iter()
        .map(|name| format!("{}_PORT", name.to_uppercase()))
        .collect();
    env.extend(ports.iter().map(|port| (port.as_str(), "0")));
    let up = run_to_exit("dozen", &["up"], &env).await;
    assert_eq!(up.status.code(), Some(1), "{up:?}");
    let said = format!("{}{}", up.stdout, up.stderr);
    let refusals: Vec<&str> = said
        .lines()
        .filter(|line| line.contains("configuration error"))
        .collect();
    assert_eq!(refusals.len(), 1, "one line says why:\n{said}");
    for setting in [
        "MAIL_URL",
        "DATABASE_URL",
        "DEV_MAILBOX_ALLOW_PRODUCTION_BACKENDS",
    ] {
        assert!(
            refusals[0].contains(setting),
            "it names {setting}: {}",
            refusals[0]
        );
    }
    assert!(
        said.contains("verification refused its configuration: stopping every service"),
        "{said}"
    );
    assert_eq!(
        said.matches("started verification").count(),
        1,
        "not restarted: {said}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dozen_up_gives_each_service_its_own_database_on_a_postgres_server() {
    let databases = DatabasePrefix::new("dozen_up");
    let platform = Platform::start(&[
        ("DATABASE_URL", &databases.url),
        ("DEV_MAILBOX_ALLOW_PRODUCTION_BACKENDS", "true"),
    ])
    .await;
    for (name, port) in &platform.ports {
        assert!(platform.is_ready(*port).await, "{name} is ready on Postgres");
    }
    platform.stop().await;

    let made = databases.databases().await;
    let services: Vec<&str> = made
        .iter()
        .map(|name| name.trim_start_matches(&databases.prefix))
        .collect();
    assert_eq!(
        services,
        ["_friends", "_passwords", "_signup", "_users", "_verification"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dozen_up_refuses_a_port_in_use_by_its_setting_before_starting_anything() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a listener");
    let port = taken.local_addr().expect("its address").port().to_string();
    let data = tempfile::tempdir().expect("data folder");
    let data_dir = data.path().to_string_lossy().into_owned();
    let mut env = vec![("DATA_DIR", data_dir.as_str()), ("FRIENDS_PORT", port.as_str())];
    for setting in [
        "GATEWAY_PORT",
        "SIGNUP_PORT",
        "USERS_PORT",
        "PASSWORDS_PORT",
        "VERIFICATION_PORT",
    ] {
        env.push((setting, "0"));
    }
    let up = run_to_exit("dozen", &["up"], &env).await;
    assert_eq!(up.status.code(), Some(1), "{up:?}");
    let said = format!("{}{}", up.stdout, up.stderr);
    assert!(
        said.contains(&format!(
            "cannot listen on 127.0.0.1:{port} for friends (FRIENDS_PORT, HOST)"
        )),
        "{said}"
    );
    assert!(!said.contains("started "), "nothing started: {said}");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_two_replicas_a_killed_instance_costs_no_request() {
    let platform = Platform::start(&[("REPLICAS", "2")]).await;
    for service in SERVICES {
        for replica in ["1", "2"] {
            let instance = format!("{service}-{replica}");
            assert_eq!(platform.started_count(&instance), 1, "{instance} started once");
        }
    }
    let api = PublicApi::of(&platform);
    let email = "replicas@example.com";
    let signed_up = api.sign_up("replicas-1", email, "Ada", &["chess"]).await;
    assert_eq!(signed_up.status(), StatusCode::ACCEPTED);
    let token = api.verify_and_log_in(email).await;

    // Reads keep working through the kill: the other replica takes every new connection, and a
    // request on a connection the dead one held is retried.
    let killed = platform.pid_of("users-1");
    for round in 0..20 {
        if round == 5 {
            kill(Pid::from_raw(killed), Signal::SIGKILL).expect("kill -9 users-1");
        }
        let me = api.as_user(&token, Method::GET, "/api/me").await;
        assert_eq!(me.status(), StatusCode::OK, "round {round}");
        let me: Value = me.json().await.expect("a JSON body");
        assert_eq!(me["profile"]["email"], email, "round {round}: {me}");
    }
    // Ready, not only started: a process stopped before it has set up its signal handling
    // dies of the signal, and the stop below would not be clean.
    eventually(PATIENCE, "users-1 is restarted and ready", || async {
        let ready = platform
            .up
            .lines()
            .iter()
            .filter(|line| line.starts_with("users-1 ") && line.contains("\"message\":\"ready\""))
            .count();
        platform.started_count("users-1") == 2 && ready == 2
    })
    .await;
    assert_eq!(
        platform.started_count("users-2"),
        1,
        "the other replica was untouched"
    );
    platform.stop().await;
}
