//! Configuration from the environment, and only from it (factor III).
//!
//! Every setting is a clap argument with an `env` name, so `--help` lists every variable with
//! its default. Two things are added on top of clap here, once for every service:
//! - a bad or missing value becomes one line naming the variable (never a panic, never a
//!   multi-line clap report), and
//! - every variable `X` can instead be given as a file path in `X_FILE` (for secrets mounted by
//!   Kubernetes, ECS or compose). `X` itself wins when both are set.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Args, Command, ValueEnum};

/// What went wrong while reading the configuration; its `Display` is the single line printed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

/// The outcome of reading the command line and environment.
#[derive(Debug)]
pub enum Parsed<T> {
    /// Settings are valid: run.
    Run(T),
    /// `--help` or `--version` was asked for; the text is to be printed and the process exits 0.
    Info(String),
}

/// Parse `args` (the first being the program name) into `T`, reading every setting from its
/// environment variable or `<VAR>_FILE`. `customize` may adjust the command first, e.g. to set
/// per-service defaults.
pub fn parse<T: clap::Parser>(
    args: impl IntoIterator<Item = OsString>,
    customize: impl FnOnce(Command) -> Command,
) -> Result<Parsed<T>, ConfigError> {
    let command = with_file_secrets(customize(T::command()))?;
    let matches = match command.clone().try_get_matches_from(args) {
        Ok(matches) => matches,
        Err(error) => match error.kind() {
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                return Ok(Parsed::Info(error.render().to_string()));
            }
            _ => return Err(ConfigError(one_line(&command, &error))),
        },
    };
    T::from_arg_matches(&matches)
        .map(Parsed::Run)
        .map_err(|error| ConfigError(one_line(&command, &error)))
}

/// For each argument read from `X` whose `X_FILE` is set (and `X` is not), make the file's
/// contents the argument's default: the same precedence as if `X` had been set.
fn with_file_secrets(mut command: Command) -> Result<Command, ConfigError> {
    let from_files: Vec<(clap::Id, String)> = command
        .get_arguments()
        .filter_map(|arg| {
            Some((
                arg.get_id().clone(),
                arg.get_env()?.to_string_lossy().into_owned(),
            ))
        })
        .filter(|(_, var)| std::env::var_os(var).is_none())
        .filter_map(|(id, var)| {
            let file_var = format!("{var}_FILE");
            std::env::var_os(&file_var).map(|path| (id, file_var, PathBuf::from(path)))
        })
        .map(|(id, file_var, path)| {
            std::fs::read_to_string(&path)
                .map(|text| (id, text.trim_end_matches(['\r', '\n']).to_owned()))
                .map_err(|e| ConfigError(format!("{file_var}: cannot read {}: {e}", path.display())))
        })
        .collect::<Result<_, _>>()?;
    // A file holds a secret more often than not: `--help` must not show it as the default.
    for (id, value) in from_files {
        command = command.mut_arg(id, |arg| arg.default_value(value).hide_default_value(true));
    }
    Ok(command)
}

/// Render a clap error as one line that names environment variables instead of flags, and
/// never repeats a secret's value.
fn one_line(command: &Command, error: &clap::Error) -> String {
    let rendered_args: Vec<String> = match error.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) => vec![arg.clone()],
        Some(ContextValue::Strings(args)) => args.clone(),
        _ => Vec::new(),
    };
    // clap renders an argument as `--name <VALUE>`: find it by its long name.
    let find = |rendered: &str| {
        let long = rendered
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .trim_start_matches("--");
        command.get_arguments().find(|arg| arg.get_long() == Some(long))
    };
    let env_name = |rendered: &str| {
        find(rendered)
            .and_then(|arg| arg.get_env())
            .map(|env| env.to_string_lossy().into_owned())
            .unwrap_or_else(|| rendered.to_owned())
    };
    if error.kind() == ErrorKind::MissingRequiredArgument {
        let names: Vec<String> = rendered_args.iter().map(|a| env_name(a)).collect();
        return format!("missing required setting {}", names.join(", "));
    }
    // Replace values and flags in the whole report first: a value may span several lines (a
    // PEM key), and only then is the first line taken.
    let mut text = error.render().to_string();
    if let Some(ContextValue::String(value)) = error.get(ContextKind::InvalidValue) {
        let secret = rendered_args
            .iter()
            .any(|rendered| find(rendered).is_some_and(|arg| arg.is_hide_env_values_set()));
        let shown = if secret {
            "(value hidden)".to_owned()
        } else if value.contains('\n') {
            format!("'{}…'", value.lines().next().unwrap_or_default())
        } else {
            format!("'{value}'")
        };
        text = text.replace(&format!("'{value}'"), &shown);
    }
    for rendered in &rendered_args {
        text = text.replace(&format!("'{rendered}'"), &env_name(rendered));
    }
    let mut line = text
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_owned();
    if let Some(ContextValue::Strings(valid)) = error.get(ContextKind::ValidValue) {
        line.push_str(&format!(" (expected one of: {})", valid.join(", ")));
    }
    line
}

