//! Backing servers of one test's own, to stop and start under a running platform without
//! disturbing the shared ones other tests use: a PostgreSQL cluster on a unix socket (no TCP
//! port to race for), a NATS JetStream server, and an SNS/SQS emulator.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::Signal;
use sqlx::Connection;
use tokio::process::Command;

use crate::process::{ReservedPort, Running};
use crate::{PATIENCE, eventually};

/// The newest PostgreSQL server binaries Debian installed (`/usr/lib/postgresql/<v>/bin`).
fn postgres_binaries() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's server binaries under /usr/lib/postgresql (scripts/backing-services)")
        .filter_map(|entry| Some(entry.ok()?.path().join("bin")))
        .filter(|bin| bin.join("postgres").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("a PostgreSQL version with a postgres binary")
}

/// The user PostgreSQL runs as: itself, unless that is root, which PostgreSQL refuses.
fn postgres_user() -> Option<nix::unistd::User> {
    nix::unistd::geteuid().is_root().then(|| {
        nix::unistd::User::from_name("postgres")
            .ok()
            .flatten()
            .expect("a postgres user to run PostgreSQL as (not root)")
    })
}

/// A PostgreSQL cluster of the test's own in a temporary folder, listening on a unix socket
/// there only; removed when dropped.
#[derive(Debug)]
pub struct PrivatePostgres {
    folder: tempfile::TempDir,
    server: Option<Running>,
}

impl PrivatePostgres {
    /// Make a cluster (trust authentication, user `postgres`) and start it.
    pub async fn start() -> Self {
        let folder = tempfile::tempdir().expect("a folder for the cluster");
        if let Some(user) = postgres_user() {
            nix::unistd::chown(folder.path(), Some(user.uid), Some(user.gid))
                .expect("hand the folder to postgres");
        }
        let data = folder.path().join("data");
        let mut initdb = Self::command("initdb");
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let made = initdb.output().await.expect("initdb runs");
        assert!(made.status.success(), "initdb: {made:?}");
        let mut postgres = Self { folder, server: None };
        postgres.start_again().await;
        postgres
    }

    fn command(program: &str) -> Command {
        let mut command = Command::new(postgres_binaries().join(program));
        if let Some(user) = postgres_user() {
            command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        command.stdin(Stdio::null()).kill_on_drop(true);
        command
    }

    fn socket_folder(&self) -> &Path {
        self.folder.path()
    }

    /// The URL of `database` on it, over its socket.
    pub fn url(&self, database: &str) -> String {
        let socket: String = url_encode(&self.socket_folder().display().to_string());
        format!("postgres://postgres@{socket}/{database}")
    }

    /// Start the server (again) on the cluster, and wait until it takes connections.
    pub async fn start_again(&mut self) {
        assert!(self.server.is_none(), "the server is stopped");
        let mut command = Self::command("postgres");
        command
            .arg("-D")
            .arg(self.folder.path().join("data"))
            .arg("-k")
            .arg(self.socket_folder())
            .args([
                "-c",
                "listen_addresses=",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=200",
            ]);
        let working = tempfile::tempdir().expect("a working folder");
        if let Some(user) = postgres_user() {
            nix::unistd::chown(working.path(), Some(user.uid), Some(user.gid))
                .expect("hand the folder to postgres");
        }
        command.current_dir(working.path());
        self.server = Some(Running::spawn(command, working));
        let url = self.url("postgres");
        eventually(PATIENCE, "the private PostgreSQL takes connections", || async {
            sqlx::PgConnection::connect(&url).await.is_ok()
        })
        .await;
    }

    /// Stop the server (a fast shutdown: sessions are cut, the data is kept).
    pub async fn stop(&mut self) {
        let mut server = self.server.take().expect("the server is running");
        server.signal(Signal::SIGINT);
        let status = server.wait(PATIENCE).await;
        assert!(
            status.success(),
            "PostgreSQL stops cleanly: {status}\n{}",
            server.lines().join("\n")
        );
    }
}

/// A NATS server with JetStream of the test's own, on a port reserved for it (so that it comes
/// back where its clients expect it), its store in a temporary folder.
#[derive(Debug)]
pub struct PrivateNats {
    port: ReservedPort,
    store: tempfile::TempDir,
    server: Option<Running>,
}

impl PrivateNats {
    /// Start it.
    pub async fn start() -> Self {
        let mut nats = Self {
            port: ReservedPort::new(),
            store: tempfile::tempdir().expect("a folder for the store"),
            server: None,
        };
        nats.start_again().await;
        nats
    }

