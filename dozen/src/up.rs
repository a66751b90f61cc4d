//! `dozen up`: the whole platform on one machine, as separate OS processes.
//!
//! It binds every service's port itself (a port of 0 gets a free one), makes every service's
//! identity key and the trust bundle on the first run (`crate::keys`, kept under DATA_DIR and
//! reused after), migrates every
//! service's database (one-off `migrate` processes), starts each service on its socket (handed
//! over as in systemd's socket activation, see `dozen_kit::listener`) with its peers' real
//! URLs, merges their output into one stream prefixed by service name, restarts a service that
//! crashes (with backoff) on the same socket, and prints where the web UI is once all are
//! ready. SIGINT or SIGTERM stops them all gracefully; a child that outlives its grace period
//! is killed, and every child is told to stop should `dozen` itself die.
//!
//! Binding in `dozen` rather than in each service is what makes port 0 work for a whole
//! platform: every port is known before any service starts, so each is told where its peers
//! are (and verification where the gateway is, for the links in its mails) without starting
//! them in turn, and nothing can take a port between a crash and the restart.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd as _, BorrowedFd, IntoRawFd as _};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use dozen_kit::config::parse_duration;
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, dup2_raw};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::services::ServiceName;

/// The descriptor a handed-over socket is at in the service (`SD_LISTEN_FDS_START`).
const HANDED_OVER: i32 = 3;

/// Settings of `dozen up`, from the environment like every other setting.
#[derive(Debug, Clone, Args)]
pub struct UpSettings {
    /// Address every service listens on: loopback unless told otherwise (0.0.0.0 or :: for
    /// every interface).
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// Folder for the embedded databases, bus and mailbox.
    #[arg(long, env = "DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// A Postgres server to use instead of embedded SQLite, e.g.
    /// postgres://user:password@host:5432/dozen; each service gets its own database on it,
    /// named `<database>_<service>` (`dozen_users`, …), created when missing.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_parser = parse_postgres_url)]
    pub database_url: Option<String>,

    /// The bus every service attaches to [default: sqlite://<DATA_DIR>/bus.db].
    #[arg(long, env = "BUS_URL", hide_env_values = true)]
    pub bus_url: Option<String>,

    /// Where verification sends mail [default: file://<DATA_DIR>/mailbox, the dev mailbox,
    /// which the gateway then serves at /api/dev/mailbox].
    #[arg(long, env = "MAIL_URL", hide_env_values = true)]
    pub mail_url: Option<String>,

    /// The address users reach the platform at, for links in mails
    /// [default: http://127.0.0.1:<GATEWAY_PORT>].
    #[arg(long, env = "PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Port of the gateway (the web UI and public API). For every port: 0 picks a free one,
    /// printed at start as `<service> listens on <URL>`.
    #[arg(long, env = "GATEWAY_PORT", default_value_t = ServiceName::Gateway.default_port())]
    pub gateway_port: u16,
    /// Port of the signup service.
    #[arg(long, env = "SIGNUP_PORT", default_value_t = ServiceName::Signup.default_port())]
    pub signup_port: u16,
    /// Port of the users service.
    #[arg(long, env = "USERS_PORT", default_value_t = ServiceName::Users.default_port())]
    pub users_port: u16,
    /// Port of the passwords service.
    #[arg(long, env = "PASSWORDS_PORT", default_value_t = ServiceName::Passwords.default_port())]
    pub passwords_port: u16,
    /// Port of the verification service.
    #[arg(long, env = "VERIFICATION_PORT", default_value_t = ServiceName::Verification.default_port())]
    pub verification_port: u16,
    /// Port of the friends service.
    #[arg(long, env = "FRIENDS_PORT", default_value_t = ServiceName::Friends.default_port())]
    pub friends_port: u16,

    /// How long to wait for every service to be ready before saying which are not.
    #[arg(long, env = "READY_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub ready_timeout: Duration,

    /// How long each service may take to stop after SIGTERM before it is killed.
    #[arg(long, env = "STOP_TIMEOUT", default_value = "35s", value_parser = parse_duration)]
    pub stop_timeout: Duration,

    /// Folder of the services' identity keys, made on the first run and reused after
    /// (see `dozen keys`) [default: <DATA_DIR>/service-keys].
    #[arg(long, env = "SERVICE_KEYS_DIR")]
    pub service_keys_dir: Option<PathBuf>,

    /// Processes run for each service, all serving on the service's one socket: the kernel
    /// spreads connections over them, so the service keeps serving while one restarts.
    #[arg(long, env = "REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub replicas: u16,
}

