//! The gateway, the only public entry: it serves the web UI, routes the public API to the
//! services that own each route, aggregates `/api/me`, and reports every service's state at
//! `/ops/status`, and charts their traffic at `/ops/figures`. It is stateless and holds no
//! database.
//!
//! Layout: [`routes`] (the public routes), [`openapi`] (their description), [`proxy`] (passing a request on), [`me`] (the
//! aggregate), [`ops`] (the status page's data), [`figures`] (its charts' data), [`ui`] (the web UI's files); at the edge, [`client_address`] (who is
//! calling), [`limits`] (rate limits per client) and [`headers`] (security headers and CORS).

pub mod client_address;
pub mod figures;
pub mod headers;
pub mod limits;
pub mod me;
pub mod openapi;
pub mod ops;
pub mod proxy;
pub mod routes;
pub mod ui;

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use dozen_kit::config::{DatabaseSettings, parse_duration, parse_peer_urls};
use dozen_kit::db::Migrations;
use dozen_kit::http::client::Upstream;
use dozen_kit::service::NoTasks;
use dozen_kit::{Context, Service};
use utoipa_axum::router::OpenApiRouter;

use crate::client_address::TrustedProxies;
use crate::headers::AllowedOrigins;
use crate::limits::{RateLimit, RateLimits};

/// The gateway service's settings.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Base URL of the signup service, or several comma-separated (its instances).
    #[arg(long, env = "SIGNUP_URL", default_value = "http://127.0.0.1:8081", value_parser = parse_peer_urls)]
    pub signup_url: String,
    /// Base URL of the users service, or several comma-separated (its instances).
    #[arg(long, env = "USERS_URL", default_value = "http://127.0.0.1:8082", value_parser = parse_peer_urls)]
    pub users_url: String,
    /// Base URL of the passwords service, or several comma-separated (its instances).
    #[arg(long, env = "PASSWORDS_URL", default_value = "http://127.0.0.1:8083", value_parser = parse_peer_urls)]
    pub passwords_url: String,
    /// Base URL of the verification service, or several comma-separated (its instances).
    #[arg(long, env = "VERIFICATION_URL", default_value = "http://127.0.0.1:8084", value_parser = parse_peer_urls)]
    pub verification_url: String,
    /// Base URL of the friends service, or several comma-separated (its instances).
    #[arg(long, env = "FRIENDS_URL", default_value = "http://127.0.0.1:8085", value_parser = parse_peer_urls)]
    pub friends_url: String,
    /// How long `/api/me` waits for the services it aggregates before answering without them.
    #[arg(long, env = "ME_DEADLINE", default_value = "800ms", value_parser = parse_duration)]
    pub me_deadline: Duration,
    /// Serve the dev mailbox (`/api/dev/mailbox`, passed on to verification). Off: every
    /// `/api/dev/` path is a 404, so a deployment never shows anyone's mail. `dozen up` turns
    /// it on with the file mailbox.
    #[arg(long, env = "DEV_MAILBOX", default_value_t = false, action = clap::ArgAction::Set)]
    pub dev_mailbox: bool,
    /// How often to read every service's metrics for the status page's charts (1s to 60s), or
    /// off.
    #[arg(long, env = "FIGURES_INTERVAL", default_value = "5s", value_parser = parse_figures_interval)]
    pub figures_interval: FiguresInterval,
    #[command(flatten)]
    pub edge: EdgeSettings,
}

/// `FIGURES_INTERVAL`: how often the figures are sampled, if at all.
#[derive(Debug, Clone, Copy)]
pub struct FiguresInterval(pub Option<Duration>);

fn parse_figures_interval(text: &str) -> Result<FiguresInterval, String> {
    if text == "off" {
        return Ok(FiguresInterval(None));
    }
    let interval = parse_duration(text)?;
    if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&interval) {
        return Err("must be from 1s to 60s, or off".to_owned());
    }
    Ok(FiguresInterval(Some(interval)))
}

