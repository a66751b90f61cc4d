//! `dozen up`: every service as its own process, restarted when it dies, all stopped by one
//! Ctrl-C with nothing left behind — on the embedded defaults and on a Postgres server.

use std::time::{Duration, Instant};

use dozen_tests::database::postgres_admin_url;
use dozen_tests::platform::Platform;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sqlx::{ConnectOptions, Connection};

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
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(platform.started_count("users") == 2 && platform.is_ready(users_port).await) {
        assert!(
            Instant::now() < deadline,
            "users was not restarted:\n{}",
            platform.up.lines().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_ne!(platform.pid_of("users"), killed, "a new process serves users");

    let pids = platform.stop().await;
    for pid in pids {
        assert!(!is_alive(pid), "process {pid} outlived dozen up");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dozen_up_gives_each_service_its_own_database_on_a_postgres_server() {
    let prefix = format!("dozen_up_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::postgres::PgConnectOptions::from_str_lossy(&postgres_admin_url());
    let server_url = admin.clone().database(&prefix).to_url_lossy().to_string();
    let platform = Platform::start(&[("DATABASE_URL", &server_url)]).await;
    for (name, port) in &platform.ports {
        assert!(platform.is_ready(*port).await, "{name} is ready on Postgres");
    }
    platform.stop().await;

    let mut connection = admin.connect().await.expect("Postgres");
    let created: Vec<(String,)> =
        sqlx::query_as("SELECT datname FROM pg_database WHERE datname LIKE $1 ORDER BY 1")
            .bind(format!("{prefix}_%"))
            .fetch_all(&mut connection)
            .await
            .expect("list databases");
    for (name,) in &created {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)")))
            .execute(&mut connection)
            .await
            .expect("drop a test database");
    }
    connection.close().await.ok();
    let names: Vec<String> = created
        .into_iter()
        .map(|(name,)| name.trim_start_matches(&prefix).to_owned())
        .collect();
    assert_eq!(
        names,
        ["_friends", "_passwords", "_signup", "_users", "_verification"]
    );
}

trait FromStrLossy {
    fn from_str_lossy(text: &str) -> Self;
}

impl FromStrLossy for sqlx::postgres::PgConnectOptions {
    fn from_str_lossy(text: &str) -> Self {
        text.parse().expect("TEST_POSTGRES_URL is a Postgres URL")
    }
}