fn parse_postgres_url(text: &str) -> Result<String, String> {
    if !(text.starts_with("postgres://") || text.starts_with("postgresql://")) {
        return Err("expected a postgres:// URL (leave it unset for embedded SQLite)".to_owned());
    }
    let options = PgConnectOptions::from_str(text).map_err(|e| e.to_string())?;
    let prefix = options.get_database().unwrap_or("dozen");
    if prefix.is_empty()
        || !prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(
            "the database name (the prefix of each service's database) may hold only a-z, 0-9 and _"
                .to_owned(),
        );
    }
    Ok(text.to_owned())
}

impl UpSettings {
    /// Whether mail goes to the dev mailbox: unless `MAIL_URL` names an SMTP server.
    fn dev_mailbox(&self) -> bool {
        self.mail_url
            .as_ref()
            .is_none_or(|url| url.starts_with("file://"))
    }

    /// The port asked for (0: any free port).
    fn port(&self, service: ServiceName) -> u16 {
        match service {
            ServiceName::Gateway => self.gateway_port,
            ServiceName::Signup => self.signup_port,
            ServiceName::Users => self.users_port,
            ServiceName::Passwords => self.passwords_port,
            ServiceName::Verification => self.verification_port,
            ServiceName::Friends => self.friends_port,
        }
    }
}

/// The `main` of `dozen up`.
pub fn main(settings: UpSettings) -> ExitCode {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("dozen: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let log = Log::new();
    match runtime.block_on(up(settings, &log)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            log.line("dozen", &format!("error: {error:#}"));
            ExitCode::FAILURE
        }
    }
}

async fn up(settings: UpSettings, log: &Log) -> anyhow::Result<()> {
    let started = Instant::now();
    let program = std::env::current_exe().context("cannot find the dozen binary")?;
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("cannot create DATA_DIR {}", settings.data_dir.display()))?;
    let data_dir = std::path::absolute(&settings.data_dir)?;

    // Every port is bound before anything starts: one in use stops `dozen up` here, by name.
    let mut sockets = BTreeMap::new();
    for service in ServiceName::ALL {
        sockets.insert(
            service.as_str(),
            Socket::bind(service, settings.host, settings.port(service))?,
        );
    }
    for (name, socket) in &sockets {
        log.line("dozen", &format!("{name} listens on {}", socket.url));
    }
    let socket = |service: ServiceName| &sockets[service.as_str()];

    // What every service is told: where its peers are, and which bus to use.
    let mut shared_env = BTreeMap::new();
    for service in ServiceName::ALL {
        shared_env.insert(
            format!("{}_URL", service.as_str().to_uppercase()),
            socket(service).url.clone(),
        );
    }
    let bus_url = settings
        .bus_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}/bus.db", data_dir.display()));
    shared_env.insert("BUS_URL".to_owned(), bus_url);
    let mail_url = settings
        .mail_url
        .clone()
        .unwrap_or_else(|| format!("file://{}/mailbox", data_dir.display()));
    shared_env.insert("MAIL_URL".to_owned(), mail_url);
    // The gateway serves the dev mailbox only when mail goes to it.
    shared_env.insert("DEV_MAILBOX".to_owned(), settings.dev_mailbox().to_string());
    let public_url = settings
        .public_url
        .clone()
        .unwrap_or_else(|| socket(ServiceName::Gateway).url.clone());
    shared_env.insert("PUBLIC_URL".to_owned(), public_url);
    // Every service is reached through the gateway, which names the client in X-Forwarded-For
    // (login throttling per address relies on it).
    shared_env.insert("TRUST_FORWARDED_FOR".to_owned(), "true".to_owned());
    if std::env::var_os("JWT_SIGNING_KEYS").is_none() && std::env::var_os("JWT_SIGNING_KEYS_FILE").is_none() {
        let key = development_signing_key(&data_dir)?;
        shared_env.insert("JWT_SIGNING_KEYS_FILE".to_owned(), key.display().to_string());
    }

    // Each service's identity: its own key, and every service's public keys to check callers.
    let keys_dir = std::path::absolute(
        settings
            .service_keys_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("service-keys")),
    )?;
    crate::keys::ensure(&keys_dir, &[]).context("cannot prepare the service keys (SERVICE_KEYS_DIR)")?;
    shared_env.insert(
        "SERVICE_KEYS_FILE".to_owned(),
        keys_dir.join(crate::keys::BUNDLE).display().to_string(),
    );

    let mut plans = Vec::new();
    for service in ServiceName::ALL {
        let mut env = shared_env.clone();
        env.insert(
            "SERVICE_SIGNING_KEYS_FILE".to_owned(),
            crate::keys::key_file(&keys_dir, service).display().to_string(),
        );
        // For the record: it serves on the socket handed over, whatever PORT says.
        env.insert("PORT".to_owned(), socket(service).port.to_string());
        if service.has_database() {
            let url = match &settings.database_url {
                None => format!("sqlite://{}/{}.db", data_dir.display(), service.as_str()),
                Some(server) => postgres_database(server, service).await?,
            };
            env.insert("DATABASE_URL".to_owned(), url);
        }
        plans.push(Plan {
            service,
            instance: service.as_str().into(),
            env,
            program: program.clone(),
            socket: socket(service).listener.clone(),
        });
    }

    log.line("dozen", "migrating databases");
    let migrations: Vec<_> = plans
        .iter()
        .filter(|plan| plan.service.has_database())
        .map(|plan| tokio::spawn(plan.clone().migrate(log.clone())))
        .collect();
    for migration in migrations {
        migration.await??;
    }

    let stopping = CancellationToken::new();
    let mut supervisors = Vec::new();
    for plan in plans {
        for replica in 1..=settings.replicas {
            let mut plan = plan.clone();
            if settings.replicas > 1 {
                plan.instance = format!("{}-{replica}", plan.service.as_str()).into();
            }
            supervisors.push(tokio::spawn(plan.supervise(
                log.clone(),
                stopping.clone(),
                settings.stop_timeout,
            )));
        }
    }

    let signal = dozen_kit::lifecycle::shutdown_signal();
    tokio::pin!(signal);
    tokio::select! {
        () = wait_until_ready(&settings, &sockets, log, started) => {}
        () = &mut signal => stopping.cancel(),
        () = stopping.cancelled() => {}
    }
    if !stopping.is_cancelled() {
        signal.await;
        stopping.cancel();
    }
    log.line("dozen", "stopping every service");
    let mut clean = true;
    for supervisor in supervisors {
        clean &= supervisor.await.unwrap_or(false);
    }
    if clean {
        log.line("dozen", "all services stopped");
        Ok(())
    } else {
        bail!("some services did not stop cleanly")
    }
}

