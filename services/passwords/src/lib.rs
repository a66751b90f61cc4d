//! The passwords service: argon2id credentials, login throttling and the JWT signing keys.
//!
//! - [`routes`]: the HTTP API — credentials (called by signup), `POST /sessions` (login), the
//!   JWKS — and how each answer maps to a status.
//! - [`domain`]: password and email rules, hashing, keys and tokens, throttling policy.
//! - [`store`]: the `credentials`, `login_throttle` and session tables, on SQLite or Postgres.
//! - [`events`]: what it does on each event it consumes.
//!
//! It never sees another service's database; it learns that an email is verified from the
//! `user.email_verified` event (see [`events::on_email_verified`]).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use dozen_bus::admin::BusTask;
use dozen_bus::{Bus, BusSettings};
use dozen_kit::auth::TokenSettings;
use dozen_kit::config::{DatabaseSettings, parse_duration};
use dozen_kit::db::Migrations;
use dozen_kit::{Context, Service};
use utoipa_axum::router::OpenApiRouter;

pub mod domain;
pub mod events;
pub mod routes;
pub mod store;

use domain::hashing::{Cost, Hasher};
use domain::keys::TokenPolicy;
use domain::sessions::SessionPolicy;
use domain::throttle::{self, ThrottlePolicy};
pub use dozen_kit::keys::generate_signing_key_pem;
use dozen_kit::keys::{SecretPem, SigningKeys, parse_secret_pem};

/// The passwords service's own schema, one set of migrations per backend.
pub static MIGRATIONS: Migrations = dozen_kit::migrations!();

/// Every set of migrations its database holds: its own, the bus's (the inbox of its
/// `user.email_verified` subscription) and the daily figures.
pub static SCHEMA: &[&Migrations] = &[
    &MIGRATIONS,
    &dozen_bus::MIGRATIONS,
    &dozen_kit::figures::MIGRATIONS,
];

/// The passwords service's settings.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    #[command(flatten)]
    pub database: DatabaseSettings,

    #[command(flatten)]
    pub bus: BusSettings,

    #[command(flatten)]
    pub tokens: TokenSettings,

    #[command(flatten)]
    pub signing: SigningSettings,

    #[command(flatten)]
    pub login: LoginSettings,

    #[command(flatten)]
    pub hashing: HashingSettings,
}

/// How access tokens are signed.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Access tokens")]
pub struct SigningSettings {
    /// Required to serve. One or more Ed25519 private keys, PEM (PKCS#8, as from `openssl
    /// genpkey -algorithm ed25519`), concatenated. The first signs new tokens; all are
    /// published in the JWKS, so to rotate put the new key first and drop the old one once
    /// the tokens it signed have expired (JWT_TTL).
    #[arg(long, env = "JWT_SIGNING_KEYS", hide_env_values = true, value_parser = parse_secret_pem)]
    pub jwt_signing_keys: Option<SecretPem>,

    /// How long an access token is valid. A token of a session that ended (logout, a password
    /// change) still works until it expires: keep it short.
    #[arg(long, env = "JWT_TTL", default_value = "15m", value_parser = parse_ttl)]
    pub jwt_ttl: Duration,

    /// How long a refresh session lasts from its login, however often it is refreshed; then
    /// the user logs in again.
    #[arg(long, env = "SESSION_TTL", default_value = "14d", value_parser = parse_ttl)]
    pub session_ttl: Duration,
}

/// Login throttling and client addresses.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Login throttling")]
pub struct LoginSettings {
    /// Failed logins allowed for one account (email) from one client address (IPv6: its /64)
    /// before its logins from there wait: the failure that uses the allowance up, and each
    /// one after, is answered 429 for LOGIN_FIRST_DELAY, doubled each time up to
    /// LOGIN_LOCKOUT. Other addresses, the owner's included, keep their own allowance.
    #[arg(long, env = "LOGIN_MAX_FAILURES_PER_ACCOUNT", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub login_max_failures_per_account: u32,

    /// Failed logins allowed from one client address (IPv6: its /64), whatever the accounts,
    /// within LOGIN_FAILURE_WINDOW before its logins are refused with 429 for LOGIN_LOCKOUT.
    #[arg(long, env = "LOGIN_MAX_FAILURES_PER_ADDRESS", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub login_max_failures_per_address: u32,

    /// How long failed logins are remembered: an address's count restarts after it; an
    /// account's from one address is forgotten once it has had no failure or delay for as long.
    #[arg(long, env = "LOGIN_FAILURE_WINDOW", default_value = "15m", value_parser = parse_ttl)]
    pub login_failure_window: Duration,

