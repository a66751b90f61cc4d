//! `dozen up`: every service as its own process on a port of 0, restarted on its port when it
//! dies, all stopped by one Ctrl-C with nothing left behind — on the embedded defaults and on a
//! Postgres server; a port in use stops it before anything starts.

use dozen_tests::database::DatabasePrefix;
use dozen_tests::platform::Platform;
use dozen_tests::process::run_to_exit;
use dozen_tests::{PATIENCE, eventually};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

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
async fn dozen_up_gives_each_service_its_own_database_on_a_postgres_server() {
    let databases = DatabasePrefix::new("dozen_up");
    let platform = Platform::start(&[("DATABASE_URL", &databases.url)]).await;
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
            "cannot listen on 127.0.0.1:{port} for friends (FRIENDS_PORT)"
        )),
        "{said}"
    );
    assert!(!said.contains("started "), "nothing started: {said}");
}