/// The key passwords signs access tokens with when none is configured: made on the first
/// `dozen up` and kept under DATA_DIR, so sessions survive a restart. Not for production,
/// where `JWT_SIGNING_KEYS` comes from a secret store.
fn development_signing_key(data_dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    let path = data_dir.join("jwt-signing-key.pem");
    if !path.exists() {
        let mut file = std::fs::OpenOptions::new();
        file.write(true).create_new(true);
        std::os::unix::fs::OpenOptionsExt::mode(&mut file, 0o600);
        file.open(&path)
            .and_then(|mut file| file.write_all(dozen_passwords::generate_signing_key_pem().as_bytes()))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(path)
}

/// The service's own database on the Postgres server, created when missing.
async fn postgres_database(server: &str, service: ServiceName) -> anyhow::Result<String> {
    let options = PgConnectOptions::from_str(server)?;
    let name = format!(
        "{}_{}",
        options.get_database().unwrap_or("dozen"),
        service.as_str()
    );
    // Create it from the server's maintenance database: the named one need not exist.
    let mut connection = options
        .clone()
        .database("postgres")
        .connect()
        .await
        .context("cannot connect to the Postgres server (DATABASE_URL)")?;
    let exists: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_optional(&mut connection)
        .await?;
    if exists.is_none() {
        // The name was checked to hold only a-z, 0-9 and _ (see parse_postgres_url).
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut connection)
            .await
            .with_context(|| format!("cannot create database {name}"))?;
    }
    connection.close().await.ok();
    Ok(options.database(&name).to_url_lossy().to_string())
}

/// A service's listening socket, bound by `dozen` and handed to every process of the service.
#[derive(Debug)]
struct Socket {
    listener: Arc<std::net::TcpListener>,
    port: u16,
    /// `http://<host>:<port>`, where its peers call it: on loopback when it listens on every
    /// interface.
    url: String,
}