    /// How long an address stays refused once it reaches its limit; the longest delay of an
    /// account from one address.
    #[arg(long, env = "LOGIN_LOCKOUT", default_value = "15m", value_parser = parse_ttl)]
    pub login_lockout: Duration,

    /// The first delay of an account from one address once LOGIN_MAX_FAILURES_PER_ACCOUNT is
    /// used up; each further failure doubles it.
    #[arg(long, env = "LOGIN_FIRST_DELAY", default_value = "1s", value_parser = parse_ttl)]
    pub login_first_delay: Duration,

    /// Take the client address from the first entry of `X-Forwarded-For` instead of the
    /// connection. Only behind a proxy that sets it (the gateway): otherwise any client could
    /// pick its own address and dodge the per-address limit.
    #[arg(long, env = "TRUST_FORWARDED_FOR", default_value_t = false, action = clap::ArgAction::Set)]
    pub trust_forwarded_for: bool,
}

/// The cost of argon2id and how many hashes run at once.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Password hashing")]
pub struct HashingSettings {
    /// argon2id memory per hash, in KiB (at least OWASP's 19456). Stored hashes below it are
    /// upgraded at the next successful login.
    #[arg(long, env = "ARGON2_MEMORY_KIB", default_value_t = Cost::OWASP_MINIMUM.memory_kib,
          value_parser = clap::value_parser!(u32).range(8..=4 * 1024 * 1024))]
    pub argon2_memory_kib: u32,

    /// argon2id passes over the memory (at least 2).
    #[arg(long, env = "ARGON2_ITERATIONS", default_value_t = Cost::OWASP_MINIMUM.iterations,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub argon2_iterations: u32,

    /// Accept an argon2id cost below OWASP's minimum (down to 8 KiB and one pass), with a
    /// warning at start: for seeding benchmarks with many users, never for real passwords.
    #[arg(long, env = "ARGON2_ALLOW_WEAK_COST", default_value_t = false, action = clap::ArgAction::Set)]
    pub argon2_allow_weak_cost: bool,

    /// Hashes computed at once; each holds ARGON2_MEMORY_KIB of memory and a core. More
    /// logins wait their turn. [default: the number of CPUs]
    #[arg(long, env = "HASH_CONCURRENCY", value_parser = clap::value_parser!(u16).range(1..))]
    pub hash_concurrency: Option<u16>,
}

impl HashingSettings {
    /// The configured cost; below OWASP's minimum only when explicitly allowed.
    fn cost(&self) -> anyhow::Result<Cost> {
        let cost = Cost {
            memory_kib: self.argon2_memory_kib,
            iterations: self.argon2_iterations,
            parallelism: 1,
        };
        let minimum = Cost::OWASP_MINIMUM;
        if cost.memory_kib >= minimum.memory_kib && cost.iterations >= minimum.iterations {
            return Ok(cost);
        }
        anyhow::ensure!(
            self.argon2_allow_weak_cost,
            "ARGON2_MEMORY_KIB must be at least {} and ARGON2_ITERATIONS at least {} (OWASP's \
             minimum), unless ARGON2_ALLOW_WEAK_COST=true (benchmarks only)",
            minimum.memory_kib,
            minimum.iterations
        );
        tracing::warn!(
            memory_kib = cost.memory_kib,
            iterations = cost.iterations,
            "argon2id cost below OWASP's minimum (ARGON2_ALLOW_WEAK_COST): for benchmarks only"
        );
        Ok(cost)
    }
}

/// A positive duration.
fn parse_ttl(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        duration if duration < Duration::from_secs(1) => Err("must be at least 1s".to_owned()),
        duration => Ok(duration),
    }
}

/// The passwords service.
#[derive(Debug)]
pub struct Passwords;

impl Service for Passwords {
    const NAME: &'static str = "passwords";
    const DEFAULT_PORT: u16 = 8083;
    type Settings = Settings;