/// Parse a duration such as `500ms`, `30s` or `2m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (expected e.g. 500ms, 30s, 2m)"))
}

/// A duration above zero, for a timeout that zero would make fire at once.
fn parse_nonzero_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        duration if duration.is_zero() => Err("must be more than zero".to_owned()),
        duration => Ok(duration),
    }
}

/// Settings every HTTP service shares.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "HTTP server")]
pub struct ServerSettings {
    /// TCP port to serve HTTP on; 0 picks a free port, reported in the "ready" log line.
    /// Unused when a listening socket is handed over (`LISTEN_FDS=1`, as `dozen up` does).
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,

    /// Address to bind.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,

    /// Longest time a request may take; past it the answer is 503.
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Longest time a client may take to send a request's head (its line and headers), and a
    /// kept-alive connection may stay idle between requests; past it the connection is closed,
    /// so slow or idle clients cannot hold connections for ever. Keep it above 30 s, how long
    /// services keep an idle connection to a peer: one closed just as a caller reuses it would
    /// fail that call.
    #[arg(long, env = "HEADER_READ_TIMEOUT", default_value = "60s", value_parser = parse_nonzero_duration)]
    pub header_read_timeout: Duration,

    /// Largest request body accepted, in bytes; a larger one gets 413.
    #[arg(long, env = "BODY_LIMIT", default_value_t = 64 * 1024)]
    pub body_limit: usize,

    /// After SIGTERM, how long to keep serving with /readyz at 503 before closing the listener,
    /// so that load balancers stop sending traffic first (Kubernetes' preStop pause does the
    /// same job there).
    #[arg(long, env = "DRAIN_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub drain_delay: Duration,

    /// After the listener closes, how long in-flight requests and background work may take to
    /// finish before they are cut off (and the process exits 1).
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Threads that serve HTTP requests, each with a single-threaded runtime of its own that
    /// keeps the connections it accepted; 0 means one per core. The first also runs start-up
    /// and the background work (event handlers, the outbox relay); SQLite and password hashing
    /// run on threads of their own either way. A service whose requests mostly wait for its
    /// database needs one; it scales out by running more processes.
    #[arg(long, env = "WORKER_THREADS", default_value_t = 1)]
    pub worker_threads: usize,

    /// Timeout for each call this service makes to another service.
    #[arg(long, env = "UPSTREAM_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub upstream_timeout: Duration,
}

/// How calls to other services are retried, and cut off while a service is failing: the
/// policy of every [`crate::http::client::Upstream`].
#[derive(Debug, Clone, PartialEq, Eq, Args)]
#[command(next_help_heading = "Calls to other services")]
pub struct UpstreamSettings {
    /// Most attempts of one call, the first included (1: no retries). Only calls that are safe
    /// to repeat are retried (GET, HEAD, PUT, DELETE, OPTIONS, and POST with an
    /// Idempotency-Key), and only after a connection error, a timeout, or 502/503/504.
    #[arg(long, env = "UPSTREAM_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub upstream_max_attempts: u32,

    /// Delay before the first retry; it doubles for each further one, plus a random jitter of
    /// up to as much again.
    #[arg(long, env = "UPSTREAM_RETRY_BACKOFF", default_value = "50ms", value_parser = parse_duration)]
    pub upstream_retry_backoff: Duration,

