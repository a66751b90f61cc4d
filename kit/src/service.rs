//! A service's life from `main` to exit, the same for all six: read the configuration, start
//! logs and traces, then serve until told to stop, or run an admin process (`migrate`, or one
//! of the service's own tasks) and exit.

use std::ffi::OsString;
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;
use utoipa_axum::router::OpenApiRouter;

use crate::config::{self, DatabaseSettings, Parsed, ServerSettings, TelemetrySettings, UpstreamSettings};
use crate::db::{DatabaseUrl, Db, Migrations};
use crate::http::client::HttpClient;
use crate::http::server::{self, Readiness};
use crate::identity::{Identity, IdentitySettings};
use crate::lifecycle::{self, Lifecycle};
use crate::{metrics, telemetry};

/// What makes a service a service; the kit does the rest.
pub trait Service: Sized + 'static {
    /// Its short name: in logs, metrics, binary (`dozen-<name>`) and default database file.
    const NAME: &'static str;
    /// Its port under `dozen up`, and the default of `PORT`.
    const DEFAULT_PORT: u16;
    /// The default of `WORKER_THREADS`: one serving thread, unless serving requests is the
    /// service's CPU-bound work (0: one per core).
    const DEFAULT_WORKER_THREADS: usize = 1;
    /// Its own settings, read from the environment like the kit's.
    type Settings: Args + Clone + std::fmt::Debug + Send + Sync + 'static;

    /// Its database setting and every set of migrations its database holds, or `None` for a
    /// stateless service.
    fn database(settings: &Self::Settings) -> Option<(&DatabaseSettings, &'static [&'static Migrations])>;

    /// Refuse settings that are each valid but wrong together, before serving: the error is
    /// one line naming the settings, reported as a configuration error (exit status 2).
    /// Admin processes do not serve, so they are not checked.
    fn check_serving(settings: &Self::Settings) -> Result<(), String> {
        let _ = settings;
        Ok(())
    }

    /// Start the service: connect what it needs beyond the kit (the bus, its consumers), spawn
    /// its background work on `context.lifecycle`, add the dependencies `/readyz` must check to
    /// `context.readiness`, and return its API routes for the kit to serve.
    fn start(
        context: &mut Context<Self::Settings>,
    ) -> impl Future<Output = anyhow::Result<OpenApiRouter>> + Send;

    /// Layers around its whole HTTP server: its routes, the ops endpoints and every answer the
    /// kit makes itself (404, 413, 503…). None by default; the gateway adds the headers
    /// browsers need here.
    fn edge_layers(router: axum::Router, settings: &Self::Settings) -> axum::Router {
        let _ = settings;
        router
    }

    /// Its one-off admin processes besides `migrate` (factor XII): a clap subcommand enum,
    /// listed by `--help` next to `serve` and `migrate` and run as
    /// `dozen-<name> <task> [args…]` from the same release. [`NoTasks`] for none.
    type Task: Subcommand + Clone + std::fmt::Debug + Send + 'static;

    /// Run admin task `task` against the service's database (schema checked) and peers.
    fn run_task(
        task: Self::Task,
        context: Context<Self::Settings>,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// The admin tasks of a service that has none besides `migrate`.
#[derive(Debug, Clone, Copy, Subcommand)]
pub enum NoTasks {}

/// What a service's routes and tasks are built from.
#[derive(Debug)]
pub struct Context<S> {
    /// The service's own settings.
    pub settings: S,
    /// Its database, when it has one (connected, schema checked).
    pub db: Option<Db>,
    /// The client for calls to other services.
    pub http: HttpClient,
    /// Draining state, the stop signal and the background tasks shutdown waits for.
    pub lifecycle: Lifecycle,
    /// What `/readyz` checks.
    pub readiness: Readiness,
    /// The service's identity: its calls carry it, and `identity.callers(&[…])` guards the
    /// routes only other services may call. Always there when serving; for an admin task only
    /// when its settings are given.
    pub identity: Option<Identity>,
}

impl<S> Context<S> {
    /// The database, for a service that declares one.
    pub fn database(&self) -> anyhow::Result<&Db> {
        self.db.as_ref().context("this service has no database")
    }

    /// The service's identity (always there when serving).
    pub fn identity(&self) -> anyhow::Result<&Identity> {
        self.identity
            .as_ref()
            .context("missing required setting SERVICE_SIGNING_KEYS (this service's identity)")
    }
}

/// The command line of every service binary.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None, args_conflicts_with_subcommands = false)]
pub struct Cli<S: Args, T: Subcommand> {
    /// What to run; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command<T>>,
    #[command(flatten)]
    pub server: ServerSettings,
    #[command(flatten)]
    pub upstream: UpstreamSettings,
    #[command(flatten)]
    pub telemetry: TelemetrySettings,
    #[command(flatten)]
    pub identity: IdentitySettings,
    #[command(flatten)]
    pub service: S,
}

/// The processes a service binary can run.
#[derive(Debug, Clone, Subcommand)]
pub enum Command<T: Subcommand> {
    /// Serve HTTP until SIGTERM or Ctrl-C (the default).
    Serve,
    /// Apply pending database migrations, then exit (a one-off admin process).
    Migrate,
    /// The service's own admin tasks.
    #[command(flatten)]
    Task(T),
}

/// Everything a service needs to run, as read from the environment.
pub type Settings<S> = Cli<<S as Service>::Settings, <S as Service>::Task>;

/// Read the settings of service `S` from `args` and the environment.
pub fn parse_settings<S: Service>(
    args: impl IntoIterator<Item = OsString>,
) -> Result<Parsed<Settings<S>>, config::ConfigError> {
    config::parse::<Settings<S>>(args, |command| {
        command
            .name(format!("dozen-{}", S::NAME))
            .about(format!(
                "dozen's {} service. Every setting is an environment variable.",
                S::NAME
            ))
            .mut_arg("port", |arg| arg.default_value(S::DEFAULT_PORT.to_string()))
            .mut_arg("worker_threads", |arg| {
                arg.default_value(S::DEFAULT_WORKER_THREADS.to_string())
            })
    })
}

/// The whole `main` of a service binary.
pub fn main<S: Service>() -> ExitCode {
    run_from_args::<S>(std::env::args_os())
}

/// Run service `S` as its binary would, with `args` as its command line (the `dozen` command
/// runs services this way).
pub fn run_from_args<S: Service>(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let started = Instant::now();
    let settings = match parse_settings::<S>(args) {
        Ok(Parsed::Run(settings)) => settings,
        Ok(Parsed::Info(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            eprintln!("dozen-{}: configuration error: {error}", S::NAME);
            return ExitCode::from(2);
        }
    };
    if matches!(settings.command, None | Some(Command::Serve))
        && let Err(error) = S::check_serving(&settings.service)
    {
        eprintln!("dozen-{}: configuration error: {error}", S::NAME);
        return ExitCode::from(2);
    }
    // Making the metrics recorder calibrates its clock (quanta's TSC against the system clock):
    // it spins for a while, far longer on a busy machine. Start it now on another core,
    // overlapping telemetry and runtime start-up; `Application::build` still waits for the
    // recorder before anything records.
    if matches!(settings.command, None | Some(Command::Serve)) {
        let _ = std::thread::Builder::new()
            .name("metrics-init".to_owned())
            .spawn(|| {
                metrics::recorder();
            });
    }
    // One TLS crypto provider for every client (Postgres, HTTPS, OTLP); see RUST-NOTES.md.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // Outside the async runtime: the OTLP exporter runs on threads of its own, and flushing it
    // when the guard drops blocks.
    let _telemetry = match telemetry::init(S::NAME, &settings.telemetry) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("dozen-{}: cannot start telemetry: {error:#}", S::NAME);
            return ExitCode::FAILURE;
        }
    };
    // One thread runs start-up and the background tasks, and serves HTTP with the others that
    // `WORKER_THREADS` asks for (`server::serve`).
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("dozen-{}: cannot start the async runtime: {error}", S::NAME);
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let outcome = match settings.command.clone().unwrap_or(Command::Serve) {
            Command::Migrate => migrate::<S>(&settings.service).await,
            Command::Serve => match Application::build::<S>(settings, started).await {
                Ok(app) => app.run_until_stopped(lifecycle::shutdown_signal()).await,
                Err(error) => Err(error),
            },
            Command::Task(task) => run_task::<S>(task, settings).await,
        };
        match outcome {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(error = format!("{error:#}"), "stopped on an error");
                ExitCode::FAILURE
            }
        }
    })
}