    fn database(settings: &Settings) -> Option<(&DatabaseSettings, &'static [&'static Migrations])> {
        Some((&settings.database, SCHEMA))
    }

    async fn start(context: &mut Context<Settings>) -> anyhow::Result<OpenApiRouter> {
        let settings = &context.settings;
        let pem =
            settings.signing.jwt_signing_keys.as_ref().context(
                "missing required setting JWT_SIGNING_KEYS (one or more Ed25519 private keys in PEM)",
            )?;
        let keys = SigningKeys::parse(pem.expose())
            .map_err(|reason| anyhow::anyhow!("invalid JWT_SIGNING_KEYS: {reason}"))?;
        let concurrency = match settings.hashing.hash_concurrency {
            Some(count) => usize::from(count),
            None => std::thread::available_parallelism().map_or(1, usize::from),
        };
        let cost = settings.hashing.cost()?;
        let throttle = ThrottlePolicy {
            max_per_account: settings.login.login_max_failures_per_account,
            max_per_address: settings.login.login_max_failures_per_address,
            window: settings.login.login_failure_window,
            lockout: settings.login.login_lockout,
            first_delay: settings.login.login_first_delay,
        };
        let db = context.database()?.clone();
        let archived = settings.bus.archive.archiving();
        let mut bus = Bus::connect(&settings.bus, Self::NAME, db.clone()).await?;
        let outbox = bus.outbox().clone();
        bus.handle(Self::NAME, events::handlers());
        bus.serve(&context.lifecycle, &mut context.readiness).await?;
        tracing::info!(
            signing_kid = keys.signing_kid(),
            keys = keys.jwks().keys.len(),
            hash_concurrency = concurrency,
            "signing keys loaded"
        );
        metrics::describe_counter!(
            "passwords_argon2_operations_total",
            "argon2id hashes and verifications computed, by operation"
        );
        metrics::describe_gauge!(
            "passwords_argon2_waiting",
            "argon2id hashes waiting for one of the HASH_CONCURRENCY permits"
        );
        metrics::describe_histogram!(
            "passwords_argon2_wait_seconds",
            metrics::Unit::Seconds,
            "Time an argon2id hash waited for a permit"
        );
        metrics::describe_histogram!(
            "passwords_argon2_duration_seconds",
            metrics::Unit::Seconds,
            "Time to compute one argon2id hash or verification, by operation"
        );
        metrics::describe_counter!(
            "passwords_password_changes_total",
            "Passwords replaced, by method (reset, change)"
        );
        metrics::describe_counter!(
            "passwords_logins_total",
            "Login attempts, by outcome (ok, wrong_credentials, unverified, throttled)"
        );
        let hasher = Hasher::new(cost, concurrency)?;
        context.lifecycle.spawn(
            hasher
                .clone()
                .release_memory_when_idle(HASH_MEMORY_IDLE, context.lifecycle.stopping()),
        );
        let state = routes::AppState {
            db: db.clone(),
            outbox,
            hasher,
            keys: Arc::new(keys),
            tokens: Arc::new(TokenPolicy {
                issuer: settings.tokens.jwt_issuer.clone(),
                audience: settings.tokens.jwt_audience.clone(),
                ttl: settings.signing.jwt_ttl,
            }),
            sessions: SessionPolicy {
                ttl: settings.signing.session_ttl,
            },
            throttle,
            trust_forwarded_for: settings.login.trust_forwarded_for,
        };
        let figures = dozen_kit::figures::router(db.clone(), context.identity()?);
        context.lifecycle.spawn(purge_throttle(
            db,
            throttle,
            archived,
            context.lifecycle.stopping(),
        ));
        Ok(routes::router(state, context.identity()?).merge(figures))
    }

    type Task = BusTask;

    async fn run_task(task: BusTask, context: Context<Settings>) -> anyhow::Result<()> {
        task.run(
            context.database()?,
            Self::NAME,
            &context.settings.bus,
            store::ARCHIVE_TABLES,
        )
        .await
    }
}

/// How long without a hash before argon2's working memory (`m` KiB per permit) is freed: long
/// enough that steady logins keep it, short enough that a burst's memory does not stay.
const HASH_MEMORY_IDLE: Duration = Duration::from_secs(30);

/// Now and then, forget failed logins that no longer count and sessions past their lifetime
/// (unless `archived`: then the `archive` admin process moves them out), so the tables stay
/// small.
async fn purge_throttle(
    db: dozen_kit::db::Db,
    policy: ThrottlePolicy,
    archived: bool,
    stop: tokio_util::sync::CancellationToken,
) {
    let every = Duration::from_secs(60);
    // The first purge comes an interval after start, not amid start-up's queries.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let quiet_since = throttle::now_millis() - throttle::millis(policy.window);
        if let Err(error) = store::purge_throttle(&db, quiet_since).await {
            tracing::warn!(error = %error, "cannot purge the login throttle table");
        }
        if archived {
            continue;
        }
        if let Err(error) = store::purge_sessions(&db, throttle::now_millis()).await {
            tracing::warn!(error = %error, "cannot purge the ended sessions");
        }
    }
}