/// What the gateway does at the public edge: whom it believes, how much it lets one client do,
/// which web origins may call it.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Public edge")]
pub struct EdgeSettings {
    /// Proxies in front of the gateway whose X-Forwarded-For is believed: comma-separated
    /// networks or addresses (10.0.0.0/8,192.0.2.7). Empty: the connection's peer is the client.
    #[arg(long, env = "TRUSTED_PROXIES", default_value = "", value_parser = TrustedProxies::parse)]
    pub trusted_proxies: TrustedProxies,
    /// Signups per client address: N/period (N at once, refilled over the period) or off.
    #[arg(long, env = "RATE_LIMIT_SIGNUPS", default_value = "20/h", value_parser = RateLimit::parse)]
    pub rate_limit_signups: RateLimit,
    /// Logins, refreshes, password changes and account deletions (POST /api/sessions,
    /// /api/sessions/refresh, PUT /api/me/password, DELETE /api/me) per client address:
    /// N/period or off.
    #[arg(long, env = "RATE_LIMIT_SESSIONS", default_value = "30/min", value_parser = RateLimit::parse)]
    pub rate_limit_sessions: RateLimit,
    /// Verifications, resent verification mails and password resets (requests and new
    /// passwords) per client address: N/period or off.
    #[arg(long, env = "RATE_LIMIT_VERIFICATIONS", default_value = "30/h", value_parser = RateLimit::parse)]
    pub rate_limit_verifications: RateLimit,
    /// Authenticated reads (GET /api/me, /api/friends, /api/friends/requests,
    /// /api/suggestions, /api/sessions) per Authorization header: N/period or off.
    #[arg(long, env = "RATE_LIMIT_READS", default_value = "600/min", value_parser = RateLimit::parse)]
    pub rate_limit_reads: RateLimit,
    /// Web origins allowed to call the API from a browser (https://app.example.com,…); empty:
    /// CORS off.
    #[arg(long, env = "CORS_ALLOWED_ORIGINS", default_value = "", value_parser = AllowedOrigins::parse)]
    pub cors_allowed_origins: AllowedOrigins,
}

/// The services behind the gateway.
#[derive(Debug, Clone)]
pub struct Peers {
    /// Signup.
    pub signup: Upstream,
    /// Users.
    pub users: Upstream,
    /// Passwords.
    pub passwords: Upstream,
    /// Verification.
    pub verification: Upstream,
    /// Friends.
    pub friends: Upstream,
    /// The deadline of `/api/me`.
    pub me_deadline: Duration,
}

/// The gateway service.
#[derive(Debug)]
pub struct Gateway;

impl Service for Gateway {
    const NAME: &'static str = "gateway";
    const DEFAULT_PORT: u16 = 8080;
    /// Proxying is the gateway's whole job, done on the async runtime: every core.
    const DEFAULT_WORKER_THREADS: usize = 0;
    type Settings = Settings;

    fn database(_: &Settings) -> Option<(&DatabaseSettings, &'static [&'static Migrations])> {
        None
    }

    async fn start(context: &mut Context<Settings>) -> anyhow::Result<OpenApiRouter> {
        let settings = &context.settings;
        let peers = Peers {
            signup: context.http.upstream("signup", &settings.signup_url),
            users: context.http.upstream("users", &settings.users_url),
            passwords: context.http.upstream("passwords", &settings.passwords_url),
            verification: context.http.upstream("verification", &settings.verification_url),
            friends: context.http.upstream("friends", &settings.friends_url),
            me_deadline: settings.me_deadline,
        };
        let edge = &settings.edge;
        let limits = RateLimits::new(
            edge.rate_limit_signups,
            edge.rate_limit_sessions,
            edge.rate_limit_verifications,
            edge.rate_limit_reads,
        );
        context
            .lifecycle
            .spawn(limits.clone().forget_idle_until(context.lifecycle.stopping()));
        let upstreams = vec![
            peers.signup.clone(),
            peers.users.clone(),
            peers.passwords.clone(),
            peers.verification.clone(),
            peers.friends.clone(),
        ];
        let figures = Arc::new(figures::FiguresPage::new(settings.figures_interval.0, upstreams));
        context
            .lifecycle
            .spawn(figures.clone().sample(context.lifecycle.stopping()));
        Ok(routes::router(peers, figures, &limits, settings.dev_mailbox))
    }

    type Task = NoTasks;

    async fn run_task(task: NoTasks, _: Context<Settings>) -> anyhow::Result<()> {
        match task {}
    }

    fn edge_layers(router: axum::Router, settings: &Settings) -> axum::Router {
        let edge = &settings.edge;
        let trusted = edge.trusted_proxies.clone();
        // One layer for the whole edge: axum boxes and clones each layer of a router separately,
        // for every request.
        router.layer(
            tower::ServiceBuilder::new()
                .map_response(headers::with_security_headers)
                .option_layer(headers::cors(&edge.cors_allowed_origins))
                .map_request(move |request| client_address::resolve(&trusted, request)),
        )
    }
}