impl Socket {
    /// Listen on `port` of `host` for `service` (0: any free port).
    fn bind(service: ServiceName, host: IpAddr, port: u16) -> anyhow::Result<Self> {
        let setting = format!("{}_PORT", service.as_str().to_uppercase());
        let address = SocketAddr::new(host, port);
        let listener = std::net::TcpListener::bind(address).with_context(|| {
            format!(
                "cannot listen on {address} for {} ({setting}, HOST)",
                service.as_str()
            )
        })?;
        let port = listener.local_addr()?.port();
        let reached_at = if host.is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            host
        };
        // At 3 already, dup2 would leave it closed on exec: keep a copy elsewhere instead.
        let listener = if listener.as_raw_fd() == HANDED_OVER {
            listener.try_clone()?
        } else {
            listener
        };
        Ok(Self {
            listener: Arc::new(listener),
            port,
            url: format!("http://{}", SocketAddr::new(reached_at, port)),
        })
    }
}

/// How one service is run.
#[derive(Debug, Clone)]
struct Plan {
    service: ServiceName,
    /// The name of this process in the log: the service's, with its replica's number when
    /// there are several.
    instance: Arc<str>,
    /// Its environment on top of dozen's own.
    env: BTreeMap<String, String>,
    program: PathBuf,
    /// The socket its `serve` processes listen on.
    socket: Arc<std::net::TcpListener>,
}

impl Plan {
    /// The `migrate` one-off process.
    fn migrate_command(&self) -> Command {
        self.command("migrate")
    }

    /// The `serve` process, its socket handed over as descriptor 3 (`LISTEN_FDS=1`).
    fn serve_command(&self) -> Command {
        let mut command = self.command("serve");
        command.env("LISTEN_FDS", "1");
        let socket = self.socket.as_raw_fd();
        // SAFETY: the closure runs in the child between fork and exec and only calls dup2(2),
        // which is async-signal-safe. The parent's socket stays open until the child has
        // exec'd, and the copy made here is the child's to keep: unlike the descriptors Rust
        // opens, a copy made by dup2 stays open across exec.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(move || {
                let copy = dup2_raw(BorrowedFd::borrow_raw(socket), HANDED_OVER)?;
                let _ = copy.into_raw_fd();
                Ok(())
            });
        }
        command
    }

    fn command(&self, subcommand: &str) -> Command {
        let mut command = Command::new(&self.program);
        command
            .arg("run")
            .arg(self.service.as_str())
            .arg(subcommand)
            .envs(&self.env)
            // Each service's own key comes from its file: one in dozen's environment would
            // give every service the same identity.
            .env_remove("SERVICE_SIGNING_KEYS")
            .env_remove("SERVICE_KEYS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Its own process group: a Ctrl-C at the terminal reaches dozen alone, which then
            // stops the services in order instead of racing them.
            .process_group(0);
        // SAFETY: the closure runs in the child between fork and exec and only calls
        // prctl(2), which is async-signal-safe.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(|| {
                // Should dozen die without stopping its children, each gets SIGTERM.
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
            });
        }
        command
    }

    /// Run the one-off `migrate` process.
    async fn migrate(self, log: Log) -> anyhow::Result<()> {
        let name = self.service.as_str();
        let mut child = self
            .migrate_command()
            .spawn()
            .with_context(|| format!("cannot start {name} migrate"))?;
        let readers = pipe_output(&mut child, &self.instance, &log);
        let status = child.wait().await?;
        readers.await;
        if !status.success() {
            bail!("{name} migrate exited with {status}");
        }
        Ok(())
    }

    /// Keep the service running until `stopping`; restart it with backoff when it exits on
    /// its own. Returns whether it stopped cleanly.
    async fn supervise(self, log: Log, stopping: CancellationToken, stop_timeout: Duration) -> bool {
        const FIRST_BACKOFF: Duration = Duration::from_millis(200);
        const MAX_BACKOFF: Duration = Duration::from_secs(10);
        const HEALTHY_RUN: Duration = Duration::from_secs(30);
        let name = &*self.instance;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let mut child = match self.serve_command().spawn() {
                Ok(child) => child,
                Err(error) => {
                    log.line("dozen", &format!("cannot start {name}: {error}"));
                    return false;
                }
            };
            let pid = child.id().unwrap_or_default();
            log.line("dozen", &format!("started {name} (pid {pid})"));
            let readers = pipe_output(&mut child, &self.instance, &log);
            let ran_since = Instant::now();
            tokio::select! {
                status = child.wait() => {
                    readers.await;
                    // Status 2 is a configuration error (its line is above): a restart would
                    // only repeat it, so the whole platform stops.
                    if status.as_ref().is_ok_and(|status| status.code() == Some(2)) {
                        log.line("dozen", &format!("{name} refused its configuration: stopping every service"));
                        stopping.cancel();
                        return false;
                    }
                    let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                    if ran_since.elapsed() > HEALTHY_RUN {
                        backoff = FIRST_BACKOFF;
                    }
                    log.line("dozen", &format!("{name} exited ({status}); restarting in {backoff:?}"));
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = stopping.cancelled() => return true,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                () = stopping.cancelled() => {
                    if let Ok(pid) = i32::try_from(pid) {
                        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
                    }
                    let outcome = tokio::time::timeout(stop_timeout, child.wait()).await;
                    readers.await;
                    return match outcome {
                        Ok(Ok(status)) if status.success() => true,
                        Ok(Ok(status)) => {
                            log.line("dozen", &format!("{name} stopped with {status}"));
                            false
                        }
                        _ => {
                            log.line("dozen", &format!("{name} did not stop within {stop_timeout:?}: killing it"));
                            let _ = child.kill().await;
                            false
                        }
                    };
                }
            }
        }
    }
}

