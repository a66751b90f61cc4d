//! Start the built binaries as real processes, read what they log, signal them.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// Every service binary, and whether it owns a database.
pub const SERVICES: [(&str, bool); 6] = [
    ("gateway", false),
    ("signup", true),
    ("users", true),
    ("passwords", true),
    ("verification", true),
    ("friends", true),
];

/// The path of a binary built from this workspace (`dozen`, `dozen-users`, …), next to the
/// running test's own folder.
pub fn binary(name: &str) -> PathBuf {
    let test_exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let folder = test_exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target folder");
    let path = folder.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace's binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// A one-off run's outcome.
#[derive(Debug)]
pub struct Finished {
    /// How it exited.
    pub status: ExitStatus,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// Run `program` to completion with only `env` (plus PATH) as its environment.
pub async fn run_to_exit(program: &str, args: &[&str], env: &[(&str, &str)]) -> Finished {
    let (mut command, _folder) = command(program, args, env);
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        command.stdout(Stdio::piped()).stderr(Stdio::piped()).output(),
    )
    .await
    .expect("the process finishes within a minute")
    .expect("the process starts");
    Finished {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The command, run in a folder of its own: whatever a process writes by default (`data/…`)
/// stays out of the repository and away from other tests. Keep the folder while it runs.
fn command(program: &str, args: &[&str], env: &[(&str, &str)]) -> (Command, tempfile::TempDir) {
    let folder = tempfile::tempdir().expect("a working folder");
    let mut command = Command::new(binary(program));
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    command
        .envs(env.iter().copied())
        .current_dir(folder.path())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    (command, folder)
}

/// A running process whose output lines are collected as they come.
#[derive(Debug)]
pub struct Running {
    child: Child,
    /// Its working folder, removed when it is dropped.
    _folder: tempfile::TempDir,
    /// Every line written to stdout or stderr so far.
    lines: Arc<Mutex<Vec<String>>>,
    /// The tasks collecting them, done when the pipes close.
    collectors: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Start `program` with only `env` (plus PATH) as its environment.
    pub fn start(program: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let (command, folder) = command(program, args, env);
        Self::spawn(command, folder)
    }

    /// Start a program from outside the workspace (a database server, a broker), prepared
    /// by the caller, in `folder`.
    pub fn spawn(mut command: Command, folder: tempfile::TempDir) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the process starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut collectors = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            collectors.push(tokio::spawn(collect(stdout, lines.clone())));
        }
        if let Some(stderr) = child.stderr.take() {
            collectors.push(tokio::spawn(collect(stderr, lines.clone())));
        }
        Self {
            child,
            _folder: folder,
            lines,
            collectors,
        }
    }

    /// Its process id.
    pub fn pid(&self) -> i32 {
        self.child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .expect("a running process")
    }

    /// Every output line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines lock").clone()
    }

    /// Wait (up to `timeout`) for an output line that satisfies `wanted`, and return it.
    pub async fn wait_for_line(&mut self, timeout: Duration, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(line) = self.lines().into_iter().find(|line| wanted(line)) {
                return line;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // Give the readers a moment to drain the pipes, then look one last time.
                tokio::time::sleep(Duration::from_millis(100)).await;
                if let Some(line) = self.lines().into_iter().find(|line| wanted(line)) {
                    return line;
                }
                panic!(
                    "the process exited ({status}) before the expected line:\n{}",
                    self.lines().join("\n")
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no expected line within {timeout:?}:\n{}",
                self.lines().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Write `line` to its standard input, which the caller's command piped.
    pub async fn tell(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("its standard input is piped");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write to its standard input");
        stdin.flush().await.expect("flush its standard input");
    }

    /// Send a signal.
    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid()), signal).expect("signal sent");
    }

    /// Wait (up to `timeout`) for it to exit, then for the last lines it wrote.
    pub async fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the process did not exit within {timeout:?}:\n{}",
                    self.lines().join("\n")
                )
            })
            .expect("wait for the process");
        // Its last lines may still be in the pipes: read them to the end (a child it left
        // behind could hold a pipe open, so not for ever).
        for collector in self.collectors.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(2), collector).await;
        }
        status
    }
}

async fn collect(pipe: impl AsyncRead + Unpin, lines: Arc<Mutex<Vec<String>>>) {
    let mut reader = BufReader::new(pipe).lines();
    while let Ok(Some(line)) = reader.next_line().await {
        lines.lock().expect("lines lock").push(line);
    }
}

/// A service process started with `PORT=0`, ready to serve.
#[derive(Debug)]
pub struct Service {
    /// The process.
    pub process: Running,
    /// The port it reported in its "ready" log line.
    pub port: u16,
}

impl Service {
    /// Start binary `program` with `PORT=0` and `env`, and wait for its "ready" line.
    pub async fn start(program: &str, env: &[(&str, &str)]) -> Self {
        Self::start_on(program, env, 0).await
    }

    /// Start binary `program` on `port` (0: any free port) with `env`, and wait for its
    /// "ready" line; e.g. to bring a stopped service back where its callers expect it. Unless
    /// `env` gives it an identity, the service gets its own from
    /// [`crate::identity::identities`].
    pub async fn start_on(program: &str, env: &[(&str, &str)], port: u16) -> Self {
        let port = port.to_string();
        let mut env = env.to_vec();
        if !env
            .iter()
            .any(|(name, _)| name.starts_with("SERVICE_SIGNING_KEYS"))
        {
            let service = program.trim_start_matches("dozen-");
            env.extend(crate::identity::identities().env(service));
        }
        env.push(("PORT", &port));
        env.push(("HOST", "127.0.0.1"));
        let mut process = Running::start(program, &[], &env);
        let ready = process
            .wait_for_line(Duration::from_secs(30), |line| log_message(line) == Some("ready"))
            .await;
        let fields: serde_json::Value = serde_json::from_str(&ready).expect("the ready line is JSON");
        let port = fields["fields"]["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .expect("a port");
        Self { process, port }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

/// The `message` of a JSON log line, if it is one.
pub fn log_message(line: &str) -> Option<&str> {
    // A cheap check first: most lines are not the one sought.
    let start = line.find("\"message\":\"")? + "\"message\":\"".len();
    let end = line[start..].find('"')?;
    Some(&line[start..start + end])
}

/// A port of 127.0.0.1 held for as long as this value lives, with nothing listening on it:
/// its socket is bound but not listening, so connections to it are refused ("a peer that is
/// down"), and no one else is given the port. Except a program told to listen on it that sets
/// SO_REUSEADDR, as servers do (aiosmtpd, chromedriver, moto): Linux lets a socket with it bind
/// a port whose other sockets have it too and are not listening. That is how a test starts a
/// program that cannot report a port of 0 on a port no one else can take meanwhile.
#[derive(Debug)]
pub struct ReservedPort {
    _socket: tokio::net::TcpSocket,
    /// The port.
    pub port: u16,
}

impl ReservedPort {
    /// Reserve a port the kernel picks.
    pub fn new() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket
            .bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("a port of 127.0.0.1");
        let port = socket.local_addr().expect("the bound address").port();
        Self {
            _socket: socket,
            port,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Default for ReservedPort {
    fn default() -> Self {
        Self::new()
    }
}

/// A port of 127.0.0.1 that refuses connections for as long as the test process runs (one
/// [`ReservedPort`] kept for ever): where a peer that is down would be.
pub fn closed_port() -> u16 {
    static CLOSED: std::sync::LazyLock<ReservedPort> = std::sync::LazyLock::new(ReservedPort::new);
    CLOSED.port
}