/// The database URL of service `S`: its setting, or the embedded default.
fn database_url<S: Service>(database: &DatabaseSettings) -> DatabaseUrl {
    database
        .database_url
        .clone()
        .unwrap_or_else(|| DatabaseUrl::default_for(S::NAME))
}

/// The `migrate` admin process.
async fn migrate<S: Service>(settings: &S::Settings) -> anyhow::Result<()> {
    let Some((database, migrations)) = S::database(settings) else {
        tracing::info!("this service has no database: nothing to migrate");
        return Ok(());
    };
    let url = database_url::<S>(database);
    let db = Db::connect(&url, 1)
        .await
        .with_context(|| format!("cannot open the {} database", url.backend()))?;
    db.migrate(migrations).await.context("migration failed")?;
    tracing::info!(backend = url.backend(), "database is up to date");
    db.close().await;
    Ok(())
}

/// An admin task: the same context a serving process gets, then the task, then exit.
async fn run_task<S: Service>(task: S::Task, settings: Settings<S>) -> anyhow::Result<()> {
    let context = Context::connect::<S>(
        settings.service,
        &settings.server,
        &settings.upstream,
        &settings.identity,
        false,
    )
    .await?;
    let lifecycle = context.lifecycle.clone();
    let outcome = S::run_task(task, context).await;
    lifecycle.stop();
    lifecycle.tasks_finished().await;
    outcome
}