/// Copy the child's stdout and stderr into the merged stream; the returned future resolves
/// once both pipes have closed.
fn pipe_output(
    child: &mut tokio::process::Child,
    name: &Arc<str>,
    log: &Log,
) -> impl Future<Output = ()> + use<> {
    let stdout = child
        .stdout
        .take()
        .map(|pipe| tokio::spawn(copy_lines(pipe, name.clone(), log.clone())));
    let stderr = child
        .stderr
        .take()
        .map(|pipe| tokio::spawn(copy_lines(pipe, name.clone(), log.clone())));
    async move {
        for reader in [stdout, stderr].into_iter().flatten() {
            let _ = reader.await;
        }
    }
}

async fn copy_lines(pipe: impl AsyncRead + Unpin, name: Arc<str>, log: Log) {
    let mut lines = BufReader::new(pipe).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        log.line(&name, &line);
    }
}

/// Poll every service's `/readyz`, then say where the platform is.
async fn wait_until_ready(
    settings: &UpSettings,
    sockets: &BTreeMap<&str, Socket>,
    log: &Log,
    started: Instant,
) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + settings.ready_timeout;
    let mut waiting: Vec<ServiceName> = ServiceName::ALL.to_vec();
    while !waiting.is_empty() && Instant::now() < deadline {
        let mut still = Vec::new();
        for service in waiting {
            let url = format!("{}/readyz", sockets[service.as_str()].url);
            let ready = client
                .get(&url)
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .is_ok_and(|response| response.status().is_success());
            if !ready {
                still.push(service);
            }
        }
        waiting = still;
        if !waiting.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    if waiting.is_empty() {
        let seconds = started.elapsed().as_secs_f64();
        log.line(
            "dozen",
            &format!(
                "all {} services are ready ({seconds:.2} s)",
                ServiceName::ALL.len()
            ),
        );
        let gateway = &sockets[ServiceName::Gateway.as_str()].url;
        log.line("dozen", &format!("web UI and API: {gateway}/"));
        if settings.dev_mailbox() {
            log.line(
                "dozen",
                &format!(
                    "mail goes to the dev mailbox: read it at {gateway}/#/mailbox (GET /api/dev/mailbox)"
                ),
            );
        }
        log.line("dozen", "press Ctrl-C to stop");
    } else {
        let names: Vec<_> = waiting.iter().map(|service| service.as_str()).collect();
        log.line(
            "dozen",
            &format!(
                "not ready after {:?}: {}",
                settings.ready_timeout,
                names.join(", ")
            ),
        );
    }
}

/// The merged output: one line at a time, each prefixed by who wrote it (coloured at a
/// terminal).
#[derive(Debug, Clone)]
struct Log {
    colour: bool,
}

impl Log {
    fn new() -> Self {
        Self {
            colour: std::io::stdout().is_terminal(),
        }
    }

    fn line(&self, who: &str, text: &str) {
        let mut out = std::io::stdout().lock();
        let _ = if self.colour {
            // A replica's name ends in its number: coloured as its service.
            let colour = match who.split('-').next().unwrap_or(who) {
                "gateway" => 36,
                "signup" => 32,
                "users" => 33,
                "passwords" => 35,
                "verification" => 34,
                "friends" => 31,
                _ => 1,
            };
            writeln!(out, "\x1b[{colour}m{who:<12} |\x1b[0m {text}")
        } else {
            writeln!(out, "{who:<12} | {text}")
        };
    }
}