    /// Its `BUS_URL`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port.port)
    }

    /// Start the server (again) on its store, and wait until it says it is ready.
    pub async fn start_again(&mut self) {
        assert!(self.server.is_none(), "the server is stopped");
        let mut command = Command::new("nats-server");
        command
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.port.to_string(), "-sd"])
            .arg(self.store.path())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let mut server = Running::spawn(command, tempfile::tempdir().expect("a working folder"));
        server
            .wait_for_line(PATIENCE, |line| line.contains("Server is ready"))
            .await;
        self.server = Some(server);
    }

    /// Stop the server (SIGTERM: a clean stop; the streams stay in the store).
    pub async fn stop(&mut self) {
        let mut server = self.server.take().expect("the server is running");
        server.signal(Signal::SIGTERM);
        server.wait(Duration::from_secs(30)).await;
    }
}

/// An SNS/SQS emulator of the test's own (moto, `moto[server]` from PyPI, in the wrapper
/// tests/support/sns_sqs_emulator.py), on a port reserved for it. It can be stopped and started
/// again with its topics, queues and messages, as a broker that goes down and comes back, or
/// frozen (SIGSTOP) and let go, as a hung broker.
#[derive(Debug)]
pub struct PrivateSnsSqs {
    /// Held for as long as the emulator is ours: while it is stopped, connections to the port
    /// are refused and no one else is given it.
    port: ReservedPort,
    server: Running,
}

impl PrivateSnsSqs {
    /// Start it, and wait until it listens.
    pub async fn start() -> Self {
        let port = ReservedPort::new();
        let wrapper = Path::new(env!("CARGO_MANIFEST_DIR")).join("support/sns_sqs_emulator.py");
        let mut command = Command::new("python3");
        command
            .arg(wrapper)
            .arg(port.port.to_string())
            .stdin(Stdio::piped())
            .kill_on_drop(true);
        let server = Running::spawn(command, tempfile::tempdir().expect("a working folder"));
        let emulator = Self { port, server };
        emulator.await_answer("listening", 1).await;
        emulator
    }

    /// Its `BUS_URL` (the emulator takes any credentials).
    pub fn url(&self) -> String {
        format!(
            "sns+sqs://test:test@us-east-1?endpoint=http://127.0.0.1:{}",
            self.port.port
        )
    }

    /// How many times it has answered `answer`.
    fn answers(&self, answer: &str) -> usize {
        self.server.lines().iter().filter(|line| *line == answer).count()
    }

    /// Wait until it has answered `answer` `times` times in all.
    async fn await_answer(&self, answer: &str, times: usize) {
        eventually(
            PATIENCE,
            &format!("the SNS/SQS emulator says {answer}"),
            || async { self.answers(answer) >= times },
        )
        .await;
    }

    /// Give it `command`, and wait for its answer.
    async fn command(&mut self, command: &str, answer: &str) {
        let times = self.answers(answer) + 1;
        self.server.tell(command).await;
        self.await_answer(answer, times).await;
    }

    /// Stop it: connections are refused, those it had are cut; its state is kept.
    pub async fn stop(&mut self) {
        self.command("stop", "stopped").await;
    }

    /// Start it again, on its port, with the state it had.
    pub async fn start_again(&mut self) {
        self.command("start", "listening").await;
    }

    /// Freeze it: connections stay open and requests go unanswered.
    pub fn pause(&self) {
        self.server.signal(Signal::SIGSTOP);
    }

    /// Let it run again.
    pub fn resume(&self) {
        self.server.signal(Signal::SIGCONT);
    }
}

/// `text` with every byte but ASCII letters and digits percent-encoded, as a URL's host.
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() {
                (byte as char).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}