impl<S: Clone> Context<S> {
    /// Connect what service `T` depends on: its database (schema checked, and checked by
    /// `/readyz`) and the client for its peers, which carries its identity. Serving requires
    /// the identity; an admin task gets one when its settings are given (a task that calls
    /// other services, such as signup's `repair`, needs it).
    async fn connect<T: Service<Settings = S>>(
        settings: S,
        server: &ServerSettings,
        upstream: &UpstreamSettings,
        identity: &IdentitySettings,
        identity_required: bool,
    ) -> anyhow::Result<Self> {
        let mut readiness = Readiness::default();
        let db = match T::database(&settings) {
            None => None,
            Some((database, migrations)) => {
                let url = database_url::<T>(database);
                if let Some(file) = url.sqlite_file()
                    && !file.exists()
                {
                    anyhow::bail!(
                        "the database {} does not exist: run the `migrate` admin process first",
                        file.display()
                    );
                }
                let db = Db::connect_existing(&url, database.database_max_connections)
                    .await
                    .with_context(|| format!("cannot open the {} database (DATABASE_URL)", url.backend()))?;
                db.check_schema(migrations).await?;
                let probe = db.clone();
                readiness.add("database", move || {
                    let probe = probe.clone();
                    async move { probe.ping().await.map_err(|e| e.to_string()) }
                });
                Some(db)
            }
        };
        let given = identity.service_signing_keys.is_some() || identity.service_keys.is_some();
        let identity = if identity_required || given {
            Some(Identity::from_settings(T::NAME, identity)?)
        } else {
            None
        };
        let mut http = HttpClient::with_policy(server.upstream_timeout, upstream.clone());
        if let Some(identity) = &identity {
            http = http.with_identity(identity.signer());
        }
        Ok(Self {
            settings,
            db,
            http,
            lifecycle: Lifecycle::new(),
            readiness,
            identity,
        })
    }
}

/// A service bound to its port and ready to serve.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    lifecycle: Lifecycle,
    db: Option<Db>,
    server: ServerSettings,
}

impl Application {
    /// Connect the database (checking its schema), build the routes and bind the port.
    pub async fn build<S: Service>(settings: Settings<S>, started: Instant) -> anyhow::Result<Self> {
        // Installed before anything records.
        metrics::recorder();
        let mut context = Context::connect::<S>(
            settings.service,
            &settings.server,
            &settings.upstream,
            &settings.identity,
            true,
        )
        .await?;
        let lifecycle = context.lifecycle.clone();
        let db = context.db.clone();
        let api = S::start(&mut context).await?;
        let router = server::router(
            S::NAME,
            api,
            context.readiness,
            lifecycle.clone(),
            &settings.server,
        );
        let router = S::edge_layers(router, &context.settings);
        let address = SocketAddr::new(settings.server.host, settings.server.port);
        let listener = crate::listener::listen(address).await?;
        lifecycle.spawn(metrics::run_upkeep(lifecycle.stopping()));
        let port = listener.local_addr()?.port();
        tracing::info!(
            port,
            startup_ms = started.elapsed().as_secs_f64() * 1000.0,
            database = db.as_ref().map(|db| match db {
                Db::Sqlite(_) => "sqlite",
                Db::Postgres(_) => "postgres",
            }),
            "ready"
        );
        Ok(Self {
            listener,
            router,
            lifecycle,
            db,
            server: settings.server,
        })
    }

    /// The port actually bound (useful with `PORT=0`).
    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .map(|address| address.port())
            .unwrap_or_default()
    }

    /// Its lifecycle: stop it from a test, or watch it drain.
    pub fn lifecycle(&self) -> Lifecycle {
        self.lifecycle.clone()
    }

    /// Serve until `signal` resolves, then shut down gracefully: readiness false at once,
    /// listener closed after `DRAIN_DELAY`, in-flight requests and tasks given
    /// `SHUTDOWN_TIMEOUT` to finish. An error means work was cut off.
    pub async fn run_until_stopped(self, signal: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let Self {
            listener,
            router,
            lifecycle,
            db,
            server,
        } = self;
        let threads = match server.worker_threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            threads => threads,
        };
        let mut serving = server::serve(
            listener,
            router,
            threads,
            server.header_read_timeout,
            lifecycle.stopping(),
        )
        .context("cannot start the HTTP server threads")?;
        let stopped_from_within = lifecycle.stopping();
        tokio::select! {
            () = signal => {}
            () = stopped_from_within.cancelled() => {}
        }
        lifecycle.begin_drain();
        tracing::info!(drain_delay_ms = server.drain_delay.as_millis() as u64, "draining");
        tokio::time::sleep(server.drain_delay).await;
        lifecycle.stop();
        let finished = async {
            let served = serving.stopped().await;
            lifecycle.tasks_finished().await;
            served
        };
        let outcome = match tokio::time::timeout(server.shutdown_timeout, finished).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(anyhow::Error::new(error).context("the HTTP server failed")),
            Err(_) => Err(anyhow::anyhow!(
                "in-flight work did not finish within SHUTDOWN_TIMEOUT ({:?})",
                server.shutdown_timeout
            )),
        };
        if let Some(db) = db {
            db.close().await;
        }
        serving.finish();
        if outcome.is_ok() {
            tracing::info!("stopped");
        }
        outcome
    }
}