    /// Retries to one service may add at most this percentage to the calls made to it (over
    /// the last 10 s), so that retries never multiply the load on a service in trouble.
    #[arg(long, env = "UPSTREAM_RETRY_BUDGET_PERCENT", default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub upstream_retry_budget_percent: u32,

    /// Retries per second to one service allowed on top of the percentage, so that a service
    /// called rarely still gets its retries.
    #[arg(long, env = "UPSTREAM_RETRY_BUDGET_MIN_PER_SECOND", default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub upstream_retry_budget_min_per_second: u32,

    /// Failures in a row (connection errors, timeouts, 5xx) after which a service's circuit
    /// breaker opens: calls to it then fail at once, without touching the network.
    #[arg(long, env = "BREAKER_FAILURE_THRESHOLD", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub breaker_failure_threshold: u32,

    /// How long an open breaker refuses calls before it lets one probe call through; the
    /// probe's success closes it, its failure opens it again.
    #[arg(long, env = "BREAKER_OPEN_FOR", default_value = "5s", value_parser = parse_duration)]
    pub breaker_open_for: Duration,
}

impl Default for UpstreamSettings {
    /// The same values as the settings' defaults above.
    fn default() -> Self {
        Self {
            upstream_max_attempts: 3,
            upstream_retry_backoff: Duration::from_millis(50),
            upstream_retry_budget_percent: 20,
            upstream_retry_budget_min_per_second: 5,
            breaker_failure_threshold: 5,
            breaker_open_for: Duration::from_secs(5),
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Coloured, multi-line, for a human at a terminal.
    Pretty,
}

/// Logs and traces.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Logs and traces")]
pub struct TelemetrySettings {
    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,

    /// Log filter, e.g. `info` or `warn,dozen_kit=debug`; RUST_LOG is read when this is unset.
    #[arg(long, env = "LOG_LEVEL", value_parser = parse_log_filter)]
    pub log_level: Option<String>,

    /// OTLP/HTTP endpoint traces are exported to, e.g. http://collector:4318; nothing is
    /// exported when unset.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_parser = parse_http_url)]
    pub otlp_endpoint: Option<String>,
}

fn parse_log_filter(text: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(text)
        .map(|_| text.to_owned())
        .map_err(|e| e.to_string())
}

/// Accept an absolute `http://` or `https://` URL (a peer's base address, an exporter's
/// endpoint), without a trailing slash.
pub fn parse_http_url(text: &str) -> Result<String, String> {
    let uri = http::Uri::from_str(text).map_err(|e| format!("not a URL: {e}"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) => Ok(text.trim_end_matches('/').to_owned()),
        _ => Err("expected an http:// or https:// URL with a host".to_owned()),
    }
}

/// Accept a peer's base URL, or several separated by commas (one per instance, which calls are
/// balanced across), each absolute `http://` or `https://`, kept without trailing slashes.
pub fn parse_peer_urls(text: &str) -> Result<String, String> {
    let urls: Vec<String> = text
        .split(',')
        .map(|url| parse_http_url(url.trim()).map_err(|e| format!("{url:?}: {e}")))
        .collect::<Result<_, _>>()?;
    Ok(urls.join(","))
}

/// The service's own database.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Database")]
pub struct DatabaseSettings {
    /// `sqlite://<path>` (embedded) or `postgres://user:password@host/db`.
    /// [default: sqlite://data/<service>.db]
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_parser = crate::db::DatabaseUrl::parse)]
    pub database_url: Option<crate::db::DatabaseUrl>,

    /// Largest number of open connections to the database.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub database_max_connections: u32,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Upstream {
        #[command(flatten)]
        settings: UpstreamSettings,
    }

    #[test]
    fn the_upstream_defaults_are_the_documented_ones() {
        let parsed = Upstream::try_parse_from(["test"]).expect("the defaults parse");
        assert_eq!(parsed.settings, UpstreamSettings::default());
    }

    #[test]
    fn a_peer_may_be_several_urls_and_a_bad_one_is_named() {
        assert_eq!(
            super::parse_peer_urls("http://a:8082/, https://b:8082").as_deref(),
            Ok("http://a:8082,https://b:8082")
        );
        let error = super::parse_peer_urls("http://a:8082,ftp://b").expect_err("ftp is refused");
        assert!(error.contains("ftp://b"), "{error}");
    }
}
